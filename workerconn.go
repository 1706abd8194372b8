package reversehttp

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A worker connection's life, in one place.
//
//	          ┌──────────────── put (nobody waits) ◀─────────────────┐
//	          ▼                                                      │
//	        idle ──take──▶ reserved ──begin──▶ writing ──▶ awaiting ──▶ streaming
//	          │               │  ▲                                        │
//	          │               │  └──── put (a request waits) ◀────────────┘
//	          └───────────────┴──── close (from any state) ──▶ closed
//
// The ownership rule, the same on every platform: whoever holds a
// connection is the only one that reads from it. The pool holds an idle
// connection, and its watcher looks at the socket on the pool's behalf (the
// process's epoll instance on Linux, which only peeks; elsewhere a goroutine
// blocked in Read). Taking a connection out of the idle list, under the
// pool's lock, makes the taker its holder, and the taker stops the watcher
// before it touches the socket (unwatch). A job holds its connection from
// reserved to the end of its response, then gives it back (put: to the
// oldest waiting request, or to the idle list) or closes it. Closing is the
// one thing anybody may do at any time: a consumer that goes away, a
// response timeout and a drain all close the connection under its holder,
// whose next read or write then fails.
//
// The state is kept in an atomic so that anybody may read it (stats, the
// admin API); it changes only by the holder, or under the pool's lock when
// the connection enters or leaves the idle list.
//
// Readiness (readiness.go) splits idle in two without adding a state. With
// the ready feature, an idle connection is ready (in the pool's idle list,
// where requests take it) or not ready (in the unready list, where nobody
// takes it), as its worker's last frame said; it enters idle not ready
// after every response, unless frames right behind the response say
// otherwise. The watcher reads frames, which is the one thing it may read
// (anything else out of turn still closes the connection), and moves the
// connection between the lists under the pool's lock: one that becomes
// ready goes straight to a waiting request (idle → reserved), whose taker
// then stops the watcher and checks it as from the idle list. Without the
// feature an idle connection is always ready.

type connState uint32

const (
	stateReserved  connState = iota // taken for a request; nothing written yet
	stateIdle                       // in the pool's idle list; the watcher looks at it
	stateWriting                    // the request is being written
	stateAwaiting                   // the request is written (its head at least); no response yet
	stateStreaming                  // the response head is read; its body streams to the consumer
	stateClosed
)

var stateNames = [...]string{"reserved", "idle", "writing", "awaiting", "streaming", "closed"}

func (s connState) String() string { return stateNames[s] }

// workerConn is one connection a worker holds to a pool: one slot.
type workerConn struct {
	pool *Pool
	conn net.Conn
	info workerInfo
	// key names the worker behind the connection (its name and host), so
	// that a request a worker declined can prefer another one.
	key string

	state atomic.Uint32

	// Guarded by pool.mu.
	idleNode node[*workerConn]
	// retired says that c carries no further job: it closes when its
	// running job ends (see retireIf).
	retired bool
	// watched says that a watcher looks at c, or has since c last became
	// idle: the poller's registration is armed, or a goroutine runs. Set
	// by put under the lock, cleared by the taker (see unwatch).
	// watchDone receives the goroutine's verdict.
	watched   bool
	watchDone chan error
	// ready says that the worker offers c for a job: its last frame said
	// so, or c has no ready feature. Guarded by pool.mu while c is idle,
	// its holder's otherwise; it says which list idleNode is on.
	ready bool
	// budget bounds the readiness frames c's worker sends; only c's
	// reader touches it.
	budget frameBudget

	// raw is the socket under conn, nil if conn is not one; tls says that
	// conn is crypto/tls over it.
	raw syscall.RawConn
	tls bool
	// polled says that the process's poller watches c while it is idle
	// (see idlewatch_linux.go); poll is its registration.
	polled bool
	poll   pollState

	// br reads responses. It is attached when a response begins and goes
	// back to a shared pool when the job ends, so that an idle connection,
	// or one whose job waits for a slow worker, holds no read buffer: with
	// thousands of connections that is most of their memory. Only the
	// holder touches br and src.
	br  *bufio.Reader
	src connSource

	closeOnce sync.Once

	obs connObs // what operators see of it (workers.go)
}

func newWorkerConn(p *Pool, conn net.Conn, info workerInfo) *workerConn {
	c := &workerConn{pool: p, conn: conn, info: info}
	c.idleNode.val = c
	c.src.conn = conn
	c.raw, c.tls = socketOf(conn)
	c.key = info.name + "@" + hostOf(conn.RemoteAddr())
	c.ready = !info.features.ready
	c.state.Store(uint32(stateReserved))
	return c
}

