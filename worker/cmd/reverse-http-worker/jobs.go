package main

import (
	"flag"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// jobFlags choose what runs a job besides --upstream: a command per job
// (--exec) or a CGI script per job (--cgi).
type jobFlags struct {
	exec        string
	contentType string
	timeout     time.Duration
	env         string
	cgi         string
	command     []string // exec, split
}

func (j *jobFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&j.exec, "exec", "", "run `'COMMAND ARGS'` for each job instead of forwarding it: the body on stdin, stdout as the response (quoted as in a shell; no shell is run)")
	fs.StringVar(&j.contentType, "exec-content-type", worker.DefaultExecContentType, "Content-Type `TYPE` of --exec responses")
	fs.DurationVar(&j.timeout, "exec-timeout", 0, "kill a job's --exec command or --cgi script after `D` (default no limit)")
	fs.StringVar(&j.env, "exec-env", "", "comma-separated `NAMES` of environment variables passed on to --exec and --cgi, besides PATH")
	fs.StringVar(&j.cgi, "cgi", "", "run the CGI `SCRIPT` for each job instead of forwarding it")
}

// check validates the flags against --upstream; it returns what is wrong,
// or "".
func (j *jobFlags) check(upstream string) string {
	n := 0
	for _, s := range []string{upstream, j.exec, j.cgi} {
		if s != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return "--upstream, --exec or --cgi is required"
	case n > 1:
		return "--upstream, --exec and --cgi exclude each other"
	case j.timeout < 0:
		return "--exec-timeout must not be negative"
	}
	if j.exec != "" {
		words, err := splitCommand(j.exec)
		if err != nil {
			return "--exec: " + err.Error()
		}
		j.command = words
	}
	return ""
}

func (j *jobFlags) inherit() []string {
	var names []string
	for n := range strings.SplitSeq(j.env, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

// jobRunner is what runs the jobs, and how its health is logged.
type jobRunner struct {
	handler    http.Handler
	health     *worker.Health
	down, back string // log messages
	attrs      []any  // what it is, for the log
}

// runner builds the Handler for the jobs.
func (o *options) runner(logger *slog.Logger) (*jobRunner, error) {
	j := &o.jobs
	switch {
	case j.exec != "":
		e, err := worker.NewExec(worker.ExecConfig{
			Command: j.command, ContentType: j.contentType, Timeout: j.timeout,
			InheritEnv: j.inherit(), Logger: logger,
		})
		if err != nil {
			return nil, err
		}
		return &jobRunner{e, e.Health(), "command cannot be started: not taking jobs", "command back",
			[]any{"exec", j.command}}, nil
	case j.cgi != "":
		c, err := worker.NewCGI(worker.CGIConfig{
			Script: j.cgi, Timeout: j.timeout, InheritEnv: j.inherit(), Logger: logger,
		})
		if err != nil {
			return nil, err
		}
		return &jobRunner{c, c.Health(), "cgi script cannot be run: not taking jobs", "cgi script back",
			[]any{"cgi", j.cgi}}, nil
	}
	u, _ := url.Parse(o.upstream) // checked by parseFlags
	f := worker.NewForwarder(u, logger)
	return &jobRunner{f, f.Health(), "upstream unreachable: not taking jobs", "upstream back",
		[]any{"upstream", o.upstream}}, nil
}
