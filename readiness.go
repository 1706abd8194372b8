package reversehttp

import (
	"errors"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// Readiness (worker.FeatureReady): on a connection where the hub and the
// worker agreed on it, the worker says with one-byte frames, whenever the
// connection carries no job, whether it is ready for one. A connection
// starts not ready and is not ready again after every response; the pool
// gives jobs only to ready connections and keeps the others, idle and
// watched, in a list of their own. Frames are read by whoever may read the
// connection (see workerconn.go): the watcher while it is idle, under the
// pool's lock where the poller watches a plain socket, in a goroutine of
// its own otherwise; its taker before it writes a job, to catch an offer
// withdrawn meanwhile; the job, for frames that arrive before the
// response, which the worker sent before it read the job (it declines
// such a job if it cannot take it), and for those right behind the
// response, which say what comes after it.

var (
	// errNotReady: the worker withdrew its offer before the job was
	// written; the connection stays, not ready.
	errNotReady = errors.New("worker is not ready")
	// errFrameFlood ends a connection whose worker sends frames faster
	// than frameBudget allows.
	errFrameFlood = errors.New("worker sent readiness frames faster than allowed")
)

// Bounds on readiness frames per connection: a burst of frameBurst, then
// frameRate a second. A worker changes its mind a few times per job at
// most; these leave room for thousands of jobs a second and cost the hub
// a few kilobytes a second per connection at worst.
const (
	frameBurst = 1024
	frameRate  = 4096
	// frameBuf is how much is read at once.
	frameBuf = 64
)

// frameBudget is a token bucket of readiness frames. Only the connection's
// reader touches it.
type frameBudget struct {
	tokens float64
	last   time.Time
}

func (b *frameBudget) take(n int) bool {
	now := time.Now()
	if b.last.IsZero() {
		b.tokens = frameBurst
	} else {
		b.tokens = min(frameBurst, b.tokens+now.Sub(b.last).Seconds()*frameRate)
	}
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

func isFrame(b byte) bool { return b == worker.FrameReady || b == worker.FrameNotReady }

// frames checks bytes the worker sent while c carried no job: with the
// ready feature they must all be frames, and it returns the last one;
// without it any byte breaks the protocol.
func (c *workerConn) frames(b []byte) (byte, error) {
	if !c.info.features.ready {
		return 0, errOutOfTurn
	}
	if !c.budget.take(len(b)) {
		return 0, errFrameFlood
	}
	for _, x := range b {
		if !isFrame(x) {
			return 0, errOutOfTurn
		}
	}
	return b[len(b)-1], nil
}

// readFrames reads what the worker sent on c, which carries no job, and
// returns the last frame (0 for none), or why c cannot be used. A plain
// socket is read without waiting; on TLS it waits up to wait for a record
// whose start has arrived. Only c's reader calls it.
func (c *workerConn) readFrames(wait time.Duration) (byte, error) {
	if c.tls {
		return c.readTLSFrames(wait)
	}
	return c.readSocketFrames()
}

// readSocketFrames reads frames from c's plain socket until it holds no
// more; the watcher may call it under the pool's lock.
func (c *workerConn) readSocketFrames() (byte, error) {
	var buf [frameBuf]byte
	var last byte
	for {
		n, err := c.recvNow(buf[:])
		if n > 0 {
			f, ferr := c.frames(buf[:n])
			if ferr != nil {
				return 0, ferr
			}
			last = f
			if n == len(buf) {
				continue
			}
			return last, nil
		}
		switch {
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, errNoPeek):
			return last, nil
		case err == nil:
			return 0, errHungUp
		}
		return 0, err
	}
}

// readTLSFrames reads frames through TLS: the first read waits up to wait
// for a record to end, the next ones take only what TLS holds already.
// (TLS may have read the worker's frames from the socket along with the
// end of a response, where no watcher can see them.) A record without
// data, such as a key update, is no frame.
func (c *workerConn) readTLSFrames(wait time.Duration) (byte, error) {
	var buf [frameBuf]byte
	var last byte
	defer c.conn.SetReadDeadline(time.Time{})
	deadline := time.Now().Add(wait)
	for {
		_ = c.conn.SetReadDeadline(deadline)
		n, err := c.conn.Read(buf[:])
		if n > 0 {
			f, ferr := c.frames(buf[:n])
			if ferr != nil {
				return 0, ferr
			}
			last = f
			deadline = aLongTimeAgo
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			return last, nil
		case err == io.EOF:
			return 0, errHungUp
		}
		return 0, err
	}
}

// framesAfterResponse reads what the worker sent right behind the response
// that just ended on c: with the ready feature, frames, and it reports
// whether the last says ready (not before the worker says so).
func (c *workerConn) framesAfterResponse() (bool, error) {
	var last byte
	take := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		f, err := c.frames(b)
		last = f
		return err
	}
	if err := take(c.src.pending); err != nil {
		return false, err
	}
	c.src.pending = nil
	if c.br != nil && c.br.Buffered() > 0 {
		b, _ := c.br.Peek(c.br.Buffered())
		err := take(b)
		_, _ = c.br.Discard(len(b))
		if err != nil {
			return false, err
		}
	}
	if last != 0 {
		// The frame came with the response's end, as the worker sends
		// it: no need to ask the socket for more (a system call on every
		// job). A later frame, or a hang-up, is the idle watcher's to see.
		return last == worker.FrameReady, nil
	}
	f, err := c.readFrames(0)
	if err != nil {
		return false, err
	}
	return f == worker.FrameReady, nil
}

// frameVerdict is what a frame read from a connection just taken means to
// its taker.
func frameVerdict(f byte) error {
	if f == worker.FrameNotReady {
		return errNotReady
	}
	return nil
}

// readyLocked applies frame f, read from idle c by its watcher, and
// reports whether c is still idle: a connection that becomes ready goes to
// the next waiting request, if any. p.mu is held.
func (p *Pool) readyLocked(c *workerConn, f byte) bool {
	ready := c.ready
	switch f {
	case worker.FrameReady:
		ready = true
	case worker.FrameNotReady:
		ready = false
	}
	if ready == c.ready {
		return true
	}
	p.unlistLocked(c)
	c.ready = ready
	if ready {
		if w, ok := p.waiting.pop(p.limits.aging); ok {
			c.setState(stateReserved)
			w.ch <- c
			return false
		}
	}
	p.listLocked(c)
	return true
}

// watchedFrame applies frame f that c's goroutine watcher read, and
// reports whether c is still idle and watched.
func (p *Pool) watchedFrame(c *workerConn, f byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.getState() != stateIdle {
		return false
	}
	return p.readyLocked(c, f)
}
