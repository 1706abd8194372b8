// Package worker is the worker side of reverse HTTP.
//
// A worker dials in to a hub and offers it connections ("slots"). On each
// connection the roles of HTTP are reversed: after a short handshake the hub
// is the HTTP/1.1 client and the worker is the server. The hub sends one
// request (a job) at a time per connection, with keep-alive, so a worker runs
// at most as many jobs at once as it holds connections.
//
// The package serves any [http.Handler] over hub connections. It runs a
// standard [http.Server] on a [net.Listener] whose Accept dials the hub, so
// net/http does all of the HTTP work: 100-continue, chunking, keep-alive, and
// cancelling a handler's context when the hub closes the connection.
//
// # Accepting and declining jobs
//
// A job that the hub sends with "Expect: 100-continue", on a connection
// where both sides agreed on the "accept" feature in the handshake, is
// accepted with "100 Continue": from that moment the job may have run, and
// the hub never gives it to another worker. Before it, the worker may
// decline the job ([Decline]), and a connection that ends cleanly tells the
// hub that the job never started, so that it can run elsewhere.
//
// By default the Worker accepts each such job right before it calls the
// Handler, so the point is honest whatever the Handler does. A Handler that
// needs a later point (it wants to secure a resource first, or to decline
// some jobs) is wrapped with [AcceptLater] and calls [Accept] itself, or
// [Decline]. The [Forwarder] accepts once it holds a connection to its
// upstream and declines when the upstream cannot be reached. On
// connections without the feature (an older hub, or the pothead protocol)
// nothing changes: net/http answers "100 Continue" when the Handler first
// reads the body.
//
// # Several hubs, readiness and gates
//
// A Worker may serve several hubs ([Config.Hubs]; a host name with several
// addresses counts as one hub per address, resolved again every
// [Config.ResolveInterval]). It holds Slots connections to each address
// and runs at most Slots jobs in all. With hubs that agree on the "ready"
// feature it offers each free slot with a readiness frame, to one hub
// first and then, unused, to all of them, and takes an offer back when the
// slot is taken or a gate ([Config.Gate]) closes, without closing the
// connection; a job that arrives when no slot is free is declined before
// it is accepted (see offers.go for the policy and the README for the
// wire format).
//
// # Health
//
// A Worker whose [Config.Health] (or its Handler's, as a Forwarder's) is
// down holds no connections to the hub: it closes its idle ones and does
// not redial until a probe succeeds. So a worker that cannot do its jobs
// does not take them.
//
// # Out-of-band responses
//
// With [Config.Redirect] a job's 200 response does not go through the
// hub: the hub gets "303 See Other" to a one-time, signed, expiring URL on
// a listener of the worker's, and the consumer that follows it gets the
// body from there, streamed from the job, which keeps its slot until the
// transfer ends or the key expires (see redirect.go).
//
// # Errors at start-up
//
// Until a first handshake has succeeded, mistakes that retrying cannot heal
// end [Worker.Run]: a rejected handshake ([HandshakeError]) and TLS
// settings that do not fit the hub's ([SetupError]). Everything else, and
// everything after a first success, is logged and retried with backoff.
//
// Only the standard library is used, so a worker binary stays small.
package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultDrainTimeout is used when [Config.DrainTimeout] is zero.
const DefaultDrainTimeout = 30 * time.Second

