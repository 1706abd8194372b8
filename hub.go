package reversehttp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Errors a request can meet while it waits in a pool. The handler maps them
// to status codes (see errorStatus).
var (
	errQueueFull    = errors.New("queue is full")
	errQueueTimeout = errors.New("no worker became free within the queue timeout")
	errPoolClosed   = errors.New("pool is shutting down")
	errWaitTooLong  = errors.New("the estimated wait exceeds the queue timeout (admit_by_estimate)")
)

// Pool is the run-time state of one named pool: the queue of requests
// waiting for a worker (FIFO unless routes ask for priorities or fair
// sharing, see sched.go) and the set of idle worker connections. Pools live in
// the package-level usage pool, so both survive config reloads.
//
// Invariant: a pool never holds ready idle connections and waiting
// requests at the same time; whichever arrives second is matched with the
// oldest idle connection, or with the request the queue serves next. Idle
// connections whose worker says it is not ready (see readiness.go) wait in
// a list of their own.
type Pool struct {
	name string

	mu       sync.Mutex
	idle     list[*workerConn] // ready idle connections, the oldest first
	unready  list[*workerConn] // idle connections not ready for a job
	waiting  waitQueue         // waiting requests (sched.go)
	conns    map[*workerConn]struct{}
	limits   poolLimits
	draining bool // no new requests; set on shutdown or removal
	logger   *zap.Logger
	obs      *poolObs // what operators see of it (observe.go)

	// service estimates how long a job holds its connection, from the
	// pool's completed jobs (sched.go).
	service ewma
	// promised is the latest time a Retry-After told a refused request
	// to come back; zero once a request found a connection idle.
	promised time.Time

	// Counters since the pool was created.
	joined   atomic.Uint64 // worker connections admitted
	sent     atomic.Uint64 // jobs written to a worker
	declined atomic.Uint64 // of which declined by the worker
}

// poolLimits are the limits a config sets on a pool.
type poolLimits struct {
	maxQueue          int           // waiting requests beyond this get 503; 0: no limit
	queueTimeout      time.Duration // the longest a request waits for a worker
	respTimeout       time.Duration // the longest a worker may take to begin its response; 0: none
	maxResponseHeader int64         // the largest response head a worker may send
	maxAttempts       int           // workers a request may be offered to, declines and replays included
	aging             time.Duration // a request waiting this long goes ahead of every class and flow; 0: never
	// admits says whether the config in force would let a connection in
	// with these credentials: add refuses what it would not, so that a
	// handshake that passed an older config's listener during a reload
	// cannot keep a credential the new one withdrew. Nil admits all.
	admits func(admission) bool
	// unobserved turns off the per-request metrics, placeholders and log
	// fields, so that a benchmark can measure what they cost; no config
	// sets it.
	unobserved bool
}

func newPool(name string) *Pool {
	p := &Pool{
		name:   name,
		conns:  make(map[*workerConn]struct{}),
		logger: zap.NewNop(),
	}
	p.obs = newPoolObs(p)
	return p
}

// configure applies limits from a (re)loaded config to the live pool.
func (p *Pool) configure(l poolLimits, logger *zap.Logger) {
	p.mu.Lock()
	p.limits = l
	p.draining = false
	p.logger = logger
	p.mu.Unlock()
}

// getLimits returns the pool's limits in force.
func (p *Pool) getLimits() poolLimits {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.limits
}

func (p *Pool) log() *zap.Logger {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logger
}

// PoolStats is a snapshot of a pool's counters.
type PoolStats struct {
	Idle     int // idle worker connections, ready or not
	NotReady int // of which their worker says not ready for a job
	Busy     int // worker connections taken by a request
	Waiting  int // requests waiting for a worker

	// Since the pool was created:
	Joined   uint64 // worker connections admitted
	Sent     uint64 // jobs written to a worker, declined ones included
	Declined uint64 // jobs a worker declined
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	idle := p.idle.len() + p.unready.len()
	s := PoolStats{Idle: idle, NotReady: p.unready.len(), Busy: len(p.conns) - idle, Waiting: p.waiting.len()}
	p.mu.Unlock()
	s.Joined, s.Sent, s.Declined = p.joined.Load(), p.sent.Load(), p.declined.Load()
	return s
}

