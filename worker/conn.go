package worker

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Tunables; variables so that tests may shorten them.
var (
	backoffMin       = 100 * time.Millisecond
	backoffMax       = time.Second
	dialTimeout      = 30 * time.Second
	handshakeTimeout = 30 * time.Second
	// A connection that the hub closes sooner than this without having
	// sent a job is counted as a failed attempt, so that a hub which
	// accepts and hangs up at once is not redialled in a tight loop.
	minHealthyLife = 5 * time.Second
	// frameWriteTimeout bounds the write of a readiness frame; a hub that
	// does not take one byte in that time is not reading.
	frameWriteTimeout = 5 * time.Second
	// retireGraceMin and retireGraceMax bound how long a connection that
	// withdrew its offer keeps reading before it closes (see retire).
	retireGraceMin = 250 * time.Millisecond
	retireGraceMax = 2 * time.Second
)

// backoff returns the delay before retry number attempt (0-based) of a hub
// address that does not answer: doubling from backoffMin to backoffMax,
// jittered within its upper half, so that a hub that comes back has its
// workers again within backoffMax.
func backoff(attempt int) time.Duration {
	d := backoffMax
	if attempt < 30 {
		if s := backoffMin << attempt; s > 0 && s < backoffMax {
			d = s
		}
	}
	return d/2 + jitter(d/2)
}

// jitter returns a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// hubListener is the net.Listener given to http.Server.Serve. Each slot
// goroutine dials and handshakes on its own and hands the connection over
// through conns; Accept just takes the next one.
type hubListener struct {
	w       *Worker
	conns   chan *hubConn
	closed  chan struct{}
	once    sync.Once
	ctx     context.Context // cancelled by Close; aborts dials and backoffs
	cancel  context.CancelFunc
	address hubAddr
}

func newHubListener(w *Worker) *hubListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &hubListener{
		w:       w,
		conns:   make(chan *hubConn),
		closed:  make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
		address: hubAddr(w.hubNames()),
	}
}

// Accept returns the next connection that has completed its handshake, or
// net.ErrClosed once the listener is closed.
func (l *hubListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops dialling. Connections already handed out are not affected.
func (l *hubListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.cancel()
	})
	return nil
}

func (l *hubListener) Addr() net.Addr { return l.address }

// hubAddr names the hubs as the listener's address.
type hubAddr string

func (a hubAddr) Network() string { return "tcp" }
func (a hubAddr) String() string  { return string(a) }

// Decisions on a job that arrived, as hubConn.slot holds them.
const (
	slotNone    int32 = iota // no job arrived, or its decision was taken
	slotTaken                // the job has a slot
	slotRefused              // no slot was free (or a gate was closed): decline it
)

// hubConn is a connection to the hub, as served by http.Server.
type hubConn struct {
	net.Conn
	w  *Worker
	ep *endpoint
	// br holds what was read past the handshake response, which may be
	// the start of the first job; Read drains it before the socket.
	// Nil with the pothead protocol.
	br *bufio.Reader

	// accept and ready: the hub agreed on FeatureAccept and FeatureReady
	// in the handshake.
	accept, ready bool

	released  chan struct{} // closed by the first Close: the slot is free
	closeOnce sync.Once
	start     time.Time
	jobs      atomic.Int64 // requests seen (StateActive transitions)

	// waiting says that the connection carries no job, so that the next
	// bytes Read returns are a job's arrival (see arrived).
	waiting atomic.Bool
	// slot is the decision on the job that arrived last (slotTaken,
	// slotRefused), until serveJob takes it.
	slot atomic.Int32
	// want is the readiness frame the offers want the hub to know.
	want atomic.Uint32

	wmu sync.Mutex
	// idle: no job has arrived since the connection last became idle, so
	// frames may be written. Guarded by wmu, which a frame's write holds,
	// so that no frame is written once a job has arrived (its response
	// follows) or begins before a frame written earlier has ended.
	idle bool
	// sent is the readiness the hub knows: FrameNotReady after the
	// handshake and after every response, until a frame says otherwise.
	sent   byte
	closed bool
	// held is the end of a response, written after its job's handler
	// returned (hold), kept back to go out with the readiness frame that
	// follows it in one write: the hub then reads the frame with the
	// response, rather than being woken again for it a moment later.
	held []byte
	hold atomic.Bool

	// listed: the connection is in ep.idle; guarded by the offers' lock.
	listed bool

	// withdrawn is when c last sent a not-ready frame after a ready one
	// (zero if its last offer was taken by a job): a job may have crossed
	// that frame for a while after it. Guarded by wmu.
	withdrawn time.Time
	// retireBy, if set, is the end of the grace of c, which has withdrawn
	// its offer to close (retire) and writes no more frames: until then
	// Close leaves it open, and graceEnd closes it then. Both are cleared
	// when a job arrives. Guarded by wmu.
	retireBy time.Time
	graceEnd *time.Timer
}

