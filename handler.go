package reversehttp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/google/uuid"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the `reverse_http` HTTP handler: it queues each request in a
// pool and proxies it to the first worker connection that is free.
type Handler struct {
	// The pool to queue requests in; it must be defined in the
	// `reverse_http` app.
	Pool string `json:"pool,omitempty"`

	// Overrides the pool's queue timeout for this route.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// The request's priority class: an integer from -1000 to 1000, or
	// placeholders that give one, such as
	// `{http.request.header.X-Priority}` (a value that is no integer is 0,
	// one beyond the bounds the bound). Higher classes are served first;
	// the pool's priority_aging bounds how long any request waits behind
	// them. Default: 0.
	Priority string `json:"priority,omitempty"`

	// Placeholders whose value (a tenant) the pool shares its slots by:
	// within a class, the keys' requests are served in turn, each key as
	// many at a time as its weight.
	FairBy string `json:"fair_by,omitempty"`

	// Weights of fair_by keys, from 1 to 1000; a key not listed weighs 1.
	FairWeights map[string]int `json:"fair_weights,omitempty"`

	// Refuses at once, with 503 and Retry-After, a request whose
	// estimated wait exceeds its queue timeout, instead of letting it wait
	// the timeout out.
	AdmitByEstimate bool `json:"admit_by_estimate,omitempty"`

	sched routeSched // the above, provisioned (schedroute.go)

	// Makes concurrent identical requests share one job (coalesce.go).
	Coalesce *CoalesceConfig `json:"coalesce,omitempty"`

	// Keeps the route's cacheable results in Caddy's storage (cache.go).
	Cache *CacheConfig `json:"cache,omitempty"`

	share *share

	pool   *Pool
	proxy  *httputil.ReverseProxy
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.reverse_http",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision finds the handler's pool.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Pool == "" {
		return errors.New("a pool name is required")
	}
	appIface, err := ctx.App("reverse_http")
	if err != nil {
		return err
	}
	h.pool = appIface.(*App).pools[h.Pool]
	if h.pool == nil {
		return fmt.Errorf("unknown pool %q: define it in the reverse_http global option", h.Pool)
	}
	if h.QueueTimeout < 0 {
		return errors.New("queue_timeout must not be negative")
	}
	if err := h.provisionSched(); err != nil {
		return err
	}
	registerConsumerConns(ctx)
	if err := h.provisionShare(ctx); err != nil {
		return err
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite:       rewrite,
		Transport:     transport{},
		FlushInterval: -1,
		BufferPool:    bufferPool{},
		ErrorLog:      zap.NewStdLog(h.logger),
		ModifyResponse: func(resp *http.Response) error {
			j := resp.Request.Context().Value(jobCtxKey{}).(*job)
			j.obs.answered = resp.StatusCode
			// The worker's Server header replaces Caddy's, as with reverse_proxy.
			if _, ok := resp.Header["Server"]; ok {
				j.w.Header().Del("Server")
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			r.Context().Value(jobCtxKey{}).(*job).err = err
		},
	}
	return nil
}

// ServeHTTP queues r in the pool and proxies it to a worker, unless the
// route shares jobs or their results (share.go).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if h.share != nil {
		return h.share.serve(w, r)
	}
	return h.serveJob(w, r)
}

