// Command reverse-http-worker dials in to a reverse HTTP hub and forwards
// the jobs the hub sends it to an upstream HTTP server.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

const progName = "reverse-http-worker"

func main() {
	tune = tuneRuntime
	os.Exit(run(context.Background(), os.Args[1:], os.Stderr))
}

// tune adjusts the runtime for the worker's slots once the flags are
// parsed: tuneRuntime in the binary, nil in the tests.
var tune func(slots int) tuning

// options are the parsed command line.
type options struct {
	hubs                                  []string
	pool, upstream, token, name, protocol string
	slots                                 int
	useTLS                                bool
	ca, cert, key, serverName             string
	drainTimeout, resolveInterval         time.Duration
	logLevel                              slog.Level
	cpuProfile                            string
	jobs                                  jobFlags
	gates                                 gateOptions
	redirect                              redirectOptions
	metrics                               string // --metrics ADDR
	version                               bool
	given                                 map[string]bool // the flags set on the command line
}

// errUsage marks errors for which usage has already been reported.
var errUsage = errors.New("usage")

// helpError is what parseFlags returns for --help: the usage, for
// standard output. It wraps flag.ErrHelp.
type helpError struct{ usage string }

func (e *helpError) Error() string { return flag.ErrHelp.Error() }
func (e *helpError) Unwrap() error { return flag.ErrHelp }

// parseFlags parses args. For --help it returns a *helpError; the usage
// after a flag error goes to stderr.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet(progName, flag.ContinueOnError)
	var usage strings.Builder
	fs.SetOutput(&usage)
	fs.Func("hub", "`HOST:PORT` of a hub's worker listener (required; may repeat, and a name that resolves to several addresses counts each)", func(s string) error {
		o.hubs = append(o.hubs, s)
		return nil
	})
	fs.DurationVar(&o.resolveInterval, "resolve-interval", worker.DefaultResolveInterval, "how often hub host names are resolved again")
	fs.StringVar(&o.pool, "pool", "", "`NAME` of the pool to join (required with --protocol ptth)")
	fs.StringVar(&o.upstream, "upstream", "", "`URL` of the HTTP server that runs the jobs, e.g. http://127.0.0.1:8080, or unix:/PATH for one on a unix socket (or --exec, or --cgi)")
	o.jobs.register(fs)
	fs.IntVar(&o.slots, "slots", 1, "`N` jobs run at once, across all hubs (it holds N connections to each hub address)")
	o.gates.addFlags(fs)
	o.redirect.addFlags(fs)
	fs.StringVar(&o.token, "token", "", "bearer `TOKEN` for the handshake (default $REVERSE_HTTP_TOKEN)")
	fs.StringVar(&o.name, "name", "", "worker `NAME` sent to the hub (default the host name)")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", worker.DefaultDrainTimeout, "how long running jobs may take to finish on SIGTERM/SIGINT")
	fs.StringVar(&o.protocol, "protocol", worker.ProtocolPTTH, "`PROTOCOL`: ptth (upgrade handshake naming the pool) or pothead (bare: dial and wait for requests)")
	fs.BoolVar(&o.useTLS, "tls", false, "connect to the hub with TLS")
	fs.StringVar(&o.ca, "ca", "", "PEM `FILE` of CA certificates to trust for the hub (default the system roots; needs --tls)")
	fs.StringVar(&o.cert, "cert", "", "PEM `FILE` with a client certificate for mutual TLS (needs --key and --tls)")
	fs.StringVar(&o.key, "key", "", "PEM `FILE` with the client certificate's private key (needs --cert and --tls)")
	fs.StringVar(&o.serverName, "server-name", "", "`NAME` to send as SNI and verify the hub's certificate against (default the host of --hub; needs --tls)")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "`LEVEL` of logging: debug, info, warn or error")
	fs.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics on http://`ADDR`/metrics and the jobs running now on /jobs (JSON); bind it to localhost or a private address")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `FILE` (for go tool pprof), until the worker exits")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: %s --hub HOST:PORT --pool NAME --upstream URL [flags]
       %s --hub HOST:PORT --pool NAME --exec 'COMMAND ARGS' [flags]
       %s --hub HOST:PORT --pool NAME --cgi SCRIPT [flags]

