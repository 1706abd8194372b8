package reversehttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reversehttp/reverse_http/worker"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Errors that end a job without a worker's response.
var (
	errResponseTimeout = errors.New("worker did not answer within the response timeout")
	errTooManyAttempts = errors.New("no worker took the job within the pool's max_attempts")
	errTooMany1xx      = errors.New("worker sent too many informational (1xx) responses")
	errLateDecline     = errors.New("worker declined the job after its body had started")
)

// max1xxResponses bounds the informational responses a job may relay before
// its final one, as net/http's Transport bounds them (it allows 5; the
// 100 Continue of a request body comes on top of relayed ones here).
const max1xxResponses = 8

// notStarted says why a job cannot have started on the worker it was sent
// to, so that it may go to another (see replay rules in README.md).
type notStarted struct{ err error }

func (e notStarted) Error() string { return "worker never started the job: " + e.err.Error() }
func (e notStarted) Unwrap() error { return e.err }

// jobCtxKey carries a request's *job from the handler into the transport.
type jobCtxKey struct{}

// job is what the handler and the transport share about one request.
type job struct {
	pool     *Pool
	limits   poolLimits
	deadline time.Time // when waiting in the queue gives up
	tk       ticket    // its place in the queue (sched.go)
	w        http.ResponseWriter
	err      error // the error that ended the request before a response, if any
	// conn is the connection the handler took from the pool before the
	// proxy ran: the transport's first attempt uses it.
	conn *workerConn
	// attempts counts the workers the job was offered to; tried names
	// them, so that a retry prefers another worker.
	attempts int
	tried    []string
	// gone reports that the consumer has left; nil if that cannot be told
	// beyond the request's context.
	gone func() bool

	obs jobObs // what operators see of it (requestobs.go)
}

// next returns the connection for the job's next attempt.
func (j *job) next(ctx context.Context) (*workerConn, error) {
	if c := j.conn; c != nil {
		j.conn = nil
		j.attempts++
		return c, nil
	}
	if j.attempts >= j.limits.maxAttempts {
		return nil, errTooManyAttempts
	}
	if !time.Now().Before(j.deadline) {
		return nil, errQueueTimeout
	}
	c, err := j.pool.acquireFor(ctx, j.deadline, &j.tk, true, j.tried...)
	if err != nil {
		return nil, err
	}
	if j.gone != nil && j.gone() {
		j.pool.put(c)
		return nil, context.Canceled
	}
	j.took(c)
	j.attempts++
	return c, nil
}

// transport is the http.RoundTripper behind the handler's ReverseProxy: it
// runs the exchange on the worker connection the handler took for the
// request, and offers the request to another worker where the first cannot
// have started it.
type transport struct{}

func (transport) RoundTrip(req *http.Request) (*http.Response, error) {
	j := req.Context().Value(jobCtxKey{}).(*job)
	withBody := req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
	if withBody {
		// The body is sent only once a worker has taken the job, so that a
		// connection that turns out to be closed, or a decline, costs
		// nothing and the body can still go to another worker.
		req.Header.Set("Expect", "100-continue")
	} else {
		req.Header.Del("Expect")
	}
	for {
		c, err := j.next(req.Context())
		if err != nil {
			return nil, err
		}
		resp, err := c.runJob(req, j.limits, withBody)
		var ns notStarted
		if !errors.As(err, &ns) {
			return resp, err
		}
		j.requeued(ns)
		j.tried = append(j.tried, c.key)
	}
}

// attempt is one job on one worker connection, from the first byte written
// to the response head: write the request; await the response; abandon it
// (or hand it on, where it never started).
type attempt struct {
	c      *workerConn
	req    *http.Request
	ctx    context.Context
	limits poolLimits
	// gate holds a request body back until the worker asks for it; wrote
	// receives the body writer's result. Both nil without a body.
	gate  *bodyGate
	wrote chan error
	// stopCancel undoes the closing of c when the consumer goes away.
	stopCancel func() bool
	clock      responseClock
}

// runJob runs req on c, which its caller holds. On any outcome c is handed
// to the returned response's body, put back or closed. A notStarted error
// means the job may go to another worker.
func (c *workerConn) runJob(req *http.Request, limits poolLimits, withBody bool) (*http.Response, error) {
	a := &attempt{c: c, req: req, ctx: req.Context(), limits: limits}
	a.clock.d = limits.respTimeout
	c.setState(stateWriting)
	c.pool.sent.Add(1)
	// A consumer that goes away closes the worker connection: the one
	// cancellation signal every worker, POTHEAD's included, understands.
	a.stopCancel = context.AfterFunc(a.ctx, func() { c.closeWith(context.Canceled) })
	if withBody {
		a.startBody()
	} else if err := writeRequest(req, c.conn); err != nil {
		// A failed write never delivered the end of the head: the worker
		// cannot have taken it for a request.
		return nil, a.abandon(err, true)
	} else {
		a.clock.start(c)
	}
	c.setState(stateAwaiting)
	return a.awaitHead()
}