// Config describes a worker. Hub (or Hubs) and Handler are required, and
// so is Pool with the ptth protocol.
type Config struct {
	// Hub is host:port of the hub's worker listener.
	Hub string
	// Hubs are more hubs (host:port each) to serve, beside Hub: the worker
	// holds connections to all of them and takes jobs from any. A host
	// name that resolves to several addresses counts as one hub per
	// address.
	Hubs []string
	// ResolveInterval is how often host names in Hub and Hubs are
	// resolved again: addresses that appear are joined, and those that
	// vanish are left once their connections are idle. Zero means
	// DefaultResolveInterval.
	ResolveInterval time.Duration
	// LookupHost resolves hub host names to addresses. Nil means
	// net.DefaultResolver.LookupHost.
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// Pool is the pool to join; it is path-escaped into the handshake
	// request target ("GET /<pool>"). Unused with the pothead protocol.
	Pool string
	// Token, if set, is sent as "Authorization: Bearer <token>".
	Token string
	// Name is sent in the Reverse-Http-Worker handshake header. Empty means
	// the host name; "-" sends no header.
	Name string
	// Slots is how many jobs the worker runs at once, across all hubs.
	// It holds that many connections to each hub address, so that any
	// hub may have all of its slots. Zero means 1.
	Slots int
	// Gate, if not nil, says whether the worker may take one more job
	// now: nil means yes, an error why not. While a slot is free the
	// Worker asks it every GateInterval, offers the hubs at most one
	// slot at a time while it says yes, and withdraws the offer when it
	// says no; after a job takes the slot, the next offer waits for its
	// next answer. Its context carries a timeout of GateInterval or 1 s,
	// whichever is longer. See [AllGates], [NewCPUGate],
	// [NewMemoryGate] and [NewURLGate].
	Gate func(ctx context.Context) error
	// GateInterval is how often Gate is asked. Zero means
	// DefaultGateInterval.
	GateInterval time.Duration
	// Protocol is ProtocolPTTH (the default when empty) or ProtocolPothead.
	Protocol string
	// TLS, if not nil, makes the worker dial with TLS. An empty ServerName
	// is taken from the host part of Hub.
	TLS *tls.Config
	// DrainTimeout bounds how long running jobs may take to finish once
	// the context given to Run is done. Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Handler serves the jobs. The Worker accepts each job (see [Accept])
	// right before it calls Handler, unless Handler comes from
	// [AcceptLater] or is a [Forwarder].
	Handler http.Handler
	// Health, if not nil, is what Handler depends on: while it is down the
	// Worker holds no connections to the hub. Nil means the Handler's own,
	// if it has a method Health() *Health (as a [Forwarder] does).
	Health *Health
	// Logger receives the worker's logs. Nil means slog.Default().
	Logger *slog.Logger
	// Redirect, if not nil, sends successful responses out of band: the
	// hub gets "303 See Other" to a one-time URL on a listener of the
	// worker's, and the consumer that follows it gets the body from
	// there. The job's slot stays taken until that transfer ends or its
	// key expires. See [Redirect].
	Redirect *Redirect
	// Observer, if not nil, is told of every job and of every attempt to
	// connect to a hub, for metrics (see [Observer]). With an Observer
	// the Handler's ResponseWriter and request body are wrappers that
	// count bytes: reach the server's through http.ResponseController,
	// as with any middleware.
	Observer Observer
}

// HandshakeError is returned by Run when the hub rejects the very first
// handshake attempt with 400, 401, 403 or 404, which usually means a
// configuration error (bad token, unknown pool) that retrying cannot fix.
// Rejections after a handshake has once succeeded are logged and retried.
type HandshakeError struct {
	Status int    // HTTP status code of the hub's answer
	Reason string // the hub's text/plain reason, trimmed; may be empty
}

