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
	backoffMax       = 10 * time.Second
	dialTimeout      = 30 * time.Second
	handshakeTimeout = 30 * time.Second
	// A connection that the hub closes sooner than this without having
	// sent a job is counted as a failed attempt, so that a hub which
	// accepts and hangs up at once is not redialled in a tight loop.
	minHealthyLife = 5 * time.Second
)

// backoff returns the delay before retry number attempt (0-based):
// "full jitter", uniformly random in [0, min(backoffMax, backoffMin*2^attempt)).
func backoff(attempt int) time.Duration {
	ceiling := backoffMax
	if attempt < 30 {
		if d := backoffMin << attempt; d > 0 && d < backoffMax {
			ceiling = d
		}
	}
	return jitter(ceiling)
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
		address: hubAddr(w.cfg.Hub),
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

// hubAddr names the hub as the listener's address.
type hubAddr string

func (a hubAddr) Network() string { return "tcp" }
func (a hubAddr) String() string  { return string(a) }

// hubConn is a connection to the hub, as served by http.Server.
type hubConn struct {
	net.Conn
	// br holds what was read past the handshake response, which may be
	// the start of the first job; Read drains it before the socket.
	// Nil with the pothead protocol.
	br *bufio.Reader

	// accept: the hub agreed on FeatureAccept in the handshake.
	accept bool

	released  chan struct{} // closed by the first Close: the slot is free
	closeOnce sync.Once
	start     time.Time
	jobs      atomic.Int64 // requests seen (StateActive transitions)
}

func (c *hubConn) Read(p []byte) (int, error) {
	if c.br != nil && c.br.Buffered() > 0 {
		return c.br.Read(p)
	}
	return c.Conn.Read(p)
}

// Close closes the socket and frees the connection's slot, exactly once.
func (c *hubConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.released) })
	return err
}

// slotLoop keeps one connection to the hub open for as long as the listener
// is: it dials, hands the connection to Accept, waits for it to be closed,
// and dials again. While the Worker's Health is down it does not dial.
// Failures are retried with backoff; one that retrying cannot heal, before
// any handshake has succeeded, is sent to fatal and ends the loop.
func (w *Worker) slotLoop(l *hubListener, slot int, fatal chan<- error) {
	log := w.log.With("slot", slot)
	attempt := 0
	for l.ctx.Err() == nil && !w.stopping.Load() {
		if w.health != nil && !w.health.waitUp(l.ctx) {
			return
		}
		c, err := w.connect(l.ctx)
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
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
			d := backoff(attempt)
			attempt++
			attrs := []any{"hub", w.cfg.Hub, "pool", w.cfg.Pool, "err", err, "retry_in", d.Round(time.Millisecond)}
			if h := w.retryHint(err); h != "" {
				attrs = append(attrs, "hint", h)
			}
			log.Warn("cannot connect to hub", attrs...)
			if !sleepCtx(l.ctx, d) {
				return
			}
			continue
		}
		w.everConnected.Store(true)
		w.connected.Add(1)
		log.Debug("connected", "hub", w.cfg.Hub, "pool", w.cfg.Pool, "local", c.LocalAddr(), "accept", c.accept)

		select {
		case l.conns <- c:
		case <-l.closed:
			c.Close()
		}
		<-c.released // every path closes c: the server, the drain, or above
		w.connected.Add(-1)
		jobs := c.jobs.Load()
		lived := time.Since(c.start)
		log.Debug("disconnected", "hub", w.cfg.Hub, "jobs", jobs, "after", lived.Round(time.Millisecond))

		if jobs > 0 || lived >= minHealthyLife || w.unhealthy() {
			attempt = 0 // healthy, or closed because the Health is down: no backoff
			continue
		}
		d := backoff(attempt)
		attempt++
		log.Debug("hub closed a fresh connection without a job", "retry_in", d.Round(time.Millisecond))
		if !sleepCtx(l.ctx, d) {
			return
		}
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
		log.Error("cannot connect to hub", "hub", w.cfg.Hub, "pool", w.cfg.Pool, "problem", se.Problem.String(), "err", se.Err)
	case errors.As(err, &he):
		log.Error("handshake rejected", "hub", w.cfg.Hub, "pool", w.cfg.Pool, "status", he.Status, "reason", he.Reason)
	}
}