// startBody writes the request in a goroutine of its own, its body held
// back by the gate until the worker sends 100 Continue. The response clock
// starts when the body has been sent.
func (a *attempt) startBody() {
	a.gate = &bodyGate{body: a.req.Body, opened: make(chan struct{}), aborted: make(chan struct{})}
	a.wrote = make(chan error, 1)
	out := *a.req
	out.Body = a.gate
	go func() {
		err := writeRequest(&out, a.c.conn)
		if err == nil {
			a.clock.start(a.c)
		}
		a.wrote <- err
	}()
}

// awaitHead reads responses until the final one's head.
func (a *attempt) awaitHead() (*http.Response, error) {
	c := a.c
	for n1xx := 0; ; n1xx++ {
		if err := c.awaitResponse(n1xx == 0); err != nil {
			return nil, a.abandon(fmt.Errorf("worker connection closed before a response: %w", err), false)
		}
		resp, err := http.ReadResponse(c.reader(a.limits.maxResponseHeader), a.req)
		if err != nil {
			if errors.Is(err, errHeadTooLarge) {
				err = fmt.Errorf("%w (max_response_header %d bytes)", errHeadTooLarge, a.limits.maxResponseHeader)
			}
			return nil, a.fail(fmt.Errorf("reading worker response: %w", err))
		}
		if resp.StatusCode < 100 {
			// net/http reads any three digits; a status below 100 is no
			// HTTP status, and relaying it would crash the response writer.
			resp.Body.Close()
			return nil, a.fail(fmt.Errorf("reading worker response: invalid status %03d", resp.StatusCode))
		}
		if resp.StatusCode >= 200 {
			return a.final(resp)
		}
		if n1xx >= max1xxResponses {
			return nil, a.fail(errTooMany1xx)
		}
		if err := a.informational(resp); err != nil {
			return nil, a.fail(err)
		}
	}
}

// informational handles a 1xx response: 100 Continue releases the body (and
// says the worker accepted the job); others are relayed to the consumer.
func (a *attempt) informational(resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusContinue:
		if a.gate != nil {
			a.gate.open()
		}
		return nil
	case http.StatusSwitchingProtocols:
		return errors.New("worker switched protocols for a request that did not ask for it")
	}
	if trace := httptrace.ContextClientTrace(a.ctx); trace != nil && trace.Got1xxResponse != nil {
		return trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header))
	}
	return nil
}

// final takes the final response's head: a decline goes back to the pool's
// queue, anything else streams to the consumer.
func (a *attempt) final(resp *http.Response) (*http.Response, error) {
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(worker.DeclinedHeader) != "" {
		a.c.pool.declined.Add(1)
		if ce := a.c.pool.log().Check(zapcore.DebugLevel, "worker declined the job"); ce != nil {
			ce.Write(zap.String("remote", a.c.remote()), zap.String("worker", a.c.info.name))
		}
		return nil, a.declined(resp)
	}
	if !a.clock.stop() {
		return nil, a.fail(errResponseTimeout)
	}
	a.c.bodyFollows()
	a.c.setState(stateStreaming)
	resp.Body = &jobBody{c: a.c, body: resp.Body, resp: resp, gate: a.gate, wrote: a.wrote, stop: a.stopCancel}
	return resp, nil
}

// maxDeclineBody bounds what is read of a decline's body to keep its
// connection: a worker that says more is not reused.
const maxDeclineBody = 4096

// declined hands a job the worker declined back to the queue. Its body
// must not have started: a body half sent cannot go to another worker. A
// bodiless job's connection carries the next one where the decline allows.
func (a *attempt) declined(resp *http.Response) error {
	if a.gate != nil && a.gate.isOpen() {
		resp.Body.Close()
		return a.fail(errLateDecline)
	}
	a.stopCancel()
	a.clock.stop()
	if a.gate == nil && !resp.Close && drained(resp.Body) && a.ctx.Err() == nil {
		a.c.pool.release(a.c, true)
		return notStarted{errDeclined}
	}
	resp.Body.Close()
	return a.abandon(errDeclined, true)
}

// drained reads what is left of body, if it is short, and reports whether
// it ended cleanly.
func drained(body io.ReadCloser) bool {
	n, err := io.Copy(io.Discard, io.LimitReader(body, maxDeclineBody+1))
	body.Close()
	return err == nil && n <= maxDeclineBody
}

// abandon ends an attempt that got no final response: c closes. The job
// may go to another worker only if the hub knows it never started there:
// sure says so (nothing reached the worker as a request, or it declined);
// otherwise see neverStarted.
func (a *attempt) abandon(err error, sure bool) error {
	if a.clock.fired() || a.ctx.Err() != nil || !(sure || a.neverStarted(err)) {
		return a.fail(err)
	}
	a.stopCancel()
	a.clock.stop()
	a.c.closeWith(notStarted{err})
	if a.gate != nil {
		// The body writer must have stopped before the request goes to
		// another worker, which reads the same body.
		a.gate.abort()
		<-a.wrote
	}
	a.c.pool.release(a.c, false)
	return notStarted{err}
}

