//go:build linux

package reversehttp

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/reversehttp/reverse_http/worker"
)

// Idle connections are watched by one epoll instance for the whole process
// instead of a goroutine each: with ten thousand idle workers their parked
// goroutines' stacks were a third of the hub's memory. The poller is the
// pool's watcher in the sense of workerconn.go: it looks at a connection
// only while the connection is idle, and only by peeking, under the pool's
// lock; a taker disarms it before the job writes. A connection is
// registered once, when it joins its pool, with EPOLLONESHOT; put arms the
// registration when the connection becomes idle, but not when it goes
// straight to the next job. (Leaving the registration armed during jobs
// would cost no system call, but the response would wake the poller's
// goroutine for every job, which under load costs far more.) Readiness
// while the connection is idle means the worker hung up or talked out of
// turn: the connection leaves the pool at once. With the ready feature the
// poller reads a plain socket's readiness frames under the pool's lock
// (nobody else may read an idle connection, and the socket is
// non-blocking) and moves the connection between the pool's lists; a TLS
// connection's frames are read through TLS by a goroutine, as anything a
// TLS worker sends while idle is. Readiness reported while the connection
// is not idle (a late arm can cause it) is ignored and uses the
// registration up; put arms it again.
//
// The registration is level-triggered, so that a FIN or stray bytes that
// arrived while the connection was busy, and that nobody has read when it
// becomes idle, are reported as soon as it is armed. Events name a slot in
// the poller's table, never a descriptor, and the poller touches a
// descriptor only through the connection's syscall.RawConn, which keeps it
// from closing meanwhile: a descriptor number freed by one connection and
// reused by the next cannot be mistaken for the old one. Whatever an event
// says, the poller believes only the socket itself, peeked at while the
// pool's lock shows the connection idle: a stale event costs a look.

// idleEvents is what an idle connection's registration waits for. EPOLLHUP
// and EPOLLERR are always reported.
const idleEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// wakeSlot marks the poller's own eventfd in event data.
const wakeSlot = -1

// pollState is what the poller knows of one connection: its registration,
// its slot and the slot's generation. It does not change once set, so arming
// needs no lock.
type pollState struct {
	ev     unix.EpollEvent
	arm    func(fd uintptr)
	disarm func(fd uintptr)
}

// quietEvents disarm a registration: with nothing but EPOLLONESHOT in its
// mask, not even EPOLLHUP or EPOLLERR are reported.
var quietEvents = unix.EpollEvent{Events: unix.EPOLLONESHOT}

// poller is the process's idle-connection poller. Its goroutine runs only
// while it watches a connection, so that a process (or a test) with no
// worker connections has none.
var poller struct {
	initOnce sync.Once
	epfd     int
	wakefd   int // an eventfd that wakes the goroutine to see if it may end
	ok       bool

	mu      sync.Mutex
	slots   []*workerConn // by slot; nil where free
	gens    []uint32      // each slot's generation, bumped when it is freed
	free    []int32
	n       int // connections registered
	running bool
}

func pollerInit() bool {
	poller.initOnce.Do(func() {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			unix.Close(epfd)
			return
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeSlot}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
			unix.Close(wakefd)
			unix.Close(epfd)
			return
		}
		poller.epfd, poller.wakefd, poller.ok = epfd, wakefd, true
	})
	return poller.ok
}

// pollIdle registers c with the poller, which then watches it whenever it
// is idle. It reports false if c cannot be polled; a goroutine must then
// watch it. It is called once, before c is first handed out.
func (c *workerConn) pollIdle() bool {
	raw := c.raw
	if raw == nil || !pollerInit() {
		return false
	}
	c.poll.arm = func(fd uintptr) {
		// The registration exists until c closes, and c is open while
		// the RawConn runs this; an error would mean it is closing.
		_ = unix.EpollCtl(poller.epfd, unix.EPOLL_CTL_MOD, int(fd), &c.poll.ev)
	}
	c.poll.disarm = func(fd uintptr) {
		_ = unix.EpollCtl(poller.epfd, unix.EPOLL_CTL_MOD, int(fd), &quietEvents)
	}

	poller.mu.Lock()
	var slot int32
	if k := len(poller.free); k > 0 {
		slot = poller.free[k-1]
		poller.free = poller.free[:k-1]
	} else {
		slot = int32(len(poller.slots))
		poller.slots = append(poller.slots, nil)
		poller.gens = append(poller.gens, 0)
	}
	poller.slots[slot] = c
	c.poll.ev = unix.EpollEvent{Events: idleEvents, Fd: slot, Pad: int32(poller.gens[slot])}
	poller.n++
	if !poller.running {
		poller.running = true
		go pollLoop()
	}
	poller.mu.Unlock()

	// Registered armed: an event before c is idle is ignored, and put
	// arms it again when c becomes idle.
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		err = unix.EpollCtl(poller.epfd, unix.EPOLL_CTL_ADD, int(fd), &c.poll.ev)
	}); cerr != nil {
		err = cerr
	}
	if err != nil {
		freeSlot(slot)
		c.poll = pollState{}
		return false
	}
	c.polled = true
	return true
}