func (c *hubConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.br != nil && c.br.Buffered() > 0 {
		n, err = c.br.Read(p)
	} else {
		n, err = c.Conn.Read(p)
	}
	if n > 0 && c.waiting.Load() {
		c.arrived()
	}
	return n, err
}

// Write writes p, or keeps it in held while hold is set.
func (c *hubConn) Write(p []byte) (int, error) {
	if c.hold.Load() {
		c.wmu.Lock()
		if c.hold.Load() {
			c.held = append(c.held, p...)
			c.wmu.Unlock()
			return len(p), nil
		}
		c.wmu.Unlock()
	}
	return c.Conn.Write(p)
}

// holdTail is called when a job's handler has returned: what the server
// writes from now until c is idle (or closed) is the response's end, which
// waits for the readiness frame. Only connections that speak frames hold.
func (c *hubConn) holdTail() {
	if c.ready {
		c.hold.Store(true)
	}
}

// maxHeldKept is the largest held buffer a connection keeps for its next
// response.
const maxHeldKept = 8 << 10

// arrived records that a job's first bytes came on c: no frame is written
// from now until its response has ended, and the job takes a slot if one
// is free.
func (c *hubConn) arrived() {
	c.wmu.Lock()
	if !c.idle {
		c.wmu.Unlock()
		return
	}
	c.idle = false
	c.waiting.Store(false)
	if !c.retireBy.IsZero() {
		// A job that crossed the withdrawal: it is served (or declined)
		// as any other, with no deadline; its end closes c.
		c.retireBy = time.Time{}
		c.graceEnd.Stop()
	}
	c.wmu.Unlock()
	c.slot.Store(c.w.offers.arrive(c))
}

// retire closes c, whose worker no longer wants it (it drains, its Health
// is down or it leaves the hub address), without losing a job the hub may
// be sending on it. While the last frame the hub has read from c is a
// ready frame, the hub may have written a job a moment ago: closed now, c
// would make the hub read a reset instead of a response, and a job that
// may have started is never run again. So c withdraws its offer with a
// not-ready frame and keeps reading for a grace period, long enough for a
// job that crossed the frame to arrive: such a job is served (or declined)
// as any other and c closes after it; otherwise c closes when the grace
// ends. A connection that withdrew its offer a moment ago on its own (its
// slot was offered elsewhere, or its hub address is left) keeps what is
// left of that withdrawal's grace. One the hub holds not ready (after its
// handshake or a response, until a ready frame), and has held so long
// enough, gets no job and closes at once, as does one without frames. One
// whose job has arrived is left to that job's end.
func (c *hubConn) retire() {
	c.wmu.Lock()
	switch {
	case c.closed || !c.retireBy.IsZero():
		c.wmu.Unlock()
		return
	case !c.idle:
		// A job has arrived and not ended (or c is not yet offered):
		// the server's hook closes c when its response has been written
		// (or retires it once it is offered).
		c.wmu.Unlock()
		return
	case !c.ready:
		c.wmu.Unlock()
		c.Close()
		return
	}
	grace := c.retireGrace()
	now := time.Now()
	var err error
	switch {
	case c.sent == FrameReady:
		_ = c.Conn.SetWriteDeadline(now.Add(frameWriteTimeout))
		_, err = c.Conn.Write([]byte{FrameNotReady})
		_ = c.Conn.SetWriteDeadline(time.Time{})
		c.sent = FrameNotReady
	case c.withdrawn.IsZero() || now.Sub(c.withdrawn) >= grace:
		// Never offered since its last job, or withdrawn long ago.
		c.wmu.Unlock()
		c.Close()
		return
	default:
		// Withdrawn a moment ago (the offers moved its slot, or
		// stopped offering to its hub address): what is left of that
		// withdrawal's grace.
		grace -= now.Sub(c.withdrawn)
	}
	if err == nil {
		c.retireBy = now.Add(grace)
		// Armed after retireBy is set, it fires after it: Close closes.
		c.graceEnd = time.AfterFunc(grace, c.endGrace)
	}
	c.wmu.Unlock()
	if err != nil {
		c.Close()
	}
}

// retireGrace is how long a retiring connection waits for a job that
// crossed its withdrawal: many times the hub's round trip, within bounds.
func (c *hubConn) retireGrace() time.Duration {
	var rtt time.Duration
	if c.ep != nil {
		rtt = time.Duration(c.ep.rtt.Load())
	}
	return min(max(retireGraceMin, 16*rtt), retireGraceMax)
}

