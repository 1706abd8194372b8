package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os/exec"
	"time"
)

// DefaultExecContentType is the Content-Type of an [Exec]'s responses when
// [ExecConfig.ContentType] is empty.
const DefaultExecContentType = "application/octet-stream"

// ExecConfig describes the command an [Exec] runs for each job.
type ExecConfig struct {
	// Command is the program and its arguments. A program name without
	// a slash is looked up in PATH once, by NewExec; no shell is run.
	Command []string
	// ContentType is the Content-Type of the responses. Empty means
	// DefaultExecContentType.
	ContentType string
	// Timeout, if positive, bounds how long a job's command may run: then
	// its process group is killed.
	Timeout time.Duration
	// InheritEnv names variables of the worker's environment that the
	// command gets, besides PATH. Nothing else of the worker's environment
	// (its token, say) reaches the command.
	InheritEnv []string
	// MaxEnvBytes bounds the command's environment; a job whose request
	// would exceed it gets 431. Zero means DefaultMaxEnvBytes.
	MaxEnvBytes int
	// MaxHeaders bounds the header fields of a job's request; more get
	// 431. Zero means DefaultMaxHeaders.
	MaxHeaders int
	// Logger receives the log of the jobs. Nil means slog.Default().
	Logger *slog.Logger
}

// Exec is a Handler that runs a command for each job: the request body is
// its stdin, its stdout is the response body (status 200, flushed as it
// comes), and the request's method, target and headers are CGI-style
// variables in its environment: REQUEST_METHOD, REQUEST_URI, PATH_INFO,
// QUERY_STRING, SERVER_PROTOCOL, HTTP_HOST, CONTENT_TYPE, CONTENT_LENGTH
// and HTTP_* for the other header fields, leaving out those whose names
// could pass for others' (see the README for the rules), besides PATH and
// the InheritEnv variables. Create it with NewExec.
//
// The command runs as the leader of a process group of its own. The whole
// group is killed (SIGKILL) when the hub closes the connection (its
// consumer went away), when the Timeout passes, when the request body
// breaks off, and when the command itself exits, so that nothing a job
// started outlives it. (A process that leaves the group, with setsid for
// instance, is not tracked.)
//
// It accepts a job (see [Accept]) once the command has started. A command
// that cannot be started is declined, so that the hub gives the job to
// another worker, and marks the Exec's [Exec.Health] down: a Worker then
// holds no connections to the hub until the program can be found and
// executed again.
//
// A command that exits with a non-zero status (or is killed) before it
// wrote anything gets 502, or 504 for the Timeout, and its stderr's last
// 4 KiB are logged. One that fails after it wrote output cannot change
// the status any more: the response is cut off, so that the hub's
// consumer sees a truncated body and never a clean end. Only that tail of
// stderr is kept in memory, and bodies are streamed both ways, never
// buffered.
type Exec struct {
	path        string   // the program, looked up
	args        []string // Command, with Command[0] as given
	contentType string
	timeout     time.Duration
	env         *jobEnv
	log         *slog.Logger
	health      *Health
}

// NewExec checks cfg, looks up the program and returns an Exec.
func NewExec(cfg ExecConfig) (*Exec, error) {
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, errors.New("worker: no command to run")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("worker: negative command timeout %v", cfg.Timeout)
	}
	path, err := exec.LookPath(cfg.Command[0])
	if err != nil {
		return nil, fmt.Errorf("worker: command: %w", err)
	}
	env, err := newJobEnv(cfg.InheritEnv, cfg.MaxEnvBytes, cfg.MaxHeaders)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	e := &Exec{
		path:        path,
		args:        append([]string(nil), cfg.Command...),
		contentType: cfg.ContentType,
		timeout:     cfg.Timeout,
		env:         env,
		log:         cfg.Logger,
	}
	if e.contentType == "" {
		e.contentType = DefaultExecContentType
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.health = NewHealth(func(context.Context) error { return executable(e.path) })
	return e, nil
}

// Health is the state of the command: down while it cannot be started.
func (e *Exec) Health() *Health { return e.health }

func (*Exec) acceptsItself() {}

// executable checks that path names a file the worker may execute.
func executable(path string) error {
	_, err := exec.LookPath(path)
	return err
}

func (e *Exec) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	env, err := e.env.build(r)
	if err != nil {
		e.log.Warn("job refused", "method", r.Method, "uri", r.RequestURI, "err", err)
		http.Error(w, err.Error(), http.StatusRequestHeaderFieldsTooLarge)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	if e.timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, e.timeout, errCommandTimeout)
		defer stop()
	}
	j := &execJob{e: e, w: w, r: r, ctx: ctx, cancel: cancel, start: time.Now()}
	if err := j.startCommand(env); err != nil {
		e.health.Fail(err)
		if accepted(r) { // by the Worker: e is wrapped in another Handler
			e.log.Warn("command cannot be started", "command", e.path, "method", r.Method, "uri", r.RequestURI, "err", err)
			jobFailed(w)
			http.Error(w, "command cannot be started", http.StatusBadGateway)
			return
		}
		e.log.Warn("command cannot be started: declining the job", "command", e.path, "method", r.Method, "uri", r.RequestURI, "err", err)
		Decline(w)
		return
	}
	Accept(r)
	j.run()
}

// Why a job's context ended, besides the hub closing the connection.
var (
	errCommandTimeout = errors.New("command timed out")
	errBodyBroken     = errors.New("request body broke off")
	errResponseWrite  = errors.New("writing the response failed")
)