// arm asks the poller to report c once it is readable. put calls it when
// c becomes idle, and checkIdle after a stale report. Arming may run late,
// when c has been taken again or closed: the poller then ignores what it
// reports.
func (c *workerConn) arm() {
	_ = c.raw.Control(c.poll.arm)
}

// disarm quiets c's registration for a job that is about to run on c, so
// that its response does not wake the poller. Only c's taker calls it.
func (c *workerConn) disarm() {
	_ = c.raw.Control(c.poll.disarm)
}

// unpoll takes c out of the poller before its connection closes.
func (c *workerConn) unpoll() {
	if !c.polled {
		return
	}
	// This fails only if the connection was closed underneath the pool,
	// which already ended the registration.
	_ = c.raw.Control(func(fd uintptr) {
		_ = unix.EpollCtl(poller.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	freeSlot(c.poll.ev.Fd)
}

func freeSlot(slot int32) {
	poller.mu.Lock()
	poller.slots[slot] = nil
	poller.gens[slot]++
	poller.free = append(poller.free, slot)
	poller.n--
	if poller.n == 0 {
		// Let the goroutine end. It is running: it ends only when
		// nothing is registered, under this lock.
		var one = [8]byte{1}
		_, _ = unix.Write(poller.wakefd, one[:])
	}
	poller.mu.Unlock()
}

// pollLoop waits for idle connections to become readable, and ends when
// the poller watches none.
func pollLoop() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(poller.epfd, events, -1)
		if err != nil {
			if err != unix.EINTR {
				// Nothing the program does causes this; do not spin.
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		for _, ev := range events[:n] {
			if ev.Fd == wakeSlot {
				var buf [8]byte
				_, _ = unix.Read(poller.wakefd, buf[:])
				poller.mu.Lock()
				if poller.n == 0 {
					poller.running = false
					poller.mu.Unlock()
					return
				}
				poller.mu.Unlock()
				continue
			}
			poller.mu.Lock()
			var c *workerConn
			if int(ev.Fd) < len(poller.slots) && poller.gens[ev.Fd] == uint32(ev.Pad) {
				c = poller.slots[ev.Fd]
			}
			poller.mu.Unlock()
			if c != nil {
				c.pool.checkIdle(c)
			}
		}
	}
}

// checkIdle looks at c after the poller reported it readable. An idle
// connection with something to read (bytes, end of file or an error)
// leaves the pool; otherwise the report was stale and c is armed again. A
// report about a connection that is not idle is ignored: its registration,
// used up, is armed again when c next becomes idle.
func (p *Pool) checkIdle(c *workerConn) {
	p.mu.Lock()
	if c.getState() != stateIdle {
		p.mu.Unlock()
		return
	}
	if c.info.features.ready && !c.tls {
		// Frames, read now: nobody else reads c while it is idle.
		f, err := c.readSocketFrames()
		if err == nil {
			idle := p.readyLocked(c, f)
			p.mu.Unlock()
			if idle {
				c.arm()
			}
			return
		}
		p.forget(c)
		p.mu.Unlock()
		c.leavingIdle(err)
		c.close()
		p.logDropped(c, err)
		return
	}
	// While c is idle under the lock nobody reads from it, so whatever
	// the socket holds arrived out of turn (or is a TLS record).
	n, err := c.peek()
	if err == unix.EAGAIN {
		p.mu.Unlock()
		c.arm()
		return
	}
	if n > 0 && c.tls {
		// The bytes may be a TLS record that carries no data (a
		// close_notify before a hang-up, or a key update on a connection
		// that stays), or readiness frames: TLS must read them to tell.
		// The poller takes c as a request would, so that no job does
		// meanwhile, and reads in a goroutine of its own while it goes
		// on.
		ready := c.ready
		p.takeIdleLocked(c)
		p.mu.Unlock()
		go p.checkTLS(c, ready)
		return
	}
	p.forget(c)
	p.mu.Unlock()
	switch {
	case n > 0:
		err = errOutOfTurn
	case err == nil:
		err = errHungUp
	}
	c.leavingIdle(err)
	c.close()
	p.logDropped(c, err)
}

// checkTLS reads what a worker sent on its idle TLS connection c, which
// checkIdle took when its readiness was ready. A record without data puts
// c back as it was; readiness frames put it back as they say.
func (p *Pool) checkTLS(c *workerConn, ready bool) {
	_ = c.unwatch()
	var err error
	if c.info.features.ready {
		var f byte
		if f, err = c.readTLSFrames(tlsCheckTimeout); f != 0 {
			ready = f == worker.FrameReady
		}
	} else {
		err = c.readTLSRecord(tlsCheckTimeout)
	}
	if err != nil {
		c.leavingIdle(err)
		p.release(c, false)
		p.logDropped(c, err)
		return
	}
	p.putAs(c, ready)
}

// tlsCheckTimeout bounds how long checkTLS waits for a TLS record to end.
const tlsCheckTimeout = time.Second
