package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Decline tells the hub that this worker does not take the job, so that the
// hub requeues it on another connection. Call it before accepting the job
// (see [Accept]: a handler that may decline must come from [AcceptLater])
// and before reading the request body, and write nothing else. It answers
// 503 with "Reverse-Http-Declined: 1" and "Connection: close", then closes
// the connection at once (when w allows hijacking) rather than letting
// net/http first drain or wait for a request body it will not use. The
// slot is redialled at once.
func Decline(w http.ResponseWriter) {
	declined(w)
	h := w.Header()
	h.Set(DeclinedHeader, "1")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(declinedBody)))
	h.Set("Connection", "close")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, declinedBody)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	if conn, _, err := rc.Hijack(); err == nil {
		conn.Close()
	}
}

const declinedBody = "declined\n"

// forwardedHeaders are set by the hub and passed upstream unchanged.
var forwardedHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// Forwarder is a Handler that forwards each job to an upstream HTTP server.
// Create it with NewForwarder.
//
// It accepts a job (see [Accept]) once it holds a connection to the
// upstream, before it writes the request there. If the upstream cannot be
// reached it declines the job, so that the hub gives it to another worker
// at once, and marks its [Forwarder.Health] down: a Worker serving it then
// holds no connections to the hub until a TCP dial (and TLS handshake, for
// https) to the upstream succeeds again. A failure after the request was
// written upstream answers 502 Bad Gateway, since the job may have run.
type Forwarder struct {
	upstream *url.URL
	target   *url.URL      // what the job's URL is rewritten to
	pool     *upstreamPool // for the direct exchange; nil for https
	log      *slog.Logger
	rp       *httputil.ReverseProxy
	health   *Health
	dialer   *net.Dialer
	tls      *tls.Config // for https upstreams
}

// NewForwarder returns a Forwarder to upstream, an absolute http or https
// URL whose path (if any) prefixes the job's path, or unix:/PATH for an
// upstream listening on the unix socket PATH (speaking plain HTTP).
//
// The job's Host header and the Forwarded/X-Forwarded-* headers the hub set
// are passed on as they are. Request and response bodies are streamed, never
// buffered, and responses are flushed as they arrive. When the hub cancels
// the job (closes the connection), the upstream request is cancelled too.
// Nil logger means slog.Default().
func NewForwarder(upstream *url.URL, logger *slog.Logger) *Forwarder {
	if logger == nil {
		logger = slog.Default()
	}
	f := &Forwarder{
		upstream: upstream,
		target:   upstream,
		log:      logger,
		dialer:   &net.Dialer{Timeout: probeTimeout},
		tls:      &tls.Config{ServerName: upstream.Hostname()},
	}
	f.health = NewHealth(f.probe)
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = maxIdleUpstream
	jobDialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	switch upstream.Scheme {
	case "http":
		f.pool = &upstreamPool{network: "tcp", addr: f.address(), dialer: jobDialer}
	case "unix":
		// The socket has no host name; the job's Host header is passed on.
		f.target = &url.URL{Scheme: "http", Host: "localhost"}
		f.pool = &upstreamPool{network: "unix", addr: unixPath(upstream), dialer: jobDialer}
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return jobDialer.DialContext(ctx, "unix", f.pool.addr)
		}
	}
	f.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(f.target)
			pr.Out.Host = pr.In.Host
			// The hub's 100-continue is between hub and worker: the worker
			// answers it when it accepts the job. Passing it on would make
			// the transport wait a second for upstreams that never send
			// 100 Continue.
			pr.Out.Header.Del("Expect")
			for _, k := range forwardedHeaders {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = slices.Clone(v)
				}
			}
		},
		Transport:     transport,
		FlushInterval: -1,
		BufferPool:    copyBuffers{},
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ErrorHandler:  f.fail,
	}
	return f
}

// copyBuffers lends the reverse proxy the buffers it copies response
// bodies through, which it would otherwise allocate (and the collector
// clear) for every job.
type copyBuffers struct{}

const copyBufferSize = 32 << 10

var copyBufferPool = sync.Pool{New: func() any { return new([copyBufferSize]byte) }}

