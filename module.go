// Package reversehttp is a Caddy app and HTTP handler that load-balance
// expensive, non-concurrent jobs by reverse HTTP: workers dial in to Caddy
// and hold one connection per free slot; the handler queues each request
// in a named pool and hands the oldest one to whichever connection is idle.
package reversehttp

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/reversehttp/reverse_http/worker"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// pools holds every pool by name across config loads: idle worker
// connections and queued requests survive reloads.
var pools = caddy.NewUsagePool()

// listening counts, by address, the configs whose worker listeners serve
// it, so that a reload can tell a listener it opens from one that was
// already open (Caddy reuses the socket).
var listening = caddy.NewUsagePool()

// Defaults for values a pool config leaves out.
const (
	DefaultMaxQueue         = 1000
	DefaultQueueTimeout     = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// As with reverse_proxy (net/http's Transport).
	DefaultMaxResponseHeader = 10 << 20
	DefaultMaxAttempts       = 5
	DefaultMaxHandshakes     = 500
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
	// onStarted says that the events app will announce when this config
	// has started, which is when its limits apply to the live pools.
	onStarted bool
	claimed   []string // addresses claimed in listening
	events    *caddyevents.App
	sampling  chan struct{} // closed by Stop: the pools' history is no longer sampled
}

// PoolConfig configures one pool.
type PoolConfig struct {
	// Network addresses the pool's workers dial, in Caddy's network address
	// syntax (e.g. `:4040`, `127.0.0.1:4040`, `unix//run/w.sock`). Required.
	// Several ptth pools may share an address; the handshake's target picks
	// the pool. An address may not be one an http server listens on.
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

	// How long a request may wait before it goes ahead of every priority
	// class and fair_by key (oldest first), so that none starves behind
	// them. Only routes with priority or fair_by make it matter. Default:
	// half the queue timeout.
	PriorityAging caddy.Duration `json:"priority_aging,omitempty"`

	// The longest a worker may take to complete its handshake (and TLS
	// handshake). Default: 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	// The longest a worker may take to begin its response once it has the
	// job; past it the job's connection is closed and the consumer gets
	// 504. Default: no limit, as jobs are expected to be long.
	ResponseTimeout caddy.Duration `json:"response_timeout,omitempty"`

	// The largest response head (status line and headers) a worker may
	// send, in bytes; a larger one fails its job with 502. Default: 10 MiB,
	// as reverse_proxy's.
	MaxResponseHeader int64 `json:"max_response_header,omitempty"`

	// How many workers a request may be offered to, declines and replays
	// included, before it gets 503. Default: 5.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// The most handshakes (TLS included) that may be in progress at once
	// on each of the pool's listen addresses; a connection beyond them is
	// closed at once. Pools sharing an address must agree on it. Default:
	// 500.
	MaxHandshakes int `json:"max_handshakes,omitempty"`

	// Lets workers from beyond this machine join without a token or a
	// client certificate. Without it such a pool is a config error.
	AllowUnauthenticated bool `json:"allow_unauthenticated,omitempty"`

	// What the pool's Prometheus metrics include beyond the per-pool
	// series.
	Metrics *PoolMetrics `json:"metrics,omitempty"`

	tokens [][]byte
	// The provisioned TLS config of the pool's listeners, and that of its
	// connection policy, which says how client certificates are checked.
	tlsServer *tls.Config
	tlsPolicy *tls.Config
}