// serveJob queues r in the pool and proxies it to a worker.
func (h *Handler) serveJob(w http.ResponseWriter, r *http.Request) error {
	if r.Header.Get("Upgrade") != "" || r.Method == http.MethodConnect {
		return caddyhttp.Error(http.StatusNotImplemented,
			errors.New("reverse_http does not carry protocol upgrades or CONNECT to workers"))
	}
	id := r.Header.Get("X-Request-Id")
	if id == "" {
		id = uuid.NewString()
		r.Header.Set("X-Request-Id", id)
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(zap.String("request_id", id))
	}

	limits := h.pool.getLimits()
	queueTimeout := time.Duration(h.QueueTimeout)
	if queueTimeout == 0 {
		queueTimeout = limits.queueTimeout
	}
	now := time.Now()
	j := &job{pool: h.pool, limits: limits, deadline: now.Add(queueTimeout), w: w, gone: consumerGone(r)}
	h.ticket(r, now, &j.tk)
	j.observe(r, now)
	defer h.settle(j, r, id)
	// Wait for a worker here, before the proxy copies the request: a
	// waiting request then holds as little memory as it can, a shallower
	// goroutine stack included, which counts with thousands waiting.
	j.conn, j.err = h.pool.acquireFor(r.Context(), j.deadline, &j.tk, false)
	if j.err == nil && j.gone != nil && j.gone() {
		// net/http cannot tell that an HTTP/1 consumer hung up while
		// its request body is unread; the socket can.
		h.pool.put(j.conn)
		j.conn, j.err = nil, context.Canceled
	}
	if j.err == nil {
		j.took(j.conn)
		j.obs.proxying = true
		h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), jobCtxKey{}, j)))
		j.obs.proxying = false
		if j.conn != nil {
			// The proxy gave up before its transport ran; nothing was
			// written to the connection.
			h.pool.put(j.conn)
			j.conn = nil
		}
	}
	if j.err == nil {
		return nil
	}
	status := errorStatus(j.err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(h.pool.retryAfter(&j.tk, j.err)))
	} else if r.ProtoMajor == 1 && r.ContentLength != 0 {
		// The job's body writer may still be blocked reading the upload;
		// closing the connection spares net/http draining the rest of the
		// body (which would wait on that read) before it answers.
		w.Header().Set("Connection", "close")
	}
	if c := h.logger.Check(zap.DebugLevel, "request failed"); c != nil {
		c.Write(zap.String("pool", h.Pool), zap.String("request_id", id), zap.Int("status", status), zap.Error(j.err))
	}
	return caddyhttp.Error(status, fmt.Errorf("pool %s: %w", h.Pool, j.err))
}

// retryAfterSeconds is what a 503 advises a consumer to wait when the
// pool has no estimate (see Pool.retryAfter).
const retryAfterSeconds = 1

// errorStatus maps why a request got no response from a worker to the
// status the consumer sees.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, errQueueFull), errors.Is(err, errQueueTimeout), errors.Is(err, errPoolClosed),
		errors.Is(err, errTooManyAttempts), errors.Is(err, errWaitTooLong):
		return http.StatusServiceUnavailable
	case errors.Is(err, errResponseTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled):
		return 499 // the consumer went away; nobody reads this
	}
	return http.StatusBadGateway
}

// rewrite sets the forwarding headers. Those the consumer sent are kept only
// when it is a trusted proxy (Caddy's trusted_proxies).
func rewrite(pr *httputil.ProxyRequest) {
	if !hasContent(pr.In) {
		// HTTP/3 (and HTTP/2 without END_STREAM on its headers) gives a
		// bodiless GET an unknown length: it has no body, as reverse_proxy
		// takes it, and must not wait for a 100 Continue.
		pr.Out.Body, pr.Out.ContentLength = nil, 0
	}
	if trusted, _ := caddyhttp.GetVar(pr.In.Context(), caddyhttp.TrustedProxyVarKey).(bool); trusted {
		pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
		pr.SetXForwarded()
		for _, h := range []string{"X-Forwarded-Host", "X-Forwarded-Proto"} {
			if v := pr.In.Header.Get(h); v != "" {
				pr.Out.Header.Set(h, v)
			}
		}
		return
	}
	pr.SetXForwarded()
}

// hasContent reports whether r may carry a body. HTTP/1 frames a body
// explicitly, so a request of unknown length there is chunked and has one;
// HTTP/2 and HTTP/3 leave the length of a request unknown until its stream
// ends, so there, as for reverse_proxy, methods that take no body take none.
func hasContent(r *http.Request) bool {
	if r.ContentLength >= 0 || r.ProtoMajor < 2 {
		return r.ContentLength != 0
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete, http.MethodTrace:
		return false
	}
	return true
}

// bufferPool recycles the buffers that copy response bodies.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