// waiter is a request waiting for a connection.
type waiter struct {
	node  node[*waiter]    // on the FIFO list, or its flow's (sched.go)
	ch    chan *workerConn // receives the connection, or nil on drain
	since time.Time        // when it joined the queue
	tk    *ticket          // its class, key and estimate; nil for none
	err   error            // why it was taken out without a connection; nil: the pool closed
	// With the scheduler: its place in arrival order, and its flow.
	age  node[*waiter]
	flow *flow
}

// arrived is when w's request arrived, which aging counts from.
func (w *waiter) arrived() time.Time {
	if w.tk != nil && !w.tk.arrived.IsZero() {
		return w.tk.arrived
	}
	return w.since
}

// acquire returns a worker connection for a request, waiting in the queue
// for one until the deadline; the caller holds it, and it looked fine when
// it was taken (see workerConn.check). A request the pool already offered
// to a worker (it declined, or its connection turned out closed) waits at
// the head of the queue, since it is still the oldest, and prefers an idle
// connection of a worker not in avoid.
func (p *Pool) acquire(ctx context.Context, deadline time.Time, head bool, avoid ...string) (*workerConn, error) {
	return p.acquireFor(ctx, deadline, nil, head, avoid...)
}

// acquireFor is acquire for a request whose ticket (nil for none) gives
// its place in the queue.
func (p *Pool) acquireFor(ctx context.Context, deadline time.Time, tk *ticket, head bool, avoid ...string) (*workerConn, error) {
	for {
		c, err := p.take(ctx, deadline, tk, head, avoid)
		if err != nil {
			return nil, err
		}
		if err = c.unwatch(); err == nil {
			err = c.check()
		}
		if err == nil {
			return c, nil
		}
		// The worker hung up, or withdrew its offer, while nobody
		// looked: nothing was written, and the request, still the
		// oldest, tries the next connection.
		if errors.Is(err, errNotReady) {
			p.putAs(c, false)
		} else {
			c.leavingIdle(err)
			p.obs.requeues[requeueStale].Add(1)
			p.release(c, false)
			p.logDropped(c, err)
		}
		head = true
	}
}