func hostOf(a net.Addr) string {
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// socketOf returns the socket under conn and whether conn is TLS over it.
// Only connections whose every buffered byte the pool can see qualify: a
// plain TCP or Unix connection, or crypto/tls over one (a TLS connection
// buffers only what a worker sends out of turn).
func socketOf(conn net.Conn) (syscall.RawConn, bool) {
	wrapped := false
	if tc, ok := conn.(*tls.Conn); ok {
		conn, wrapped = tc.NetConn(), true
	}
	var sc syscall.Conn
	switch conn := conn.(type) {
	case *net.TCPConn:
		sc = conn
	case *net.UnixConn:
		sc = conn
	default:
		return nil, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	return raw, wrapped
}

func (c *workerConn) getState() connState { return connState(c.state.Load()) }

func (c *workerConn) setState(s connState) { c.state.Store(uint32(s)) }

func (c *workerConn) remote() string { return c.conn.RemoteAddr().String() }

// close closes the connection; anybody may call it, any number of times.
func (c *workerConn) close() {
	c.closeOnce.Do(func() {
		c.setState(stateClosed)
		// The poller lets go of the connection before it closes, while
		// its descriptor cannot yet belong to another connection.
		c.unpoll()
		c.conn.Close()
		c.pool.obs.left(c)
	})
}

// Errors that say a connection cannot carry a job, found before anything
// was written to it.
var (
	errHungUp    = errors.New("worker closed the connection")
	errOutOfTurn = errors.New("worker sent data nobody asked for")
	// errBeyondResponse: data, or what is not a frame, right behind a
	// response.
	errBeyondResponse = errors.New("worker sent more than its response")
)

// watchLocked starts watching c, which has just become idle. p.mu is held:
// a goroutine watcher starts here; the poller is armed by put once the lock
// is released.
func (c *workerConn) watchLocked() {
	c.watched = true
	if c.polled {
		return
	}
	c.watchDone = make(chan error, 1)
	go c.watchLoop(c.watchDone)
}

// watchLoop is the goroutine watcher of a connection no poller can watch.
// It waits for the idle connection to become readable: a worker that hangs
// up while idle leaves the pool at once, and readiness frames move it
// between the pool's lists. A taker stops it by making its Read time out
// (see unwatch), and learns from done what frames read meanwhile said; any
// other outcome means the connection is finished, idle or not.
func (c *workerConn) watchLoop(done chan<- error) {
	var buf [frameBuf]byte
	for {
		n, err := c.conn.Read(buf[:])
		if n > 0 {
			f, ferr := c.frames(buf[:n])
			switch {
			case ferr != nil:
				err = ferr
			case !c.pool.watchedFrame(c, f):
				// Taken meanwhile, or handed to a request by the frame.
				done <- frameVerdict(f)
				return
			case err == nil:
				continue
			}
		}
		switch {
		case errors.Is(err, errOutOfTurn) || errors.Is(err, errFrameFlood):
		case err == nil || errors.Is(err, os.ErrDeadlineExceeded):
			// Stopped by the taker (a read of zero bytes without an
			// error does not happen on a stream, but would not be news
			// either).
			done <- nil
			return
		case err == io.EOF:
			err = errHungUp
		}
		c.pool.dropIdle(c, err)
		done <- err
		return
	}
}

// unwatch stops c's watcher, if one watched c since it last became idle;
// c's taker calls it before anything else. It returns why c cannot be
// used, if the watcher found out meanwhile.
func (c *workerConn) unwatch() error {
	if !c.watched {
		return nil
	}
	c.watched = false
	if c.polled {
		c.disarm()
		return nil
	}
	_ = c.conn.SetReadDeadline(aLongTimeAgo)
	err := <-c.watchDone
	_ = c.conn.SetReadDeadline(time.Time{})
	return err
}

var aLongTimeAgo = time.Unix(1, 0)

// check reports why c, which its holder is about to write a job to, cannot
// carry it: the worker hung up, sent bytes out of turn, or withdrew its
// offer (errNotReady) while nobody looked (between two jobs, or just
// before the watcher could tell). nil means c looks fine; a connection
// that cannot be peeked at always does.
func (c *workerConn) check() error {
	if c.src.buffered() || (c.br != nil && c.br.Buffered() > 0) {
		return errOutOfTurn
	}
	n, err := c.peek()
	switch {
	case errors.Is(err, errNoPeek) || errors.Is(err, syscall.EAGAIN):
		return nil
	case err != nil:
		return err
	case n == 0:
		return errHungUp
	case c.info.features.ready:
		f, err := c.readFrames(tlsRecordWait)
		if err != nil {
			return err
		}
		return frameVerdict(f)
	case c.tls:
		// Perhaps a TLS record that carries no data: the worker's
		// close_notify before it hangs up, or a key update. Let TLS say.
		return c.readTLSRecord(tlsRecordWait)
	}
	return errOutOfTurn
}

// tlsRecordWait bounds the wait for the rest of a TLS record whose start
// has arrived. Records are small and arrive whole, so this is seldom
// waited for at all.
const tlsRecordWait = 250 * time.Millisecond

// readTLSRecord reads what a worker sent on its TLS connection when it was
// not asked anything. Data or an error (end of file after a close_notify
// included) make the connection unusable; a record without data does not.
// Only c's holder calls it.
func (c *workerConn) readTLSRecord(wait time.Duration) error {
	var one [1]byte
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	n, err := c.conn.Read(one[:])
	_ = c.conn.SetReadDeadline(time.Time{})
	switch {
	case n > 0:
		return errOutOfTurn
	case err == nil || errors.Is(err, os.ErrDeadlineExceeded):
		// No data came, and TLS saw no end: the connection stays. (A
		// record cut short stays in the TLS connection's buffer, to be
		// read by the next job.)
		return nil
	case err == io.EOF:
		return errHungUp
	}
	return err
}

// awaitResponse waits until the worker sends the first byte of a response,
// or the connection fails. Without a reader attached it reads one byte,
// which the reader attached next reads first, so that a job waiting for a
// slow worker holds no read buffer. Before the job's first response,
// readiness frames are passed over: the worker sent them before it read
// the job.
func (c *workerConn) awaitResponse(first bool) error {
	if c.src.buffered() || (c.br != nil && c.br.Buffered() > 0) {
		return nil
	}
	if c.br != nil {
		_, err := c.br.Peek(1)
		return err
	}
	for {
		n, err := c.conn.Read(c.src.one[:])
		if n > 0 && first && isFrame(c.src.one[0]) {
			if _, ferr := c.frames(c.src.one[:n]); ferr != nil {
				return ferr
			}
			if err == nil {
				continue
			}
		} else if n > 0 {
			c.src.pending = c.src.one[:n]
			return nil
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
}

// reader returns c's response reader, attaching one if need be, with the
// response head's size bound set: limit bytes may be read before the head
// must have ended. Only the holder calls it, after awaitResponse.
func (c *workerConn) reader(limit int64) *bufio.Reader {
	c.src.limit = limit
	if c.br == nil {
		c.br = readers.Get().(*bufio.Reader)
		c.br.Reset(&c.src)
	}
	return c.br
}

// bodyFollows lifts the head's size bound: the body is the consumer's to
// bound, as with reverse_proxy.
func (c *workerConn) bodyFollows() { c.src.limit = -1 }

// leftover reports whether bytes the worker sent wait in c's buffers, read
// from the connection but not by a job: bytes beyond the response.
func (c *workerConn) leftover() bool {
	return c.src.buffered() || (c.br != nil && c.br.Buffered() > 0)
}

// detachReader gives c's reader back at the end of a job that read all
// the worker sent.
func (c *workerConn) detachReader() {
	if c.br != nil {
		c.br.Reset(nil)
		readers.Put(c.br)
		c.br = nil
	}
}

// readers are the response readers of connections running jobs.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// errHeadTooLarge ends a response head longer than the pool allows.
var errHeadTooLarge = errors.New("worker's response head is too large")

// connSource is what a connection's response reader reads: first the byte
// awaitResponse read while it waited for the response to begin, then the
// connection, of which at most limit bytes while a head is read.
type connSource struct {
	conn    net.Conn
	pending []byte
	one     [1]byte
	limit   int64 // bytes the head may still take; negative: no bound
}

func (s *connSource) buffered() bool { return len(s.pending) > 0 }

func (s *connSource) Read(p []byte) (int, error) {
	if s.limit == 0 {
		return 0, errHeadTooLarge
	}
	if s.limit > 0 && int64(len(p)) > s.limit {
		p = p[:s.limit]
	}
	var n int
	var err error
	if len(s.pending) > 0 {
		n = copy(p, s.pending)
		s.pending = s.pending[n:]
	} else {
		n, err = s.conn.Read(p)
	}
	if s.limit > 0 {
		s.limit -= int64(n)
	}
	return n, err
}

// errNoPeek says that a connection's socket cannot be peeked at.
var errNoPeek = errors.New("connection cannot be peeked at")