%s dials in to one or more reverse HTTP hubs, holds --slots
connections to each, and forwards the jobs (HTTP requests) the hubs send
on them to --upstream, or runs --exec's command or --cgi's script for each
in a process of its own: --slots at a time across all hubs, and only while
the gates (--max-cpu, --min-free-memory, --gate-url) allow one more.
On SIGTERM or SIGINT it stops taking jobs, lets running ones finish for up
to --drain-timeout, and exits 0. It exits 1, with the reason and a hint,
when its first connection shows a mistake that retrying cannot heal (a
handshake rejected for a bad token or an unknown pool; a TLS setting that
does not fit the hub's), and 2 on bad flags. While --upstream cannot be
reached it declines jobs and holds no connections to the hub, until a dial
to the upstream succeeds again. Flags take one
or two dashes; $REVERSE_HTTP_TOKEN is used when --token is not given.

Flags:
`, progName, progName, progName, progName)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, &helpError{usage.String()}
		}
		io.WriteString(stderr, usage.String())
		return nil, err
	}
	o.given = make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { o.given[f.Name] = true })
	if o.version {
		return &o, nil
	}
	fail := func(format string, a ...any) (*options, error) {
		fmt.Fprintf(stderr, "%s: %s\n", progName, fmt.Sprintf(format, a...))
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", progName)
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q", fs.Arg(0))
	}
	if o.token == "" {
		o.token = os.Getenv("REVERSE_HTTP_TOKEN")
	}
	switch {
	case len(o.hubs) == 0:
		return fail("--hub is required")
	case o.protocol != worker.ProtocolPTTH && o.protocol != worker.ProtocolPothead:
		return fail("--protocol must be %s or %s, not %q", worker.ProtocolPTTH, worker.ProtocolPothead, o.protocol)
	case o.protocol == worker.ProtocolPTTH && o.pool == "":
		return fail("--pool is required")
	case o.slots < 1:
		return fail("--slots must be at least 1")
	case o.drainTimeout <= 0:
		return fail("--drain-timeout must be positive")
	case o.resolveInterval <= 0:
		return fail("--resolve-interval must be positive")
	case (o.cert == "") != (o.key == ""):
		return fail("--cert and --key go together")
	case !o.useTLS && (o.ca != "" || o.cert != "" || o.serverName != ""):
		return fail("--ca, --cert, --key and --server-name need --tls")
	}
	if msg := o.jobs.check(o.upstream); msg != "" {
		return fail("%s", msg)
	}
	for _, h := range o.hubs {
		if host, _, err := net.SplitHostPort(h); err != nil || host == "" {
			return fail("--hub %q: want HOST:PORT", h)
		}
	}
	if msg := o.gates.check(); msg != "" {
		return fail("%s", msg)
	}
	if msg := o.redirect.check(); msg != "" {
		return fail("%s", msg)
	}
	if _, _, err := net.SplitHostPort(o.metrics); o.metrics != "" && err != nil {
		return fail("--metrics %q: want HOST:PORT (e.g. 127.0.0.1:9464)", o.metrics)
	}
	if o.upstream != "" && !validUpstream(o.upstream) {
		return fail("--upstream %q: want an http:// or https:// URL, or unix:/PATH", o.upstream)
	}
	return &o, nil
}

// validUpstream reports whether s is an http or https URL with a host, or
// unix: with a socket path.
func validUpstream(s string) bool {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return false
	case u.Scheme == "unix":
		return u.Host == "" && (u.Path != "" || u.Opaque != "")
	}
	return (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// tlsConfig builds the client TLS configuration from the options.
func (o *options) tlsConfig() (*tls.Config, error) {
	if !o.useTLS {
		return nil, nil
	}
	// Without --server-name each hub's certificate is checked against the
	// host of its --hub.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.serverName}
	if o.ca != "" {
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificates found", o.ca)
		}
		cfg.RootCAs = pool
	}
	if o.cert != "" {
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// run is runWith on the process's standard output, where only --help and
// --version write.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	return runWith(ctx, args, os.Stdout, stderr)
}

// runWith is main without os.Exit; it returns the exit code.
func runWith(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if he := (*helpError)(nil); errors.As(err, &he) {
		io.WriteString(stdout, he.usage)
		return 0
	}
	if err != nil {
		return 2
	}
	if o.version {
		fmt.Fprintln(stdout, version())
		return 0
	}
	var tuned *tuning
	if tune != nil {
		t := tune(o.slots)
		tuned = &t
	}
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		fmt.Fprintf(stderr, "%s: TLS: %v\n", progName, err)
		return 2
	}
	stopProfile, err := startCPUProfile(o.cpuProfile)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		return 2
	}
	defer stopProfile()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	for _, wn := range o.warnings() {
		logger.Warn("flag has no effect", "flag", wn.flag, "why", wn.why)
	}
	jobs, err := o.runner(logger)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		return 2
	}
	gate, err := o.gates.gate()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		return 2
	}
	redirect, err := o.redirect.config()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		return 2
	}
	cfg := worker.Config{
		Hubs:            o.hubs,
		ResolveInterval: o.resolveInterval,
		Gate:            gate,
		GateInterval:    o.gates.interval,
		Pool:            o.pool,
		Token:           o.token,
		Name:            o.name,
		Slots:           o.slots,
		Protocol:        o.protocol,
		TLS:             tlsCfg,
		DrainTimeout:    o.drainTimeout,
		Handler:         jobs.handler,
		Logger:          logger,
		Redirect:        redirect,
	}
	var obs *observer
	if o.metrics != "" {
		obs = newObserver(o.hubs)
		cfg.Observer = obs
	}
	w, err := worker.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		return 2
	}
	if obs != nil {
		obs.w, obs.health = w, jobs.health
		ms, err := serveMetrics(o.metrics, obs, logger)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", progName, err)
			return 2
		}
		defer ms.stop()
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	attrs := append([]any{"hub", strings.Join(o.hubs, ","), "pool", o.pool, "slots", o.slots},
		append(jobs.attrs, "protocol", o.protocol, "tls", o.useTLS, "gates", o.gates.String())...)
	if tuned != nil {
		attrs = append(attrs, "gomaxprocs", tuned.procs, "gogc", tuned.gcPercent)
	}
	logger.Info("starting", attrs...)
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		logHealth(ctx, jobs, logger)
	}()
	err = w.Run(ctx)
	stop()
	<-logged
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		if h := o.hint(err); h != "" {
			fmt.Fprintf(stderr, "%s: hint: %s\n", progName, h)
		}
		return 1
	}
	return 0
}

// logHealth logs every change of the jobs' health until ctx ends.
func logHealth(ctx context.Context, j *jobRunner, logger *slog.Logger) {
	h := j.health
	var since time.Time
	for {
		changed := h.Changed()
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
		if err := h.Err(); err != nil && since.IsZero() {
			since = time.Now()
			logger.Warn(j.down, append(j.attrs, "err", err)...)
		} else if err == nil && !since.IsZero() {
			logger.Info(j.back, append(j.attrs, "down_for", time.Since(since).Round(time.Millisecond))...)
			since = time.Time{}
		}
	}
}
