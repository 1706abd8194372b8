package reversehttp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Errors a request can meet while it waits in a pool. The handler maps them
// to status codes (see errorStatus).
var (
	errQueueFull    = errors.New("queue is full")
	errQueueTimeout = errors.New("no worker became free within the queue timeout")
	errPoolClosed   = errors.New("pool is shutting down")
)

// Pool is the run-time state of one named pool: the FIFO queue of requests
// waiting for a worker and the set of idle worker connections. Pools live in
// the package-level usage pool, so both survive config reloads.
//
// Invariant: a pool never holds idle connections and waiting requests at the
// same time; whichever arrives second is matched with the oldest of the other.
type Pool struct {
	name string

	mu       sync.Mutex
	idle     connList   // oldest idle connection first
	waiting  waiterList // oldest waiting request first
	conns    map[*workerConn]struct{}
	busy     int
	limits   poolLimits
	draining bool // no new requests; set on shutdown or removal
	logger   *zap.Logger
}

func newPool(name string) *Pool {
	return &Pool{
		name:   name,
		conns:  make(map[*workerConn]struct{}),
		logger: zap.NewNop(),
	}
}

// poolLimits are the limits a config sets on a pool.
type poolLimits struct {
	maxQueue          int           // waiting requests beyond this get 503; 0: no limit
	queueTimeout      time.Duration // the longest a request waits for a worker
	respTimeout       time.Duration // the longest a worker may take to begin its response; 0: none
	maxResponseHeader int64         // the largest response head a worker may send
	maxAttempts       int           // workers a request may be offered to, declines and replays included
}

// configure applies limits from a (re)loaded config to the live pool.
func (p *Pool) configure(l poolLimits, logger *zap.Logger) {
	p.mu.Lock()
	p.limits = l
	p.draining = false
	p.logger = logger
	p.mu.Unlock()
}

// PoolStats is a snapshot of a pool's counters.
type PoolStats struct {
	Idle    int // idle worker connections
	Busy    int // worker connections running a job
	Waiting int // requests waiting for a worker
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolStats{Idle: p.idle.n, Busy: p.busy, Waiting: p.waiting.n}
}

// acquire returns an idle worker connection, waiting in the queue for one
// until the deadline. A request the pool already tried (a worker declined it
// or its connection was found closed) waits at the head of the queue: it is
// still the oldest request.
func (p *Pool) acquire(ctx context.Context, deadline time.Time, head bool) (*workerConn, error) {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	if c := p.idle.popFront(); c != nil {
		p.markBusy(c)
		p.mu.Unlock()
		return c, nil
	}
	if !head && p.limits.maxQueue > 0 && p.waiting.n >= p.limits.maxQueue {
		p.mu.Unlock()
		return nil, errQueueFull
	}
	w := &waiter{ch: make(chan *workerConn, 1)}
	if head {
		p.waiting.pushFront(w)
	} else {
		p.waiting.pushBack(w)
	}
	p.mu.Unlock()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var err error
	select {
	case c := <-w.ch:
		if c == nil {
			return nil, errPoolClosed
		}
		return c, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errQueueTimeout
	}

	p.mu.Lock()
	if w.queued {
		p.waiting.remove(w)
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Unlock()
	// A connection was handed over while we gave up.
	c := <-w.ch
	if c == nil {
		return nil, errPoolClosed
	}
	if ctx.Err() != nil {
		// Nothing was written to it: it goes to the next request.
		p.put(c)
		return nil, ctx.Err()
	}
	return c, nil
}

func (p *Pool) markBusy(c *workerConn) {
	c.state = connBusy
	p.busy++
}

// put makes c available: it goes to the oldest waiting request, or joins
// the idle set when nobody waits.
func (p *Pool) put(c *workerConn) {
	p.mu.Lock()
	if c.state == connBusy {
		p.busy--
	}
	if p.draining || c.retired {
		p.forget(c)
		p.mu.Unlock()
		c.close()
		return
	}
	if w := p.waiting.popFront(); w != nil {
		// Straight to the next job: a registration its last job quieted
		// stays so (the next job checks the socket, see spoiled).
		p.markBusy(c)
		w.ch <- c
		p.mu.Unlock()
		return
	}
	c.state = connIdle
	p.idle.pushBack(c)
	arm := c.quiet || c.reported
	c.quiet, c.reported = false, false
	p.mu.Unlock()
	if arm {
		// An idle connection that is readable leaves the pool at once, as
		// a watcher goroutine would have it do. Arming after the state
		// changed matters: a readiness the poller reports while c is busy
		// is ignored, and so must be reported again.
		c.armIdle()
	}
}

// add takes a freshly handshaken worker connection into the pool and starts
// watching it. br is the reader the handshake used, if any: a worker that
// sent bytes beyond its handshake, before it was asked anything, breaks
// the protocol (those bytes would be taken for the first job's response),
// and its connection is closed.
func (p *Pool) add(conn net.Conn, br *bufio.Reader, info workerInfo) {
	if br != nil && br.Buffered() > 0 {
		p.mu.Lock()
		logger := p.logger
		p.mu.Unlock()
		logger.Warn("worker sent data before it was asked anything; closed it",
			zap.String("pool", p.name), zap.String("remote", conn.RemoteAddr().String()), zap.String("worker", info.name))
		conn.Close()
		return
	}
	c := &workerConn{
		pool:   p,
		conn:   conn,
		worker: info.name,
		info:   info,
	}
	c.src.conn = conn
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		conn.Close()
		return
	}
	p.conns[c] = struct{}{}
	c.state = connBusy // put moves it to idle or hands it out
	p.busy++
	p.mu.Unlock()
	polled := c.pollIdle()
	if !polled {
		// No poller can watch this connection: a goroutine does, from
		// when put has made it idle or handed it to a job.
		c.readable = make(chan error, 1)
		c.resume = make(chan bool, 1)
	}
	p.put(c)
	if !polled {
		go c.watch()
	}
}

