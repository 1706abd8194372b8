package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// CGIConfig describes the CGI script a [CGI] runs for each job.
type CGIConfig struct {
	// Script is the path of the CGI executable.
	Script string
	// Dir is the script's working directory. Empty means the script's
	// own directory.
	Dir string
	// Timeout, if positive, bounds how long a job's script may run (see
	// [CGI] for when it is noticed).
	Timeout time.Duration
	// InheritEnv names variables of the worker's environment that the
	// script gets, besides PATH. Nothing else of the worker's environment
	// reaches it.
	InheritEnv []string
	// MaxEnvBytes bounds the CGI environment built from a request; a job
	// whose request would exceed it gets 431. Zero means
	// DefaultMaxEnvBytes.
	MaxEnvBytes int
	// MaxHeaders bounds the header fields of a job's request; more get
	// 431. Zero means DefaultMaxHeaders.
	MaxHeaders int
	// Logger receives the log of the jobs. Nil means slog.Default().
	Logger *slog.Logger
}

// CGI is a Handler that runs a CGI script (RFC 3875) for each job with
// the standard library's net/http/cgi, for scripts that write their own
// status and headers. Create it with NewCGI.
//
// It accepts a job (see [Accept]) once it has checked that the script, and
// the interpreter its "#!" line names, can be executed; otherwise it
// declines the job and marks its [CGI.Health] down, so that the worker
// leaves the hub until the script can run again. (A start that fails
// after the check, for want of memory say, is net/http/cgi's 500.)
//
// The request's header fields reach the script as HTTP_* variables, with
// the same filter as an [Exec]'s; a request with a chunked body gets 411,
// since CGI hands the script the body's length. Responses are flushed as
// the script writes them.
//
// net/http/cgi kills the script (not the processes it started) when a
// write of its output fails; the worker makes every write fail once the
// hub has closed the connection or the Timeout has passed, so the script
// is killed at its next output. A script that is silent meanwhile runs on
// until it writes or ends; one that has not sent its head by the Timeout
// gets 504, one that has is cut off. For commands that must die at once,
// and with everything they started, use [Exec].
type CGI struct {
	handler cgi.Handler // a template, copied for each job
	path    string
	timeout time.Duration
	env     *jobEnv
	log     *slog.Logger
	health  *Health
}

// NewCGI checks cfg and the script and returns a CGI.
func NewCGI(cfg CGIConfig) (*CGI, error) {
	if cfg.Script == "" {
		return nil, errors.New("worker: no CGI script")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("worker: negative CGI timeout %v", cfg.Timeout)
	}
	path, err := filepath.Abs(cfg.Script)
	if err != nil {
		return nil, fmt.Errorf("worker: CGI script: %w", err)
	}
	if err := scriptRunnable(path); err != nil {
		return nil, fmt.Errorf("worker: CGI script: %w", err)
	}
	env, err := newJobEnv(cfg.InheritEnv, cfg.MaxEnvBytes, cfg.MaxHeaders)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	c := &CGI{
		handler: cgi.Handler{Path: path, Dir: cfg.Dir, InheritEnv: cfg.InheritEnv},
		path:    path,
		timeout: cfg.Timeout,
		env:     env,
		log:     cfg.Logger,
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.health = NewHealth(func(context.Context) error { return scriptRunnable(c.path) })
	return c, nil
}

// Health is the state of the script: down while it cannot be executed.
func (c *CGI) Health() *Health { return c.health }

func (*CGI) acceptsItself() {}

// scriptRunnable checks that path is executable, and so is the
// interpreter that its "#!" line names, if any.
func scriptRunnable(path string) error {
	if err := executable(path); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if !bytes.HasPrefix(head, []byte("#!")) {
		return nil
	}
	line, _, _ := bytes.Cut(head[2:], []byte("\n"))
	fields := bytes.Fields(line)
	if len(fields) == 0 {
		return fmt.Errorf("%s: empty #! line", path)
	}
	if _, err := exec.LookPath(string(fields[0])); err != nil {
		return fmt.Errorf("%s: interpreter: %w", path, err)
	}
	return nil
}

func (c *CGI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := scriptRunnable(c.path); err != nil {
		c.health.Fail(err)
		if accepted(r) { // by the Worker: c is wrapped in another Handler
			c.log.Warn("cgi script cannot be run", "script", c.path, "method", r.Method, "uri", r.RequestURI, "err", err)
			jobFailed(w)
			http.Error(w, "cgi script cannot be run", http.StatusBadGateway)
			return
		}
		c.log.Warn("cgi script cannot be run: declining the job", "script", c.path, "method", r.Method, "uri", r.RequestURI, "err", err)
		Decline(w)
		return
	}
	if r.ContentLength < 0 {
		http.Error(w, "a CGI script needs the length of the request body: send Content-Length", http.StatusLengthRequired)
		return
	}
	if _, err := c.env.build(r); err != nil {
		c.log.Warn("job refused", "method", r.Method, "uri", r.RequestURI, "err", err)
		http.Error(w, err.Error(), http.StatusRequestHeaderFieldsTooLarge)
		return
	}
	Accept(r)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if c.timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, c.timeout, errCommandTimeout)
		defer stop()
	}
	c.serve(ctx, w, r)
}

