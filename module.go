// Package reversehttp is a Caddy app and HTTP handler that load-balance
// expensive, non-concurrent jobs by reverse HTTP: workers dial in to Caddy
// and hold one connection per free slot; the handler queues each request
// in a named pool and hands the oldest one to whichever connection is idle.
package reversehttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/google/uuid"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
	caddy.RegisterModule(Handler{})
}

// pools holds every pool by name across config loads: idle worker
// connections and queued requests survive reloads.
var pools = caddy.NewUsagePool()

// Defaults for values a pool config leaves out.
const (
	DefaultMaxQueue         = 1000
	DefaultQueueTimeout     = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
)

// Protocols a pool's workers speak.
const (
	ProtocolPTTH    = "ptth"
	ProtocolPOTHEAD = "pothead"
)

// App is the `reverse_http` app: it owns the pools and their worker
// listeners.
type App struct {
	// Pools by name. A `reverse_http` handler names the pool it queues in.
	Pools map[string]*PoolConfig `json:"pools,omitempty"`

	ctx       caddy.Context
	logger    *zap.Logger
	pools     map[string]*Pool
	listeners []*workerListener
	stopOnce  *sync.Once
}

// PoolConfig configures one pool.
type PoolConfig struct {
	// Network addresses the pool's workers dial, in Caddy's network address
	// syntax (e.g. `:4040`, `127.0.0.1:4040`, `unix//run/w.sock`). Required.
	// Several ptth pools may share an address; the handshake's target picks
	// the pool.
	Listen []string `json:"listen,omitempty"`

	// How workers talk to the pool: `ptth` (default) opens each connection
	// with an HTTP/1.1 upgrade handshake that names the pool and may carry a
	// token; `pothead` is bare, as POTHEAD's workers dial: no handshake, the
	// worker waits for the first request.
	Protocol string `json:"protocol,omitempty"`

	// Bearer tokens, any of which admits a ptth worker. Placeholders such as
	// `{env.REVERSE_HTTP_TOKEN}` are replaced when the config loads.
	Tokens []string `json:"tokens,omitempty"`

	// TLS on the worker listener, with certificates from Caddy's tls app.
	TLS *PoolTLS `json:"tls,omitempty"`

	// Requests waiting beyond this many get 503 at once. Default: 1000.
	MaxQueue int `json:"max_queue,omitempty"`

	// The longest a request waits for a worker before 503. Default: 30s.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// The longest a worker may take to complete its handshake (and TLS
	// handshake). Default: 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	// The longest a worker may take to begin its response once it has the
	// job; past it the job's connection is closed and the consumer gets
	// 504. Default: no limit, as jobs are expected to be long.
	ResponseTimeout caddy.Duration `json:"response_timeout,omitempty"`

	// Lets workers from beyond this machine join without a token or a
	// client certificate. Without it such a pool is a config error.
	AllowUnauthenticated bool `json:"allow_unauthenticated,omitempty"`

	tokens [][]byte
}