// release ends a job on c. A connection whose response completed cleanly
// and that did not ask to close carries the next job.
func (p *Pool) release(c *workerConn, reuse bool) {
	// Bytes the worker sent beyond its response would be taken for the
	// next job's response: such a connection closes instead.
	extra := reuse && c.buffered()
	if reuse && !extra {
		c.detachReader()
		p.put(c)
		c.wake()
		return
	}
	p.mu.Lock()
	if c.state == connBusy {
		p.busy--
	}
	p.forget(c)
	logger := p.logger
	p.mu.Unlock()
	c.close()
	if extra {
		logger.Warn("worker sent more than its response; closed the connection",
			zap.String("pool", p.name), zap.String("remote", c.remote()), zap.String("worker", c.worker))
	}
	if !c.polled {
		select {
		case c.resume <- false:
		default:
		}
	}
}

// forget removes c from the pool's books; p.mu must be held.
func (p *Pool) forget(c *workerConn) {
	if c.state == connIdle {
		p.idle.remove(c)
	}
	c.state = connClosed
	delete(p.conns, c)
}

// dropIdle is called by c's watcher (or the idle poller) when the
// connection becomes readable or fails. On an idle connection that means the worker hung up (or broke
// the protocol by talking out of turn): the connection leaves the pool at
// once. It reports whether it dropped c.
func (p *Pool) dropIdle(c *workerConn, err error) bool {
	p.mu.Lock()
	if c.state != connIdle {
		p.mu.Unlock()
		return false
	}
	p.forget(c)
	logger := p.logger
	p.mu.Unlock()
	c.close()
	p.logDropped(logger, c, err)
	return true
}

// logDropped logs why an idle connection left the pool: the worker sent
// data out of turn (err is nil) or the connection ended.
func (p *Pool) logDropped(logger *zap.Logger, c *workerConn, err error) {
	if err == nil {
		logger.Warn("worker sent data on an idle connection; closed it",
			zap.String("pool", p.name), zap.String("remote", c.remote()), zap.String("worker", c.worker))
	} else {
		logger.Debug("idle worker connection closed",
			zap.String("pool", p.name), zap.String("remote", c.remote()), zap.String("worker", c.worker), zap.Error(err))
	}
}