// serve runs the script for the job r and logs how it went.
func (c *CGI) serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	jr := r.Clone(ctx)
	jr.Header = jobHeaders(r.Header)
	h := c.handler
	// An *os.File, so that the script's stderr is its own pipe: exec
	// would otherwise wait for every process holding it.
	errR, errW, err := os.Pipe()
	if err != nil {
		c.log.Warn("job failed", "err", err)
		http.Error(w, "cannot run the script", http.StatusInternalServerError)
		return
	}
	tail := newTailBuffer(stderrTail)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		io.Copy(tail, errR)
	}()
	notes := newTailBuffer(1 << 10) // net/http/cgi's own complaints
	h.Stderr = errW
	h.Logger = log.New(notes, "", 0)
	cw := &cgiWriter{ResponseWriter: w, ctx: ctx}
	http.NewResponseController(w).EnableFullDuplex()

	h.ServeHTTP(cw, jr)

	errW.Close()
	errR.SetReadDeadline(time.Now().Add(stderrGrace))
	<-drained
	errR.Close()

	attrs := []any{"script", c.path, "method", r.Method, "uri", r.RequestURI,
		"elapsed", time.Since(start).Round(time.Millisecond), "status", cw.status, "wrote", cw.wrote}
	if s := tail.String(); s != "" {
		attrs = append(attrs, "stderr", s)
	}
	if s := notes.String(); s != "" {
		attrs = append(attrs, "cgi", s)
	}
	c.finish(ctx, r, cw, attrs)
}

// finish logs the end of a job and completes or cuts off its response.
func (c *CGI) finish(ctx context.Context, r *http.Request, cw *cgiWriter, attrs []any) {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errCommandTimeout):
		c.log.Warn("cgi script timed out", append(attrs, "timeout", c.timeout)...)
		jobFailed(cw)
		if cw.status == 0 {
			cw.WriteHeader(http.StatusGatewayTimeout)
		}
		if !cw.timedOut {
			panic(http.ErrAbortHandler)
		}
		io.WriteString(cw.ResponseWriter, "cgi script timed out\n")
	case cause != nil:
		if r.Context().Err() != nil {
			cause = errors.New("the hub closed the connection")
		}
		c.log.Info("job cancelled", append(attrs, "reason", cause.Error())...)
		jobCancelled(cw)
		panic(http.ErrAbortHandler)
	case cw.status == 0:
		// net/http/cgi gives up on some bad heads without a status.
		jobFailed(cw)
		c.log.Warn("cgi script failed", attrs...)
		http.Error(cw.ResponseWriter, "cgi script gave no valid response", http.StatusBadGateway)
	case cw.status >= 500:
		c.log.Warn("cgi script failed", attrs...)
	default:
		c.log.Debug("job done", attrs...)
	}
}

// cgiWriter is the ResponseWriter net/http/cgi writes a job's response to.
// It flushes every write, fails writes once the job's context has ended
// (net/http/cgi then kills the script), and turns a head sent after the
// timeout into a 504.
type cgiWriter struct {
	http.ResponseWriter
	ctx      context.Context
	status   int
	timedOut bool // answered 504 instead of the script's head
	wrote    int64
}

func (w *cgiWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if errors.Is(context.Cause(w.ctx), errCommandTimeout) {
		h := w.ResponseWriter.Header()
		for k := range h {
			delete(h, k)
		}
		h.Set("Content-Type", "text/plain; charset=utf-8")
		code, w.timedOut = http.StatusGatewayTimeout, true
	}
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *cgiWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.wrote += int64(n)
	if err == nil {
		err = http.NewResponseController(w.ResponseWriter).Flush()
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (w *cgiWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