func (e *HandshakeError) Error() string {
	msg := fmt.Sprintf("hub rejected the handshake: %d %s", e.Status, http.StatusText(e.Status))
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// fatalStatus reports whether a rejection with this status ends Run when no
// handshake has succeeded yet.
func fatalStatus(code int) bool {
	switch code {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// Worker serves a Handler over connections to a hub. Create it with New; a
// Worker runs once.
type Worker struct {
	cfg        Config
	log        *slog.Logger
	health     *Health // nil: the Handler cannot be unhealthy
	lateAccept bool    // the Handler accepts its jobs itself
	hubs       []*hub
	offers     *offers
	tracker    *connTracker
	redirect   *redirector // nil: responses go through the hub

	connected     atomic.Int64 // handshaken connections not yet closed
	everConnected atomic.Bool  // a handshake has succeeded at least once
	stopping      atomic.Bool  // draining: slots do not redial
	ran           atomic.Bool
}

// Run is shorthand for New followed by [Worker.Run].
func Run(ctx context.Context, cfg Config) error {
	w, err := New(cfg)
	if err != nil {
		return err
	}
	return w.Run(ctx)
}

// New checks cfg, fills in defaults and returns a Worker ready to Run.
func New(cfg Config) (*Worker, error) {
	var hubs []*hub
	seen := make(map[string]bool)
	for _, s := range append([]string{cfg.Hub}, cfg.Hubs...) {
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		h, err := parseHub(s)
		if err != nil {
			return nil, err
		}
		hubs = append(hubs, h)
	}
	if len(hubs) == 0 {
		return nil, errors.New("worker: no hub address")
	}
	if cfg.ResolveInterval < 0 || cfg.GateInterval < 0 {
		return nil, errors.New("worker: negative resolve or gate interval")
	}
	if cfg.ResolveInterval == 0 {
		cfg.ResolveInterval = DefaultResolveInterval
	}
	if cfg.GateInterval == 0 {
		cfg.GateInterval = DefaultGateInterval
	}
	if cfg.LookupHost == nil {
		cfg.LookupHost = net.DefaultResolver.LookupHost
	}
	if cfg.Handler == nil {
		return nil, errors.New("worker: no handler")
	}
	switch cfg.Protocol {
	case "":
		cfg.Protocol = ProtocolPTTH
	case ProtocolPTTH, ProtocolPothead:
	default:
		return nil, fmt.Errorf("worker: unknown protocol %q (want %q or %q)", cfg.Protocol, ProtocolPTTH, ProtocolPothead)
	}
	if cfg.Protocol == ProtocolPTTH && cfg.Pool == "" {
		return nil, errors.New("worker: no pool name")
	}
	if cfg.Slots < 0 {
		return nil, fmt.Errorf("worker: negative slot count %d", cfg.Slots)
	}
	if cfg.Slots == 0 {
		cfg.Slots = 1
	}
	if cfg.DrainTimeout < 0 {
		return nil, fmt.Errorf("worker: negative drain timeout %v", cfg.DrainTimeout)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	switch cfg.Name {
	case "":
		cfg.Name, _ = os.Hostname()
	case "-":
		cfg.Name = ""
	}
	if !validHeaderValue(cfg.Token) {
		return nil, errors.New("worker: token contains characters not allowed in a header")
	}
	if !validHeaderValue(cfg.Name) {
		return nil, errors.New("worker: name contains characters not allowed in a header")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Worker{cfg: cfg, log: cfg.Logger, health: cfg.Health, hubs: hubs}
	if cfg.Redirect != nil {
		rd, err := newRedirector(*cfg.Redirect, cfg.Logger)
		if err != nil {
			return nil, err
		}
		w.redirect = rd
	}
	w.offers = newOffers(w, cfg.Slots, cfg.Gate != nil)
	if w.health == nil {
		if hh, ok := cfg.Handler.(interface{ Health() *Health }); ok {
			w.health = hh.Health()
		}
	}
	_, w.lateAccept = cfg.Handler.(selfAccepting)
	return w, nil
}

// validHeaderValue rejects control characters (CR, LF in particular), which
// would let a value break out of its header line.
func validHeaderValue(v string) bool {
	return !strings.ContainsFunc(v, func(r rune) bool {
		return (r < ' ' && r != '\t') || r == 0x7f
	})
}

// Connected returns how many handshaken connections the worker holds right
// now, idle or busy.
func (w *Worker) Connected() int { return int(w.connected.Load()) }

// Run holds Slots connections to every hub address and serves jobs on them,
// at most Slots at once, until ctx is done. Then it drains: it stops
// dialling, closes idle connections at once, lets running jobs finish for
// up to DrainTimeout (their responses carry "Connection: close"), closes
// whatever is left, and returns nil.
//
// Failures to connect are logged and retried with exponential backoff,
// one attempt at a time per hub address.
// Until a first handshake succeeds, a mistake that retrying cannot heal ends
// Run at once: a rejection with 400, 401, 403 or 404 returns a
// *HandshakeError, and a TLS setting that does not fit the hub's returns a
// *SetupError. With Config.Redirect it listens for consumers first, and
// returns the error if it cannot.
func (w *Worker) Run(ctx context.Context) error {
	if !w.ran.CompareAndSwap(false, true) {
		return errors.New("worker: Run called twice")
	}
	if w.redirect != nil {
		if err := w.redirect.start(); err != nil {
			return err
		}
	}
	l := newHubListener(w)
	t := &connTracker{conns: make(map[net.Conn]http.ConnState), health: w.health}
	t.closed = sync.NewCond(&t.mu)
	w.tracker = t
	srv := &http.Server{
		Handler:   http.HandlerFunc(w.serveJob),
		ConnState: t.hook,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, hubConnKey{}, c)
		},
		ErrorLog: slog.NewLogLogger(w.log.Handler(), slog.LevelWarn),
		// No ReadTimeout, ReadHeaderTimeout or IdleTimeout: a worker waits
		// for jobs as long as the hub likes.
	}
	srv.SetKeepAlivesEnabled(true)

	fatal := make(chan error, 1)
	var slots sync.WaitGroup
	hs := &hubSet{w: w, l: l, hubs: w.hubs, lookup: w.cfg.LookupHost, interval: w.cfg.ResolveInterval,
		fatal: fatal, slots: &slots, eps: make(map[string]*endpoint)}
	slots.Go(hs.run)
	if w.health != nil {
		slots.Go(func() { w.watchHealth(l.ctx, t) })
	}
	if w.cfg.Gate != nil {
		slots.Go(func() { w.pollGate(l.ctx) })
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	var runErr error
	select {
	case <-ctx.Done():
		w.log.Info("draining", "hub", w.hubNames(), "pool", w.cfg.Pool,
			"connected", w.Connected(), "busy", t.count(http.StateActive),
			"drain_timeout", w.cfg.DrainTimeout)
	case runErr = <-fatal:
	case err := <-served:
		// Serve only returns early on an unexpected Accept error.
		served <- err
		runErr = fmt.Errorf("worker: serving: %w", err)
	}

	// Order matters. Responses written from now on carry "Connection:
	// close". Once draining is set, a connection that becomes new or idle
	// is closed (retired) by the ConnState hook. Then dialling stops, and
	// once the server has taken its last connection, the connections that
	// were already new or idle are retired.
	//
	// Server.Shutdown is not used: it drops a request read after it began,
	// and a job the hub wrote on a connection just before it read the
	// connection's withdrawn offer must get its response. So the drain
	// waits for every connection to close (retired ones when their grace
	// ends or their job has been served; busy ones after their response).
	w.stopping.Store(true) // no slot redials from here on
	srv.SetKeepAlivesEnabled(false)
	t.setDraining()
	l.Close()
	<-served // Accept fails at once from here on, and Serve returns
	t.retireIdle(nil)
	// Jobs whose responses wait for their consumers count as running: the
	// out-of-band listener serves until they have ended.
	dctx, cancel := context.WithTimeout(context.Background(), w.cfg.DrainTimeout)
	var err error
	if !t.waitClosed(dctx) {
		err = dctx.Err()
		w.log.Warn("drain timeout: closing running jobs",
			"drain_timeout", w.cfg.DrainTimeout, "busy", t.count(http.StateActive))
	}
	srv.Close()
	if w.redirect != nil {
		w.redirect.stop(dctx, err != nil)
	}
	cancel()
	slots.Wait()
	if runErr == nil {
		w.log.Info("drained", "hub", w.hubNames(), "pool", w.cfg.Pool)
	}
	return runErr
}

// connTracker follows the state of every connection the server holds, so
// that a drain, or a Health gone down, can close new and idle ones straight
// away. (Server.Shutdown alone treats a connection in StateNew as idle only
// after five seconds.)
type connTracker struct {
	mu       sync.Mutex
	conns    map[net.Conn]http.ConnState
	draining bool
	health   *Health // may be nil
	// closed is signalled (under mu) each time a connection leaves conns.
	closed *sync.Cond
}

// waitClosed waits until the server holds no connection, or ctx is done;
// it reports whether none is left.
func (t *connTracker) waitClosed(ctx context.Context) bool {
	stop := context.AfterFunc(ctx, func() {
		t.mu.Lock()
		t.closed.Broadcast()
		t.mu.Unlock()
	})
	defer stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.conns) > 0 && ctx.Err() == nil {
		t.closed.Wait()
	}
	return len(t.conns) == 0
}

func (t *connTracker) hook(c net.Conn, s http.ConnState) {
	hc, _ := c.(*hubConn)
	if hc != nil && s == http.StateActive {
		hc.jobs.Add(1)
	}
	t.mu.Lock()
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
		t.closed.Broadcast()
	default:
		t.conns[c] = s
	}
	closeNow := (s == http.StateNew || s == http.StateIdle) && t.unwantedLocked(hc)
	t.mu.Unlock()
	switch {
	case closeNow:
		// Not offered since the server took it or since its response
		// was written (both leave a connection not ready): no job can
		// be on its way.
		c.Close()
	case hc != nil && (s == http.StateNew || s == http.StateIdle):
		// The server has taken the connection, or the response has
		// been written: the connection may be offered (again).
		hc.becomeIdle()
		// A drain, a Health gone down or a hub address left since
		// closeNow was taken would have passed c over while it was
		// not yet idle (retire leaves such a connection alone).
		t.mu.Lock()
		unwanted := t.unwantedLocked(hc)
		t.mu.Unlock()
		if unwanted {
			hc.retire()
		}
	}
}

// unwantedLocked reports whether the worker wants connections closed (it
// drains, or its Health is down), or c's in particular (its hub address is
// left). c may be nil, for a connection that is not to a hub.
func (t *connTracker) unwantedLocked(c *hubConn) bool {
	return t.draining || t.health != nil && t.health.Err() != nil || c != nil && c.ep.ctx.Err() != nil
}

// retireIdle retires the new and idle connections to ep, or all of them if
// ep is nil: those the hub may be sending a job on read on for
// their grace, the others close (see hubConn.retire). The hook closes busy
// ones when their job ends.
func (t *connTracker) retireIdle(ep *endpoint) {
	var idle []net.Conn
	t.mu.Lock()
	for c, s := range t.conns {
		if s != http.StateNew && s != http.StateIdle {
			continue
		}
		if hc, ok := c.(*hubConn); ep == nil || ok && hc.ep == ep {
			idle = append(idle, c)
		}
	}
	t.mu.Unlock()
	for _, c := range idle {
		retire(c)
	}
}

// setDraining makes the hook close connections that become new or idle
// from now on; so does a Health that is down.
func (t *connTracker) setDraining() {
	t.mu.Lock()
	t.draining = true
	t.mu.Unlock()
}

// retire retires c if it is a connection to a hub, and closes it if not.
func retire(c net.Conn) {
	if hc, ok := c.(*hubConn); ok {
		hc.retire()
		return
	}
	c.Close()
}

func (t *connTracker) count(state http.ConnState) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, s := range t.conns {
		if s == state {
			n++
		}
	}
	return n
}