// PoolMetrics configures a pool's metrics.
type PoolMetrics struct {
	// Adds series per worker (name@host): its connections by state, the
	// requests it answered and failed. Each worker adds four series; with
	// many workers, or names that change, that is many series.
	PerWorker bool `json:"per_worker,omitempty"`
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
	a.sampling = make(chan struct{})
	// The pools exist before anything below may provision the http app,
	// whose handlers look their pool up in this app.
	a.pools = make(map[string]*Pool, len(a.Pools))
	repl := caddy.NewReplacer()
	for _, name := range sortedKeys(a.Pools) {
		pc := a.Pools[name]
		if err := pc.provision(name, repl); err != nil {
			return err
		}
		val, _, err := pools.LoadOrNew(name, func() (caddy.Destructor, error) {
			// A new pool has its limits at once: the http app may send
			// it requests before this config has started.
			p := newPool(name)
			p.configure(pc.limits(), a.poolLogger(name))
			p.obs.setView(pc, nil, ctx)
			return p, nil
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
	if err := a.checkSiteAddresses(ctx); err != nil {
		return err
	}

	if evApp, err := ctx.App("events"); err == nil {
		if ev, ok := evApp.(*caddyevents.App); ok {
			// The http app may stop first and wait for every running
			// handler; the requests that only wait in a queue should get
			// their 503 at once.
			_ = ev.On("stopping", stoppingHandler{a})
			a.onStarted = ev.On("started", startedHandler{a}) == nil
			a.events = ev
		}
	}
	return a.registerMetrics(ctx.GetMetricsRegistry())
}

func (a *App) poolLogger(name string) *zap.Logger {
	return a.logger.With(zap.String("pool", name))
}

// limits returns the pool limits pc sets.
func (pc *PoolConfig) limits() poolLimits {
	return poolLimits{
		maxQueue:          pc.MaxQueue,
		queueTimeout:      time.Duration(pc.QueueTimeout),
		respTimeout:       time.Duration(pc.ResponseTimeout),
		maxResponseHeader: pc.MaxResponseHeader,
		maxAttempts:       pc.MaxAttempts,
		aging:             time.Duration(pc.PriorityAging),
		admits:            pc.admits,
	}
}

func (pc *PoolConfig) provision(name string, repl *caddy.Replacer) error {
	if err := pc.validate(name); err != nil {
		return err
	}
	if pc.Protocol == "" {
		pc.Protocol = worker.ProtocolPTTH
	}
	if pc.MaxQueue == 0 {
		pc.MaxQueue = DefaultMaxQueue
	}
	if pc.QueueTimeout <= 0 {
		pc.QueueTimeout = caddy.Duration(DefaultQueueTimeout)
	}
	if pc.PriorityAging <= 0 {
		pc.PriorityAging = pc.QueueTimeout / 2
	}
	if pc.HandshakeTimeout <= 0 {
		pc.HandshakeTimeout = caddy.Duration(DefaultHandshakeTimeout)
	}
	if pc.MaxResponseHeader == 0 {
		pc.MaxResponseHeader = DefaultMaxResponseHeader
	}
	if pc.MaxAttempts == 0 {
		pc.MaxAttempts = DefaultMaxAttempts
	}
	if pc.MaxHandshakes == 0 {
		pc.MaxHandshakes = DefaultMaxHandshakes
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
	if !validPoolName(name) {
		return fmt.Errorf("pool %q: a pool name must be non-empty and contain only letters, digits, '-', '_' and '.', which a handshake's target carries unescaped", name)
	}
	if len(pc.Listen) == 0 {
		return fmt.Errorf("pool %s: listen is required", name)
	}
	switch pc.Protocol {
	case "", worker.ProtocolPTTH, worker.ProtocolPothead:
	default:
		return fmt.Errorf("pool %s: unknown protocol %q (want ptth or pothead)", name, pc.Protocol)
	}
	if pc.Protocol == worker.ProtocolPothead && len(pc.Tokens) > 0 {
		return fmt.Errorf("pool %s: tokens need protocol ptth: POTHEAD workers cannot send one", name)
	}
	if pc.MaxQueue < 0 {
		return fmt.Errorf("pool %s: max_queue must not be negative", name)
	}
	if pc.MaxResponseHeader < 0 {
		return fmt.Errorf("pool %s: max_response_header must not be negative", name)
	}
	if pc.MaxAttempts < 0 {
		return fmt.Errorf("pool %s: max_attempts must not be negative", name)
	}
	if pc.MaxHandshakes < 0 {
		return fmt.Errorf("pool %s: max_handshakes must not be negative", name)
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

// validPoolName reports whether name is a pool name: letters, digits, '-',
// '_' and '.', none of which a URL path escapes.
func validPoolName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9',
			r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

// requiresClientCert reports whether pc's client authentication admits only
// workers whose certificate is checked against trust the config names: a
// mode that requires a certificate, and a CA pool (trust_pool, or the older
// trusted_ca_cert(s) and trusted_ca_cert_file) that verifies it, or pinned
// leaf certificates (trusted_leaf_cert, the leaf verifier). Mode `require`
// checks no chain, so only pinned leaves make it count; with no CA pool,
// `require_and_verify` would verify against the system's roots, which any
// public CA's customer passes, so it does not count either. An empty
// client_auth block turns client authentication off.
func (pc *PoolConfig) requiresClientCert() bool {
	if pc.TLS == nil || pc.TLS.ClientAuth == nil {
		return false
	}
	ca := pc.TLS.ClientAuth
	caPool := len(ca.CARaw) > 0 || len(ca.TrustedCACerts) > 0 || len(ca.TrustedCACertPEMFiles) > 0
	pinned := len(ca.TrustedLeafCerts) > 0 || hasLeafVerifier(ca.VerifiersRaw)
	switch ca.Mode {
	case "", "require_and_verify":
		// Mode "" is require_and_verify with trust configured, else require.
		return caPool || pinned
	case "require":
		return pinned
	}
	return false
}

// hasLeafVerifier reports whether verifiers include Caddy's leaf verifier,
// which refuses every certificate it was not given.
func hasLeafVerifier(verifiers []json.RawMessage) bool {
	for _, raw := range verifiers {
		var v struct {
			Verifier string `json:"verifier"`
		}
		if json.Unmarshal(raw, &v) == nil && v.Verifier == "leaf" {
			return true
		}
	}
	return false
}

func isLoopback(na caddy.NetworkAddress) bool {
	if na.IsUnixNetwork() || na.IsFdNetwork() || na.Host == "localhost" {
		return true
	}
	ip := net.ParseIP(na.Host)
	return ip != nil && ip.IsLoopback()
}

// Start opens the worker listeners. It does not block. The config's
// limits apply to pools it shares with the running config only once it has
// started as a whole (see applyToPools): a config that fails to start
// leaves the running one as it was.
func (a *App) Start() error {
	if !a.onStarted {
		a.applyToPools()
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
		if err := wl.start(a.ctx, a.claim(wl.addr.String())); err != nil {
			for _, started := range a.listeners[:i] {
				started.stop()
			}
			return err
		}
	}
	a.startSampling()
	return nil
}

// claim records that this config serves addr, and reports whether the
// running config served it already: a listener it keeps across a reload.
func (a *App) claim(addr string) (kept bool) {
	_, kept = listening.LoadOrStore(addr, struct{}{})
	a.claimed = append(a.claimed, addr)
	return kept
}

// applyToPools makes this config's limits those of its pools, and closes
// the connections it would not admit: their credential was withdrawn, or
// their pool's protocol or TLS changed. A running job finishes first.
func (a *App) applyToPools() {
	for _, name := range sortedKeys(a.Pools) {
		a.pools[name].configure(a.Pools[name].limits(), a.poolLogger(name))
		a.pools[name].obs.setView(a.Pools[name], a.events, a.ctx)
	}
	a.retireRevoked()
}

// retireRevoked closes the connections of this config's pools that it
// would not admit.
func (a *App) retireRevoked() {
	for _, name := range sortedKeys(a.Pools) {
		pc := a.Pools[name]
		retire := func(c *workerConn) bool {
			if pc.admits(c.info.admission) {
				return false
			}
			c.leaving(errRetired)
			return true
		}
		if n := a.pools[name].retireIf(retire); n > 0 {
			a.logger.Info("closing worker connections the config no longer admits",
				zap.String("pool", name), zap.Int("connections", n))
		}
	}
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
	close(a.sampling)
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
	for _, addr := range a.claimed {
		_, _ = listening.Delete(addr)
	}
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
	for _, wl := range h.app.listeners {
		wl.closeAdmission()
	}
	h.app.drainUnusedPools()
	return nil
}

// startedHandler applies the config to its pools once Caddy announces
// that all of the config's apps have started.
type startedHandler struct{ app *App }

func (h startedHandler) Handle(context.Context, caddy.Event) error {
	h.app.applyToPools()
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*Pool)(nil)
)
