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
)

var (
	errResponseTimeout = errors.New("worker did not answer within the response timeout")
	// errReplay means the worker cannot have run the job: it may run elsewhere.
	errReplay = errors.New("worker never started the job")
)

// jobCtxKey carries a request's *job from the handler into the transport.
type jobCtxKey struct{}

// job is what the handler and the transport share about one request.
type job struct {
	pool     *Pool
	deadline time.Time // when waiting in the queue gives up
	w        http.ResponseWriter
	err      error // the error that ended the request before a response, if any
	// conn is the connection the handler took from the pool before the
	// proxy ran: the transport's first attempt uses it.
	conn *workerConn
}

// transport is the http.RoundTripper behind the handler's ReverseProxy: it
// runs the exchange on the worker connection the handler took for the
// request, and retries on another one from the request's pool where the
// worker never started the job.
type transport struct{}

func (transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	j := ctx.Value(jobCtxKey{}).(*job)
	if req.Body != nil && req.ContentLength != 0 {
		// The body is sent only once a worker has taken the job, so that a
		// connection that turns out to be closed costs nothing and the body
		// can still go to another worker.
		req.Header.Set("Expect", "100-continue")
	} else {
		req.Header.Del("Expect")
	}
	head := false
	for {
		c := j.conn
		j.conn = nil
		if c == nil {
			var err error
			if c, err = j.pool.acquire(ctx, j.deadline, head); err != nil {
				return nil, err
			}
		}
		resp, err := c.roundTrip(req)
		if err != errReplay {
			return resp, err
		}
		head = true
	}
}

// roundTrip writes req on c and reads the response head. On any outcome c is
// either handed to the returned response's body or released.
func (c *workerConn) roundTrip(req *http.Request) (*http.Response, error) {
	p := c.pool
	ctx := req.Context()
	if c.spoiled() {
		// Nothing was written: the request may go to another worker.
		p.release(c, false)
		return nil, errReplay
	}
	// The job reads its response itself: the idle poller need not hear of it.
	c.quietIdle()

	var g *bodyGate
	var wrote chan error
	if req.Body != nil && req.ContentLength != 0 {
		g = &bodyGate{body: req.Body, opened: make(chan struct{}), aborted: make(chan struct{})}
		out := *req
		out.Body = g
		wrote = make(chan error, 1)
		go func() {
			wrote <- writeRequest(&out, c.conn)
		}()
	} else {
		if err := writeRequest(req, c.conn); err != nil {
			// The worker is gone; whether it left before or after reading
			// the request, it answered nothing: awaitResponse tells below.
			c.close()
		}
	}

	// A consumer that goes away closes the worker connection: the one
	// cancellation signal every worker, POTHEAD's included, understands.
	stop := context.AfterFunc(ctx, c.close)
	var timedOut atomic.Bool
	var timer *time.Timer
	p.mu.Lock()
	respTimeout := p.limits.respTimeout
	p.mu.Unlock()
	if respTimeout > 0 {
		timer = time.AfterFunc(respTimeout, func() {
			timedOut.Store(true)
			c.close()
		})
	}
	// end closes c for a job that gets no response from it. The body
	// writer must have stopped before the request goes to another worker,
	// which reads the same body.
	end := func(waitWriter bool) {
		stop()
		if timer != nil {
			timer.Stop()
		}
		if g != nil {
			g.abort()
			if waitWriter {
				<-wrote
			}
		}
		p.release(c, false)
	}
	fail := func(err error) (*http.Response, error) {
		end(false)
		if timedOut.Load() {
			return nil, errResponseTimeout
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}

	first := true
	for {
		if err := c.awaitResponse(); err != nil {
			if first && ctx.Err() == nil && !timedOut.Load() && replayable(req, g) {
				end(true)
				return nil, errReplay
			}
			return fail(fmt.Errorf("worker connection closed before a response: %w", err))
		}
		first = false
		resp, err := http.ReadResponse(c.reader(), req)
		if err != nil {
			return fail(fmt.Errorf("reading worker response: %w", err))
		}
		if resp.StatusCode == http.StatusContinue {
			if g != nil {
				g.open()
			}
			c.wake()
			continue
		}
		if resp.StatusCode > 101 && resp.StatusCode < 200 {
			if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return fail(err)
				}
			}
			c.wake()
			continue
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return fail(errors.New("worker switched protocols for a request that did not ask for it"))
		}
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(worker.DeclinedHeader) != "" {
			if g == nil || !g.isOpen() {
				end(true)
				return nil, errReplay
			}
			return fail(errors.New("worker declined the job after reading its body"))
		}
		// The response has begun: the response timeout no longer applies.
		if timer != nil && !timer.Stop() {
			return fail(errResponseTimeout)
		}
		resp.Body = &jobBody{c: c, body: resp.Body, resp: resp, gate: g, wrote: wrote, stop: stop}
		return resp, nil
	}
}

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

// replayable reports whether a request whose connection failed before any
// response byte can go to another worker without running the job twice:
// its body never left the hub, or the consumer marked it safe to repeat
// with an idempotency key. A bodiless request without a key is not replayed
// even if its method is idempotent: the worker may have been killed while
// running it, and these jobs are too expensive to run twice unasked.
// (Connections whose worker hung up while idle, or between two jobs, never
// get here: the pool drops them before they are handed out, and spoiled
// catches them on Linux before a request is written.)
func replayable(req *http.Request, g *bodyGate) bool {
	if g != nil {
		return !g.isOpen()
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
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
