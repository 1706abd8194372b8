// Package reversehttp is a Caddy app and HTTP handler that load-balance
// expensive, non-concurrent jobs by reverse HTTP: workers dial in to Caddy
// and hold one connection per free slot; the handler queues each request
// in a named pool and hands the oldest one to whichever connection is idle.
package reversehttp

import (
	"context"
	"fmt"
	"net"
	"strings"
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

// Defaults for values a pool config leaves out.
const (
	DefaultMaxQueue         = 1000
	DefaultQueueTimeout     = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// As with reverse_proxy (net/http's Transport).
	DefaultMaxResponseHeader = 10 << 20
	DefaultMaxAttempts       = 5
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

// limits returns the pool limits pc sets.
func (pc *PoolConfig) limits() poolLimits {
	return poolLimits{
		maxQueue:          pc.MaxQueue,
		queueTimeout:      time.Duration(pc.QueueTimeout),
		respTimeout:       time.Duration(pc.ResponseTimeout),
		maxResponseHeader: DefaultMaxResponseHeader,
		maxAttempts:       DefaultMaxAttempts,
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
		a.pools[name].configure(pc.limits(),
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

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*Pool)(nil)
)