// take takes a connection from the idle list, or waits in the queue for
// one until the deadline.
func (p *Pool) take(ctx context.Context, deadline time.Time, tk *ticket, head bool, avoid []string) (*workerConn, error) {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	if c := p.pickIdleLocked(avoid); c != nil {
		p.takeIdleLocked(c)
		if !p.promised.IsZero() {
			p.promised = time.Time{} // the pool has room: the promises are kept
		}
		p.mu.Unlock()
		return c, nil
	}
	if !head && tk != nil && tk.admit {
		// A request the queue would keep past its deadline is better
		// told at once; one already offered to a worker keeps its place.
		if est, ok := p.estimateLocked(tk); ok && est > time.Until(deadline) {
			p.mu.Unlock()
			return nil, errWaitTooLong
		}
	}
	if !head && p.limits.maxQueue > 0 && p.waiting.len() >= p.limits.maxQueue {
		// A flooding fair_by key gives up its newest request for
		// another key's.
		out := p.waiting.pushOut(tk)
		if out == nil {
			p.mu.Unlock()
			return nil, errQueueFull
		}
		out.err = errQueueFull
		out.ch <- nil
	}
	w := &waiter{ch: make(chan *workerConn, 1), since: time.Now(), tk: tk}
	w.node.val = w
	p.waiting.push(w, head)
	p.mu.Unlock()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var err error
	select {
	case c := <-w.ch:
		if c == nil {
			if w.err != nil {
				return nil, w.err
			}
			return nil, errPoolClosed
		}
		return c, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errQueueTimeout
	}

	p.mu.Lock()
	if p.waiting.queued(w) {
		p.waiting.remove(w)
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Unlock()
	// A connection was handed over while we gave up: nothing was written
	// to it, so it goes to the next request.
	if c := <-w.ch; c != nil {
		p.put(c)
	}
	return nil, err
}

// maxAvoidScan bounds how far down the idle list acquire looks for a
// connection of a worker a request has not been offered to yet.
const maxAvoidScan = 64

// pickIdleLocked returns the idle connection a request should take: the
// one idle longest, but for a request that workers have declined or failed
// to start, the first of another worker within maxAvoidScan. p.mu is held.
func (p *Pool) pickIdleLocked(avoid []string) *workerConn {
	c, ok := p.idle.front()
	if !ok || len(avoid) == 0 || !slices.Contains(avoid, c.key) {
		return c
	}
	scanned := 0
	p.idle.each(func(o *workerConn) bool {
		scanned++
		if !slices.Contains(avoid, o.key) {
			c = o
			return false
		}
		return scanned < maxAvoidScan
	})
	return c
}

// takeIdleLocked takes the idle connection c for whoever calls it, who
// must then unwatch it before anything else. p.mu is held.
func (p *Pool) takeIdleLocked(c *workerConn) {
	p.unlistLocked(c)
	c.setState(stateReserved)
}

// listLocked puts idle c on the list its readiness says; p.mu is held.
func (p *Pool) listLocked(c *workerConn) {
	if c.ready {
		p.idle.pushBack(&c.idleNode)
	} else {
		p.unready.pushBack(&c.idleNode)
	}
}

// unlistLocked takes c off the list it is on, if any; p.mu is held.
func (p *Pool) unlistLocked(c *workerConn) {
	switch {
	case !c.idleNode.in:
	case c.ready:
		p.idle.remove(&c.idleNode)
	default:
		p.unready.remove(&c.idleNode)
	}
}

// put gives c, whose holder has not written to it since it was last
// ready, to the next waiting request (the oldest, in a FIFO queue), or makes it idle when nobody
// waits. A connection of a draining pool, or one retired, closes.
func (p *Pool) put(c *workerConn) { p.putAs(c, c.ready) }

// putAs is put for a connection whose readiness is ready: one that is not
// ready waits, idle, until its worker says it is.
func (p *Pool) putAs(c *workerConn, ready bool) {
	p.mu.Lock()
	if _, ok := p.conns[c]; !ok || p.draining || c.retired {
		p.forget(c)
		p.mu.Unlock()
		c.closeWith(errPoolClosed) // a retired connection's cause came first
		return
	}
	c.ready = ready
	if ready {
		if w, ok := p.waiting.pop(p.limits.aging); ok {
			c.setState(stateReserved)
			w.ch <- c
			p.mu.Unlock()
			return
		}
	}
	c.setState(stateIdle)
	p.listLocked(c)
	c.watchLocked()
	p.mu.Unlock()
	if c.polled {
		// Arming after the state changed matters: a readiness the
		// poller reports while c is not idle is ignored, and so must be
		// reported again.
		c.arm()
	}
}

// add takes a freshly handshaken worker connection into the pool. br is
// the reader the handshake used, if any: a worker that sent bytes beyond
// its handshake, before it was asked anything, breaks the protocol (those
// bytes would be taken for the first job's response), and its connection
// is closed.
func (p *Pool) add(conn net.Conn, br *bufio.Reader, info workerInfo) {
	if br != nil && br.Buffered() > 0 {
		p.log().Warn("worker sent data before it was asked anything; closed it",
			zap.String("remote", conn.RemoteAddr().String()), zap.String("worker", info.name))
		conn.Close()
		return
	}
	c := newWorkerConn(p, conn, info)
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		conn.Close()
		return
	}
	if admits := p.limits.admits; admits != nil && !admits(info.admission) {
		logger := p.logger
		p.mu.Unlock()
		conn.Close()
		logger.Info("worker admitted under the previous config refused: the config in force does not admit its credentials",
			zap.String("remote", conn.RemoteAddr().String()), zap.String("worker", info.name))
		return
	}
	held, ok := p.obs.joinLocked(c)
	if !ok {
		p.mu.Unlock()
		conn.Close() // its worker is drained
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	p.joined.Add(1)
	p.obs.joined(c, held)
	c.polled = c.pollIdle()
	p.put(c)
}

// release ends a job on c. A connection whose response completed cleanly
// and that did not ask to close carries the next job; with the ready
// feature, once its worker says it is ready.
func (p *Pool) release(c *workerConn, reuse bool) {
	var err error
	if reuse {
		// Bytes the worker sent beyond its response would be taken for
		// the next job's response: such a connection closes instead.
		// With the ready feature they must be frames.
		ready := c.ready
		if c.info.features.ready {
			ready, err = c.framesAfterResponse()
			if errors.Is(err, errOutOfTurn) {
				err = errBeyondResponse
			}
		} else if c.leftover() {
			err = errBeyondResponse
		}
		if err == nil {
			c.detachReader()
			p.putAs(c, ready)
			return
		}
	}
	if errors.Is(err, errBeyondResponse) {
		c.leaving(errBeyondResponse)
	}
	p.mu.Lock()
	p.forget(c)
	p.mu.Unlock()
	c.close()
	c.detachReader()
	if err != nil {
		p.logDropped(c, err)
	}
}

// forget removes c from the pool's books; p.mu must be held.
func (p *Pool) forget(c *workerConn) {
	p.unlistLocked(c)
	delete(p.conns, c)
}

// dropIdle is called by c's watcher when the connection becomes readable
// or fails. On an idle connection that means the worker hung up (or broke
// the protocol by talking out of turn): the connection leaves the pool at
// once. It reports whether it dropped c.
func (p *Pool) dropIdle(c *workerConn, err error) bool {
	p.mu.Lock()
	if c.getState() != stateIdle {
		p.mu.Unlock()
		return false
	}
	p.forget(c)
	p.mu.Unlock()
	c.leavingIdle(err)
	c.close()
	p.logDropped(c, err)
	return true
}

// logDropped logs why an idle connection left the pool.
func (p *Pool) logDropped(c *workerConn, err error) {
	logger := p.log()
	msg := ""
	switch {
	case errors.Is(err, errOutOfTurn):
		msg = "worker sent data on an idle connection; closed it"
	case errors.Is(err, errBeyondResponse):
		msg = "worker sent more than its response; closed the connection"
	case errors.Is(err, errFrameFlood):
		msg = "worker sent readiness frames faster than allowed; closed the connection"
	}
	if msg != "" {
		logger.Warn(msg, zap.String("remote", c.remote()), zap.String("worker", c.info.name))
		return
	}
	logger.Debug("idle worker connection closed",
		zap.String("remote", c.remote()), zap.String("worker", c.info.name), zap.Error(err))
}

// drain stops the pool taking requests: waiting requests get errPoolClosed
// and idle connections are closed. Running jobs go on.
func (p *Pool) drain() {
	p.mu.Lock()
	p.draining = true
	for w, ok := p.waiting.pop(0); ok; w, ok = p.waiting.pop(0) {
		w.ch <- nil
	}
	var idle []*workerConn
	for _, l := range []*list[*workerConn]{&p.idle, &p.unready} {
		for c, ok := l.popFront(); ok; c, ok = l.popFront() {
			delete(p.conns, c)
			idle = append(idle, c)
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.closeWith(errPoolClosed)
	}
}

// retireIf closes the connections for which bad reports true: idle ones at
// once, busy ones when their job ends. It returns how many it retired.
func (p *Pool) retireIf(bad func(c *workerConn) bool) int {
	p.mu.Lock()
	var idle []*workerConn
	n := 0
	for c := range p.conns {
		if c.retired || !bad(c) {
			continue
		}
		n++
		c.retired = true
		if c.idleNode.in {
			p.forget(c)
			idle = append(idle, c)
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
	return n
}

// Destruct tears the pool down when no config uses it any more. Waiting
// requests get errPoolClosed and idle connections close at once; a running
// job keeps its connection until it ends (bounded by Caddy's grace period,
// after which its consumer's cancellation closes it), and then the
// connection closes instead of returning to the pool.
func (p *Pool) Destruct() error {
	p.drain()
	return nil
}