// drain stops the pool taking requests: waiting requests get errPoolClosed
// and idle connections are closed. Running jobs go on.
func (p *Pool) drain() {
	p.mu.Lock()
	p.draining = true
	for w := p.waiting.popFront(); w != nil; w = p.waiting.popFront() {
		w.ch <- nil
	}
	var idle []*workerConn
	for c := p.idle.popFront(); c != nil; c = p.idle.popFront() {
		c.state = connClosed
		delete(p.conns, c)
		idle = append(idle, c)
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
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
		if c.state == connIdle {
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

type connState uint8

const (
	connBusy connState = iota
	connIdle
	connClosed
)

// workerConn is one connection a worker holds to a pool: one slot.
type workerConn struct {
	pool *Pool
	conn net.Conn
	// br reads responses. It is attached when a response begins and goes
	// back to a shared pool when the job ends, so that an idle connection
	// holds no read buffer: with thousands of idle workers that is most
	// of their memory. The job holding the connection owns br; the
	// watcher looks at it only once the job has woken it, and put only
	// before it hands the connection on.
	br     *bufio.Reader
	src    connSource // what br reads from
	worker string     // name the worker gave in its handshake
	info   workerInfo

	// Guarded by pool.mu.
	state      connState
	prev, next *workerConn
	// retired says that c carries no further job: it closes when its
	// running job ends (see retireIf).
	retired bool
	// reported says that the poller reported c while it was busy, which
	// used up its registration: put arms it again when c goes idle.
	reported bool

	// polled says that a poller shared by all connections watches c while
	// it is idle (see pollIdle), so that an idle connection holds no
	// goroutine, and that the job holding c reads the start of its
	// response itself. Otherwise a goroutine of c's own watches it
	// throughout (see watch). Set before c is first handed out.
	polled bool
	poll   pollState
	// quiet says that c's registration is disarmed because a job ran on
	// c (see quietIdle): put arms it again when c goes idle, and until
	// then the jobs c carries cost the poller nothing. Like br, it
	// belongs to whoever holds c.
	quiet bool

	// Without a poller, the watcher tells the job holding the connection
	// that a response begins (nil) or that the connection failed; the job
	// tells the watcher whether to keep watching once it has read its
	// response.
	readable chan error
	resume   chan bool

	closeOnce sync.Once
}

// wake lets the watcher look for the next response once a job has read its
// response head (or a 1xx) from the connection. A polled connection has no
// watcher to wake: its job reads on.
func (c *workerConn) wake() {
	if c.polled {
		return
	}
	select {
	case c.resume <- true:
	default:
	}
}

// awaitResponse waits until the worker sends the first byte of a response
// (nil) or the connection fails. Only the job holding c calls it. Without a
// reader attached it reads one byte, which the reader attached next reads
// first, so that a job waiting for a slow worker holds no read buffer.
func (c *workerConn) awaitResponse() error {
	if !c.polled {
		return <-c.readable
	}
	if c.buffered() {
		return nil
	}
	return c.readOne()
}

// readOne waits for one byte from the connection and keeps it for the
// reader attached next.
func (c *workerConn) readOne() error {
	n, err := c.conn.Read(c.src.one[:])
	if n > 0 {
		c.src.pending, err = c.src.one[:n], nil
	}
	return err
}

// buffered reports whether bytes the worker sent wait in c's buffers, read
// from the connection but not yet by a job.
func (c *workerConn) buffered() bool {
	return len(c.src.pending) > 0 || (c.br != nil && c.br.Buffered() > 0)
}

func (c *workerConn) remote() string { return c.conn.RemoteAddr().String() }

func (c *workerConn) close() {
	c.closeOnce.Do(func() {
		// The poller lets go of the connection before it closes, while
		// its descriptor cannot yet belong to another connection.
		c.unpoll()
		c.conn.Close()
	})
}

// watch watches a connection no poller can (see pollIdle). It waits for
// the connection to become readable, so that a worker that hangs up while
// idle leaves the pool at once, and so that a job learns
// whether any byte of a response arrived before the connection failed.
// Without a reader attached it waits for one byte, which the reader
// attached next reads first.
func (c *workerConn) watch() {
	for {
		var err error
		if !c.buffered() {
			err = c.readOne()
		}
		if c.pool.dropIdle(c, err) {
			return
		}
		c.readable <- err
		if err != nil || !<-c.resume {
			return
		}
	}
}

// reader returns c's response reader, attaching one if need be. Only the
// job holding c calls it, after awaitResponse said a response begins.
func (c *workerConn) reader() *bufio.Reader {
	if c.br == nil {
		c.br = readers.Get().(*bufio.Reader)
		c.br.Reset(&c.src)
	}
	return c.br
}

// detachReader gives c's reader back at the end of a job that read all
// the worker sent (see release).
func (c *workerConn) detachReader() {
	if c.br != nil {
		putReader(c.br)
		c.br = nil
	}
}

// readers are the response readers of connections running jobs.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

// connSource is what a connection's response reader reads: first the bytes
// awaitResponse (or the watcher) read while it waited for the response to
// begin, then the connection.
type connSource struct {
	conn    net.Conn
	pending []byte
	one     [1]byte
}

func (s *connSource) Read(p []byte) (int, error) {
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	return s.conn.Read(p)
}

// connList is an intrusive FIFO of connections; p.mu guards it.
type connList struct {
	head, tail *workerConn
	n          int
}

func (l *connList) pushBack(c *workerConn) {
	c.prev, c.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	l.n++
}

func (l *connList) popFront() *workerConn {
	c := l.head
	if c != nil {
		l.remove(c)
	}
	return c
}

func (l *connList) remove(c *workerConn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next = nil, nil
	l.n--
}

// waiter is a request waiting for a connection.
type waiter struct {
	ch         chan *workerConn // receives the connection, or nil on drain
	prev, next *waiter
	queued     bool
}

// waiterList is an intrusive FIFO of waiting requests; p.mu guards it.
type waiterList struct {
	head, tail *waiter
	n          int
}

func (l *waiterList) pushBack(w *waiter) {
	w.prev, w.next, w.queued = l.tail, nil, true
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
	l.n++
}

func (l *waiterList) pushFront(w *waiter) {
	w.prev, w.next, w.queued = nil, l.head, true
	if l.head != nil {
		l.head.prev = w
	} else {
		l.tail = w
	}
	l.head = w
	l.n++
}

func (l *waiterList) popFront() *waiter {
	w := l.head
	if w != nil {
		l.remove(w)
	}
	return w
}

func (l *waiterList) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	l.n--
}