// PoolTLS configures TLS on a pool's worker listener.
type PoolTLS struct {
	// Names to serve certificates for; Caddy's tls app obtains and renews
	// them (automatic HTTPS, or the internal CA with `local_certs`). The
	// first is assumed when a worker sends no SNI.
	Hostnames []string `json:"hostnames,omitempty"`

	// Client certificate authentication: mutual TLS for workers.
	ClientAuth *caddytls.ClientAuthentication `json:"client_authentication,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "reverse_http",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision validates the pools and takes (or creates) their run-time state.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.stopOnce = new(sync.Once)
	a.pools = make(map[string]*Pool, len(a.Pools))
	repl := caddy.NewReplacer()
	for name, pc := range a.Pools {
		if err := pc.provision(name, repl); err != nil {
			return err
		}
		val, _, err := pools.LoadOrNew(name, func() (caddy.Destructor, error) {
			return newPool(name), nil
		})
		if err != nil {
			return err
		}
		a.pools[name] = val.(*Pool)
	}
	var err error
	a.listeners, err = a.planListeners(ctx)
	if err != nil {
		return err
	}

	// The http app may stop first and wait for every running handler; the
	// requests that only wait in a queue should get their 503 at once.
	if evApp, err := ctx.App("events"); err == nil {
		if ev, ok := evApp.(*caddyevents.App); ok {
			_ = ev.On("stopping", stoppingHandler{a})
		}
	}
	return nil
}

func (pc *PoolConfig) provision(name string, repl *caddy.Replacer) error {
	if err := pc.validate(name); err != nil {
		return err
	}
	if pc.Protocol == "" {
		pc.Protocol = ProtocolPTTH
	}
	if pc.MaxQueue == 0 {
		pc.MaxQueue = DefaultMaxQueue
	}
	if pc.QueueTimeout <= 0 {
		pc.QueueTimeout = caddy.Duration(DefaultQueueTimeout)
	}
	if pc.HandshakeTimeout <= 0 {
		pc.HandshakeTimeout = caddy.Duration(DefaultHandshakeTimeout)
	}
	pc.tokens = pc.tokens[:0]
	for _, t := range pc.Tokens {
		t = repl.ReplaceAll(t, "")
		if t == "" {
			return fmt.Errorf("pool %s: a token is empty (an unset environment variable?)", name)
		}
		pc.tokens = append(pc.tokens, []byte(t))
	}
	return nil
}

// validate checks what can be checked without loading the config, so that
// the Caddyfile adapter reports it with the line.
func (pc *PoolConfig) validate(name string) error {
	if name == "" || strings.ContainsAny(name, "/ \t") {
		return fmt.Errorf("pool %q: a pool name must be non-empty and contain no slash or space", name)
	}
	if len(pc.Listen) == 0 {
		return fmt.Errorf("pool %s: listen is required", name)
	}
	switch pc.Protocol {
	case "", ProtocolPTTH, ProtocolPOTHEAD:
	default:
		return fmt.Errorf("pool %s: unknown protocol %q (want ptth or pothead)", name, pc.Protocol)
	}
	if pc.Protocol == ProtocolPOTHEAD && len(pc.Tokens) > 0 {
		return fmt.Errorf("pool %s: tokens need protocol ptth: POTHEAD workers cannot send one", name)
	}
	if pc.MaxQueue < 0 {
		return fmt.Errorf("pool %s: max_queue must not be negative", name)
	}
	return pc.checkSecure(name)
}

// checkSecure refuses a pool that workers from beyond this machine could
// join with no credentials at all.
func (pc *PoolConfig) checkSecure(name string) error {
	if pc.AllowUnauthenticated || len(pc.Tokens) > 0 || pc.requiresClientCert() {
		return nil
	}
	for _, l := range pc.Listen {
		na, err := caddy.ParseNetworkAddress(l)
		if err != nil {
			return fmt.Errorf("pool %s: listen %s: %v", name, l, err)
		}
		if !isLoopback(na) {
			return fmt.Errorf("pool %s: listen %s accepts workers from other machines, but the pool requires neither a token nor a client certificate; add a token, tls client_auth, a loopback address, or allow_unauthenticated", name, l)
		}
	}
	return nil
}

func (pc *PoolConfig) requiresClientCert() bool {
	if pc.TLS == nil || pc.TLS.ClientAuth == nil {
		return false
	}
	switch pc.TLS.ClientAuth.Mode {
	case "request", "verify_if_given":
		return false
	}
	return true
}

func isLoopback(na caddy.NetworkAddress) bool {
	if na.IsUnixNetwork() || na.IsFdNetwork() || na.Host == "localhost" {
		return true
	}
	ip := net.ParseIP(na.Host)
	return ip != nil && ip.IsLoopback()
}

// Start applies each pool's limits to its live state and opens the worker
// listeners. It does not block.
func (a *App) Start() error {
	for name, pc := range a.Pools {
		a.pools[name].configure(pc.MaxQueue, time.Duration(pc.QueueTimeout), time.Duration(pc.ResponseTimeout),
			a.logger.With(zap.String("pool", name)))
	}
	if tlsNames := a.tlsHostnames(); len(tlsNames) > 0 {
		tlsApp, err := a.ctx.App("tls")
		if err != nil {
			return err
		}
		if err := tlsApp.(*caddytls.TLS).Manage(tlsNames); err != nil {
			return fmt.Errorf("managing worker listener certificates: %v", err)
		}
	}
	for i, wl := range a.listeners {
		if err := wl.start(a.ctx); err != nil {
			for _, started := range a.listeners[:i] {
				started.stop()
			}
			return err
		}
	}
	return nil
}

func (a *App) tlsHostnames() map[string]struct{} {
	names := make(map[string]struct{})
	for _, pc := range a.Pools {
		if pc.TLS != nil {
			for _, h := range pc.TLS.Hostnames {
				names[h] = struct{}{}
			}
		}
	}
	return names
}

// Stop closes the worker listeners. A pool that no newer config uses stops
// taking requests: its queue gets 503 and its idle workers are let go, while
// running jobs finish within Caddy's grace period.
func (a *App) Stop() error {
	for _, wl := range a.listeners {
		wl.stop()
	}
	a.drainUnusedPools()
	return nil
}

func (a *App) drainUnusedPools() {
	a.stopOnce.Do(func() {
		for name, p := range a.pools {
			if refs, _ := pools.References(name); refs <= 1 {
				a.logger.Info("pool draining", zap.String("pool", name))
				p.drain()
			}
		}
	})
}

// Cleanup releases this config's hold on its pools; the last one out
// destroys a pool.
func (a *App) Cleanup() error {
	for name := range a.pools {
		if _, err := pools.Delete(name); err != nil {
			return err
		}
	}
	return nil
}

// stoppingHandler drains unused pools when Caddy announces it is stopping
// a config, before any app's Stop runs.
type stoppingHandler struct{ app *App }

func (h stoppingHandler) Handle(context.Context, caddy.Event) error {
	h.app.drainUnusedPools()
	return nil
}

// Handler is the `reverse_http` HTTP handler: it queues each request in a
// pool and proxies it to the first worker connection that is free.
type Handler struct {
	// The pool to queue requests in; it must be defined in the
	// `reverse_http` app.
	Pool string `json:"pool,omitempty"`

	// Overrides the pool's queue timeout for this route.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

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
	h.proxy = &httputil.ReverseProxy{
		Rewrite:       rewrite,
		Transport:     transport{},
		FlushInterval: -1,
		BufferPool:    bufferPool{},
		ErrorLog:      zap.NewStdLog(h.logger),
		ModifyResponse: func(resp *http.Response) error {
			// The worker's Server header replaces Caddy's, as with reverse_proxy.
			if _, ok := resp.Header["Server"]; ok {
				resp.Request.Context().Value(jobCtxKey{}).(*job).w.Header().Del("Server")
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			r.Context().Value(jobCtxKey{}).(*job).err = err
		},
	}
	return nil
}

// ServeHTTP queues r in the pool and proxies it to a worker.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
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

	queueTimeout := time.Duration(h.QueueTimeout)
	if queueTimeout == 0 {
		h.pool.mu.Lock()
		queueTimeout = h.pool.queueTimeout
		h.pool.mu.Unlock()
	}
	j := &job{pool: h.pool, deadline: time.Now().Add(queueTimeout), w: w}
	// Wait for a worker here, before the proxy copies the request: a
	// waiting request then holds as little memory as it can, a shallower
	// goroutine stack included, which counts with thousands waiting.
	j.conn, j.err = h.pool.acquire(r.Context(), j.deadline, false)
	if j.err == nil {
		h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), jobCtxKey{}, j)))
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
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	} else if r.ProtoMajor == 1 && r.ContentLength != 0 {
		// The job's body writer may still be blocked reading the upload;
		// closing the connection spares net/http draining the rest of the
		// body (which would wait on that read) before it answers.
		w.Header().Set("Connection", "close")
	}
	if c := h.logger.Check(zap.DebugLevel, "request failed"); c != nil {
		c.Write(zap.String("pool", h.Pool), zap.String("request_id", id), zap.Int("status", status), zap.Error(j.err))
	}
	return caddyhttp.Error(status, j.err)
}

// retryAfterSeconds is what a 503 advises a consumer to wait.
const retryAfterSeconds = 1

// errorStatus maps why a request got no response from a worker to the
// status the consumer sees.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, errQueueFull), errors.Is(err, errQueueTimeout), errors.Is(err, errPoolClosed):
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

// bufferPool recycles the buffers that copy response bodies.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// Interface guards
var (
	_ caddy.App                   = (*App)(nil)
	_ caddy.Provisioner           = (*App)(nil)
	_ caddy.CleanerUpper          = (*App)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Destructor            = (*Pool)(nil)
)