// endGrace closes a retiring connection on which no job arrived in its
// grace; the server's read of the next request then fails.
func (c *hubConn) endGrace() {
	c.wmu.Lock()
	ended := !c.retireBy.IsZero()
	c.wmu.Unlock()
	if ended {
		c.Close()
	}
}

// inGraceLocked reports whether c is retiring and its grace has not ended.
func (c *hubConn) inGraceLocked() bool {
	return !c.retireBy.IsZero() && time.Now().Before(c.retireBy)
}

// becomeIdle records that c carries no job any more (after its handshake,
// or once a response has been written): the hub holds it not ready until
// a frame says otherwise.
func (c *hubConn) becomeIdle() {
	c.wmu.Lock()
	if c.closed {
		c.wmu.Unlock()
		return
	}
	c.hold.Store(false)
	c.idle = true
	c.sent = FrameNotReady
	c.withdrawn = time.Time{}
	c.waiting.Store(true)
	c.wmu.Unlock()
	c.w.offers.idle(c)
	// The response's end, if no frame took it along.
	c.flush()
}

// takeSlot takes the decision on the job that has arrived on c: whether it
// has a slot.
func (c *hubConn) takeSlot() bool {
	s := c.slot.Swap(slotNone)
	if s == slotNone {
		// Its arrival was not seen (bytes already buffered when c
		// became idle): decide now.
		s = c.w.offers.arrive(c)
	}
	return s == slotTaken
}

// flush writes the readiness frame the offers want, if the hub does not
// know it yet and c carries no job.
func (c *hubConn) flush() {
	c.wmu.Lock()
	f := byte(c.want.Load())
	frame := c.ready && c.idle && !c.closed && c.retireBy.IsZero() && f != c.sent
	var err error
	switch {
	case c.idle && len(c.held) > 0:
		// The response's end, with the frame if one is due. With the
		// frames' deadline: this write holds wmu, which Close takes, and
		// a hub that cannot take a few KiB in that time is not reading.
		b := c.held
		if frame {
			b = append(b, f)
		}
		_ = c.Conn.SetWriteDeadline(time.Now().Add(frameWriteTimeout))
		_, err = c.Conn.Write(b)
		_ = c.Conn.SetWriteDeadline(time.Time{})
		c.held = c.held[:0]
		if cap(c.held) > maxHeldKept {
			c.held = nil
		}
	case frame:
		_ = c.Conn.SetWriteDeadline(time.Now().Add(frameWriteTimeout))
		_, err = c.Conn.Write([]byte{f})
		_ = c.Conn.SetWriteDeadline(time.Time{})
	}
	if err == nil && frame {
		if f == FrameNotReady {
			c.withdrawn = time.Now()
		}
		c.sent = f
	}
	c.wmu.Unlock()
	if err != nil {
		c.Close()
	}
}

// Close closes the socket and frees the connection's slot, exactly once.
// A retiring connection stays open until its grace ends (see retire), so
// that the server's closing of its idle connections (on a drain, say) does
// not cut off a job that crossed the withdrawal; the grace's end closes it.
func (c *hubConn) Close() error {
	c.wmu.Lock()
	if c.inGraceLocked() {
		c.wmu.Unlock()
		return nil
	}
	c.hold.Store(false)
	if len(c.held) > 0 && !c.closed {
		// The end of the last response, as a server that closes after
		// it would have written it; bounded, since a Close must not
		// wait for a hub that does not read.
		_ = c.Conn.SetWriteDeadline(time.Now().Add(frameWriteTimeout))
		_, _ = c.Conn.Write(c.held)
	}
	c.held = nil
	c.wmu.Unlock()
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.wmu.Lock()
		c.closed, c.idle = true, false
		c.wmu.Unlock()
		if c.w != nil {
			c.w.offers.gone(c)
		}
		close(c.released)
	})
	return err
}

// redial is what the slots of one hub address share about whether it
// answers: while it does not, one slot probes it with backoff and the
// others wait, so that a hub that is down gets one attempt at a time from
// each worker, not one per slot.
type redial struct {
	mu      sync.Mutex
	down    bool
	probing bool
	attempt int
	delay   time.Duration // before the next probe
	up      chan struct{} // closed when down ends
}

// turn waits until the calling slot may dial: at once while the address
// answers; otherwise when it is the probe (after the backoff delay) or the
// probe has succeeded. It reports whether the slot is the probe, and false
// as ok when ctx ends first.
func (r *redial) turn(ctx context.Context) (probe, ok bool) {
	for {
		r.mu.Lock()
		if !r.down {
			r.mu.Unlock()
			return false, true
		}
		if !r.probing {
			r.probing = true
			d := r.delay
			r.mu.Unlock()
			if !sleepCtx(ctx, d) {
				r.mu.Lock()
				r.probing = false
				r.mu.Unlock()
				return false, false
			}
			return true, true
		}
		up := r.up
		r.mu.Unlock()
		select {
		case <-up:
		case <-ctx.Done():
			return false, false
		}
	}
}