func (copyBuffers) Get() []byte { return copyBufferPool.Get().(*[copyBufferSize]byte)[:] }

func (copyBuffers) Put(b []byte) {
	if cap(b) == copyBufferSize {
		copyBufferPool.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
	}
}

// Health is the state of the upstream.
func (f *Forwarder) Health() *Health { return f.health }

func (*Forwarder) acceptsItself() {}

// forwardKey is the request context key of a job's *forwarding.
type forwardKey struct{}

// forwarding is what the error handler needs to know about one job.
type forwarding struct {
	connected atomic.Bool // the transport holds an upstream connection
}

func (f *Forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f.health.Err(); err != nil && !accepted(r) {
		f.log.Debug("upstream down: declining the job", "method", r.Method, "uri", r.RequestURI)
		Decline(w)
		return
	}
	if f.direct(r) {
		f.serveDirect(w, r)
		return
	}
	fw := &forwarding{}
	trace := &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			fw.connected.Store(true)
			Accept(r)
		},
	}
	ctx := context.WithValue(httptrace.WithClientTrace(r.Context(), trace), forwardKey{}, fw)
	f.rp.ServeHTTP(no100Writer{w}, r.WithContext(ctx))
}

// fail answers a job whose upstream request failed: a job not yet accepted
// is declined, any other gets 502. A failure to reach the upstream marks
// it down.
func (f *Forwarder) fail(w http.ResponseWriter, r *http.Request, err error) {
	fw, _ := r.Context().Value(forwardKey{}).(*forwarding)
	f.failJob(w, r, err, errors.Is(err, context.Canceled), fw == nil || fw.connected.Load())
}

// failJob answers a job whose upstream exchange failed with err, for both
// paths: one the hub cancelled (cancel: err may be the cancellation's) is
// counted so; one that never reached the upstream (!connected) marks it
// down and, not yet accepted, is declined; any other gets 502.
func (f *Forwarder) failJob(w http.ResponseWriter, r *http.Request, err error, cancel, connected bool) {
	if cancel && r.Context().Err() != nil {
		f.log.Debug("job cancelled by the hub", "method", r.Method, "uri", r.RequestURI)
		jobCancelled(w)
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	if !connected || isDialError(err) {
		f.health.Fail(err)
	}
	if !connected && !accepted(r) {
		f.log.Debug("upstream unreachable: declining the job", "upstream", f.upstream.String(), "method", r.Method, "uri", r.RequestURI, "err", err)
		Decline(w)
		return
	}
	f.log.Warn("upstream request failed", "upstream", f.upstream.String(), "method", r.Method, "uri", r.RequestURI, "err", err)
	jobFailed(w)
	w.WriteHeader(http.StatusBadGateway)
}

// isDialError reports whether err comes from dialling, as after the
// transport found a pooled connection dead and dialled a new one.
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// address is the upstream's host and port.
func (f *Forwarder) address() string {
	port := f.upstream.Port()
	if port == "" {
		port = "80"
		if f.upstream.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(f.upstream.Hostname(), port)
}

// unixPath is the socket path of a unix:/PATH (or unix:PATH) URL.
func unixPath(u *url.URL) string {
	if u.Opaque != "" {
		return u.Opaque
	}
	return u.Path
}

// probe checks that the upstream accepts connections.
func (f *Forwarder) probe(ctx context.Context) error {
	if f.upstream.Scheme == "unix" {
		c, err := f.dialer.DialContext(ctx, "unix", f.pool.addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	addr := f.address()
	var (
		c   net.Conn
		err error
	)
	if f.upstream.Scheme == "https" {
		c, err = (&tls.Dialer{NetDialer: f.dialer, Config: f.tls}).DialContext(ctx, "tcp", addr)
	} else {
		c, err = f.dialer.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return err
	}
	return c.Close()
}

// no100Writer drops "100 Continue" that the reverse proxy relays from
// upstream: the worker sends its own to the hub when it accepts the job,
// and the hub must not see two.
type no100Writer struct {
	http.ResponseWriter
}

func (w no100Writer) WriteHeader(code int) {
	if code == http.StatusContinue {
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush, Hijack and the like.
func (w no100Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
