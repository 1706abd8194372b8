package worker

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultResolveInterval is used when [Config.ResolveInterval] is zero.
const DefaultResolveInterval = 5 * time.Second

// lookupTimeout bounds one resolution of a hub's host name.
var lookupTimeout = 5 * time.Second

// hub is one hub as configured: a host name (or address) and a port. A name
// may resolve to several addresses; each is an endpoint.
type hub struct {
	name      string // host:port as given: the handshake's Host, logs
	host      string // for resolving, and the TLS server name
	port      string
	literal   bool         // host is an IP address: nothing to resolve
	connected atomic.Int64 // handshaken connections to any of its addresses
}

func parseHub(s string) (*hub, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("worker: hub address %q: %w", s, err)
	}
	if host == "" {
		return nil, fmt.Errorf("worker: hub address %q: no host", s)
	}
	return &hub{name: s, host: host, port: port, literal: net.ParseIP(host) != nil}, nil
}

// endpoint is one address of a hub, to which the worker holds Slots
// connections.
type endpoint struct {
	hub    *hub
	name   string // the hub's name
	addr   string // the address dialled, IP:port
	ctx    context.Context
	cancel context.CancelFunc
	redial redial
	// rtt is the shortest handshake round trip seen, in nanoseconds: it
	// paces how long an offer stays with this hub (see offers).
	rtt atomic.Int64
	// outage counts the failed attempts since it last answered.
	outage outage

	// Guarded by the offers' lock: its connections with the ready
	// feature that carry no job, the longest idle first; how often it has
	// taken the offers it got lately (1 for all, 0 for none); and how long
	// an offer stays with it alone (see noteLate).
	idle  []*hubConn
	score float64
	dwell time.Duration
}

func (ep *endpoint) noteRTT(d time.Duration) {
	for {
		old := ep.rtt.Load()
		if old != 0 && old <= int64(d) {
			return
		}
		if ep.rtt.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// hubSet keeps one endpoint per address of every hub, resolving names
// again every interval: addresses that appear are joined, those that
// vanish are left (their idle connections close at once, busy ones when
// their job ends).
type hubSet struct {
	w        *Worker
	l        *hubListener
	hubs     []*hub
	lookup   func(ctx context.Context, host string) ([]string, error)
	interval time.Duration
	fatal    chan<- error
	slots    *sync.WaitGroup

	mu  sync.Mutex
	eps map[string]*endpoint // by address
}

// run resolves the hubs and keeps their endpoints until the listener
// closes; then it leaves them all.
func (s *hubSet) run() {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.l.ctx.Done():
			s.mu.Lock()
			for _, ep := range s.eps {
				s.w.offers.removeEndpoint(ep)
			}
			s.mu.Unlock()
			return
		case <-t.C:
		}
		s.update(s.resolve())
		if !s.allLiteral() {
			t.Reset(s.interval)
		}
	}
}

func (s *hubSet) allLiteral() bool {
	for _, h := range s.hubs {
		if !h.literal {
			return false
		}
	}
	return true
}

// target is an address to hold connections to, and its hub.
type target struct {
	hub  *hub
	addr string
}

// resolve returns the addresses of every hub. A name that cannot be
// resolved keeps the addresses it had, so that a DNS hiccup costs nothing.
func (s *hubSet) resolve() []target {
	var out []target
	for _, h := range s.hubs {
		if h.literal {
			out = append(out, target{h, net.JoinHostPort(h.host, h.port)})
			continue
		}
		ctx, cancel := context.WithTimeout(s.l.ctx, lookupTimeout)
		addrs, err := s.lookup(ctx, h.host)
		cancel()
		if err != nil || len(addrs) == 0 {
			if s.l.ctx.Err() == nil {
				s.w.log.Warn("cannot resolve hub", "hub", h.name, "err", err, "retry_in", s.interval)
			}
			s.mu.Lock()
			for addr, ep := range s.eps {
				if ep.hub == h {
					out = append(out, target{h, addr})
				}
			}
			s.mu.Unlock()
			continue
		}
		for _, a := range addrs {
			out = append(out, target{h, net.JoinHostPort(a, h.port)})
		}
	}
	return out
}

// update joins the addresses in ts that are new and leaves those gone.
func (s *hubSet) update(ts []target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := make(map[string]target, len(ts))
	for _, t := range ts {
		if _, dup := want[t.addr]; !dup {
			want[t.addr] = t
		}
	}
	for addr, ep := range s.eps {
		if _, ok := want[addr]; !ok {
			s.w.log.Info("leaving hub address", "hub", ep.name, "address", addr)
			delete(s.eps, addr)
			ep.cancel()
			s.w.offers.removeEndpoint(ep)
			s.w.tracker.retireIdle(ep)
		}
	}
	addrs := make([]string, 0, len(want))
	for addr := range want {
		addrs = append(addrs, addr)
	}
	slices.Sort(addrs)
	for _, addr := range addrs {
		if _, ok := s.eps[addr]; ok {
			continue
		}
		t := want[addr]
		ctx, cancel := context.WithCancel(s.l.ctx)
		ep := &endpoint{hub: t.hub, name: t.hub.name, addr: addr, ctx: ctx, cancel: cancel, score: 1}
		s.eps[addr] = ep
		if len(s.eps) > 1 || !t.hub.literal {
			s.w.log.Debug("joining hub address", "hub", ep.name, "address", addr)
		}
		s.w.offers.addEndpoint(ep)
		for i := range s.w.cfg.Slots {
			s.slots.Go(func() { s.w.slotLoop(s.l, ep, i, s.fatal) })
		}
	}
}

// hubNames lists the configured hubs, for logs.
func (w *Worker) hubNames() string {
	names := make([]string, len(w.hubs))
	for i, h := range w.hubs {
		names[i] = h.name
	}
	return strings.Join(names, ",")
}