// failed records a failed attempt (or a connection the hub closed at once)
// and returns the delay before the next probe.
func (r *redial) failed(probe bool) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.down {
		r.down, r.attempt, r.up = true, 0, make(chan struct{})
	}
	if probe {
		r.probing = false
	}
	if probe || r.delay == 0 {
		r.delay = backoff(r.attempt)
		r.attempt++
	}
	return r.delay
}

// succeeded records a handshake that succeeded: every slot may dial.
func (r *redial) succeeded() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		r.down, r.probing, r.attempt, r.delay = false, false, 0, 0
		close(r.up)
	}
}

// slotLoop keeps one connection to a hub address open for as long as the
// address is wanted: it dials, hands the connection to Accept, waits for
// it to be closed, and dials again. While the Worker's Health is down it
// does not dial. Failures are retried with backoff; one that retrying
// cannot heal, before any handshake has succeeded, is sent to fatal and
// ends the loop.
func (w *Worker) slotLoop(l *hubListener, ep *endpoint, slot int, fatal chan<- error) {
	log := w.log.With("slot", slot)
	ctx := ep.ctx
	for ctx.Err() == nil && !w.stopping.Load() {
		if w.health != nil && !w.health.waitUp(ctx) {
			return
		}
		probe, ok := ep.redial.turn(ctx)
		if !ok {
			return
		}
		c, err := w.connect(ctx, ep)
		if err != nil {
			if ctx.Err() != nil {
				ep.redial.failed(probe)
				return
			}
			w.attemptFailed(ep, err)
			if !w.everConnected.Load() {
				if ferr := w.permanent(err); ferr != nil {
					w.logFatal(log, ferr)
					select {
					case fatal <- ferr:
					default:
					}
					return
				}
			}
			d := ep.redial.failed(probe)
			attrs := []any{"hub", ep.name, "address", ep.addr, "pool", w.cfg.Pool, "err", err, "retry_in", d.Round(time.Millisecond)}
			if h := w.retryHint(err, ep); h != "" {
				attrs = append(attrs, "hint", h)
			}
			// An address of a hub whose other addresses answer (the
			// IPv6 one of "localhost", say) is not worth a warning.
			level := slog.LevelWarn
			if ep.hub.connected.Load() > 0 {
				level = slog.LevelDebug
			}
			log.Log(context.Background(), level, "cannot connect to hub", attrs...)
			continue
		}
		ep.redial.succeeded()
		w.everConnected.Store(true)
		w.connected.Add(1)
		ep.hub.connected.Add(1)
		w.attemptSucceeded(ep)
		log.Debug("connected", "hub", ep.name, "address", ep.addr, "pool", w.cfg.Pool, "local", c.LocalAddr(),
			"accept", c.accept, "ready", c.ready)

		// The server's hook makes c idle, and so offers it, once the
		// server has taken it: a connection offered before that could
		// be closed by a drain with a job crossing its ready frame.
		select {
		case l.conns <- c:
		case <-l.closed:
			c.Close()
		case <-ctx.Done():
			c.Close()
		}
		<-c.released // every path closes c: the server, the drain, or above
		w.connected.Add(-1)
		ep.hub.connected.Add(-1)
		jobs := c.jobs.Load()
		lived := time.Since(c.start)
		log.Debug("disconnected", "hub", ep.name, "address", ep.addr, "jobs", jobs, "after", lived.Round(time.Millisecond))

		if jobs > 0 || lived >= minHealthyLife || w.unhealthy() || ctx.Err() != nil {
			continue // healthy, or closed on purpose: no backoff
		}
		d := ep.redial.failed(false)
		log.Debug("hub closed a fresh connection without a job", "hub", ep.name, "retry_in", d.Round(time.Millisecond))
	}
}

// unhealthy reports whether the Worker's Health is down.
func (w *Worker) unhealthy() bool { return w.health != nil && w.health.Err() != nil }

// logFatal logs the error that ends Run.
func (w *Worker) logFatal(log *slog.Logger, err error) {
	var se *SetupError
	var he *HandshakeError
	switch {
	case errors.As(err, &se):
		log.Error("cannot connect to hub", "hub", w.hubNames(), "pool", w.cfg.Pool, "problem", se.Problem.String(), "err", se.Err)
	case errors.As(err, &he):
		log.Error("handshake rejected", "hub", w.hubNames(), "pool", w.cfg.Pool, "status", he.Status, "reason", he.Reason)
	}
}