// neverStarted reports whether a connection that ended, with err, before a
// final response leaves the hub sure that the job never started: only a
// request whose body was still held back, on a worker whose 100 Continue
// comes before anything of a job runs (the accept feature, or a POTHEAD
// worker, whose server answers 100 before it calls the app), and only on a
// clean end of the connection, which comes after everything the worker
// sent. A bodiless request gives the hub nothing to go by once written: it
// is never run again.
func (a *attempt) neverStarted(err error) bool {
	return a.gate != nil && !a.gate.isOpen() && a.c.info.features.accept && errors.Is(err, io.EOF)
}

// fail ends an attempt that got no response, for good: c closes. It does
// not wait for the body writer, which may be blocked reading the upload.
func (a *attempt) fail(err error) error {
	a.c.leaving(err) // unless the consumer or the clock closed it first
	a.stopCancel()
	a.clock.stop()
	if a.gate != nil {
		a.gate.abort()
	}
	a.c.pool.release(a.c, false)
	switch {
	case a.clock.fired():
		return errResponseTimeout
	case a.ctx.Err() != nil:
		return a.ctx.Err()
	}
	return err
}

// responseClock is a job's response timeout. Like net/http's
// ResponseHeaderTimeout it runs from the moment the request has been
// written (its body included) until the response head arrives; when it runs
// out it closes the connection.
type responseClock struct {
	d       time.Duration
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
	expired atomic.Bool
}

func (k *responseClock) start(c *workerConn) {
	if k.d <= 0 {
		return
	}
	k.mu.Lock()
	if !k.stopped {
		k.timer = time.AfterFunc(k.d, func() {
			k.expired.Store(true)
			c.closeWith(errResponseTimeout)
		})
	}
	k.mu.Unlock()
}

// stop stops the clock and reports whether it had not run out.
func (k *responseClock) stop() bool {
	if k.d <= 0 {
		return true
	}
	k.mu.Lock()
	k.stopped = true
	t := k.timer
	k.mu.Unlock()
	if t != nil {
		t.Stop()
	}
	return !k.expired.Load()
}

func (k *responseClock) fired() bool { return k.expired.Load() }

// writers buffer requests on their way to workers. They are taken per
// job, not per connection, so that idle connections hold no buffer.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}

// writeRequest writes req's head and body to w.
func writeRequest(req *http.Request, w io.Writer) error {
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(w)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	return err
}

// jobBody is a worker's response body; its end decides whether the
// connection carries another job.
type jobBody struct {
	c     *workerConn
	body  io.ReadCloser
	resp  *http.Response
	gate  *bodyGate
	wrote chan error
	stop  func() bool
	once  sync.Once
}

func (b *jobBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil {
		if err != io.EOF {
			b.c.leaving(err)
		}
		b.finish(err == io.EOF)
	}
	return n, err
}

func (b *jobBody) Close() error {
	b.finish(false)
	return nil
}

func (b *jobBody) finish(complete bool) {
	b.once.Do(func() {
		reuse := complete && !b.resp.Close
		if !b.stop() {
			reuse = false // the consumer went away and closed the connection
		}
		if b.gate != nil {
			if !b.gate.isOpen() {
				// The worker answered without taking the body.
				b.gate.abort()
				reuse = false
			}
			select {
			case err := <-b.wrote:
				reuse = reuse && err == nil
			default:
				// Still uploading although the response is complete.
				reuse = false
			}
		}
		if !reuse {
			b.c.leaving(b.endCause(complete))
		}
		b.c.pool.release(b.c, reuse)
	})
}

// bodyGate holds a request body back until the worker sends 100 Continue.
type bodyGate struct {
	body      io.Reader
	opened    chan struct{}
	aborted   chan struct{}
	openOnce  sync.Once
	abortOnce sync.Once
	isOpened  atomic.Bool
}

var errGateAborted = errors.New("request body not wanted")

func (g *bodyGate) open() {
	g.openOnce.Do(func() {
		g.isOpened.Store(true)
		close(g.opened)
	})
}

func (g *bodyGate) abort() { g.abortOnce.Do(func() { close(g.aborted) }) }

func (g *bodyGate) isOpen() bool { return g.isOpened.Load() }

func (g *bodyGate) Read(p []byte) (int, error) {
	select {
	case <-g.opened:
	case <-g.aborted:
		return 0, errGateAborted
	}
	select {
	case <-g.aborted:
		return 0, errGateAborted
	default:
	}
	return g.body.Read(p)
}

// Close leaves the consumer's body open: it may still go to another worker.
func (g *bodyGate) Close() error { return nil }
