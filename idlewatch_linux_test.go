//go:build linux

package reversehttp

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// polled reports how many of p's connections the poller watches, and how
// many p has.
func polled(p *Pool) (n, of int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if c.polled {
			n++
		}
	}
	return n, len(p.conns)
}

// requirePolled fails the test unless the poller watches all of p's
// connections, so that a test of the poller does not pass by falling back
// to watcher goroutines.
func requirePolled(t *testing.T, p *Pool) {
	t.Helper()
	if n, of := polled(p); n != of {
		t.Fatalf("the poller watches %d of %d connections", n, of)
	}
}

// pollerState returns how many connections the poller watches and whether
// its goroutine runs.
func pollerState() (int, bool) {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	return poller.n, poller.running
}

// TestIdleWatchNoGoroutines checks that idle connections hold no goroutine
// each, and that the poller's own goroutine ends with the last of them.
func TestIdleWatchNoGoroutines(t *testing.T) {
	watched, _ := pollerState()
	before := runtime.NumGoroutine()
	p := testPool(10)
	const n = 200
	workers := make([]net.Conn, n)
	for i := range workers {
		workers[i] = workerSide(t, p)
	}
	waitFor(t, "idle connections", func() bool { return p.Stats().Idle == n })
	requirePolled(t, p)
	if grew := runtime.NumGoroutine() - before; grew > n/10 {
		t.Fatalf("%d idle connections added %d goroutines", n, grew)
	}
	if n, running := pollerState(); n != watched+200 || !running {
		t.Fatalf("the poller watches %d connections (running: %v), want %d", n, running, watched+200)
	}
	for _, w := range workers {
		w.Close()
	}
	waitFor(t, "hung-up connections to leave", func() bool { return p.Stats().Idle == 0 })
	waitFor(t, "the poller to let go of them", func() bool { n, _ := pollerState(); return n == watched })
	if watched > 0 {
		t.Logf("an earlier test left %d connections with the poller; its goroutine stays", watched)
		return
	}
	waitFor(t, "the poller goroutine to end", func() bool { _, running := pollerState(); return !running })
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// TestIdleWatchHangupOnceIdle checks that what a worker sends while a job
// holds its connection, and nobody reads, is seen as soon as the connection
// goes back idle: the registration is level-triggered and armed again.
// Whether the poller noticed the bytes while the connection was busy (and
// ignored them) or not yet must not matter.
func TestIdleWatchHangupOnceIdle(t *testing.T) {
	for _, tc := range []struct {
		name string
		act  func(w net.Conn)
	}{
		{"hang-up", func(w net.Conn) { w.Close() }},
		{"chatter", func(w net.Conn) { w.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")) }},
	} {
		for _, settle := range []time.Duration{0, 50 * time.Millisecond} {
			t.Run(tc.name+"/settle="+settle.String(), func(t *testing.T) {
				p := testPool(10)
				w := workerSide(t, p)
				waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
				requirePolled(t, p)
				c, err := p.acquire(t.Context(), far(), false)
				if err != nil {
					t.Fatal(err)
				}
				tc.act(w)
				time.Sleep(settle) // the poller reports c while it is busy
				if s := p.Stats(); s.Busy != 1 {
					t.Fatalf("a busy connection must stay with its job: %+v", s)
				}
				p.put(c)
				waitFor(t, "the connection to leave", func() bool { return p.Stats().Idle == 0 })
			})
		}
	}
}

// TestIdleWatchJobsAfterIdle runs jobs on a connection that waited idle in
// the poller between them: responses flow, the poller's reports of them
// (which arrive while the connection is busy) do not drop it, and it is
// still watched afterwards.
func TestIdleWatchJobsAfterIdle(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	done := serveCanned(w)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p)
	for i := range 50 {
		if i%10 == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		roundTripCanned(t, p)
		if s := p.Stats(); s.Idle != 1 || s.Busy != 0 {
			t.Fatalf("after job %d: %+v", i, s)
		}
	}
	time.Sleep(20 * time.Millisecond) // for any late report
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("a healthy connection left the pool: %+v", s)
	}
	w.Close()
	<-done
	waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
}

// TestIdleWatchDescriptorReuse closes and opens connections quickly, so that
// descriptor numbers and poller slots are reused, some connections closed
// by the hub, some by their worker, and one underneath the pool. The
// connections left must each still be watched: none dropped unasked, and
// each dropped when its own worker hangs up.
func TestIdleWatchDescriptorReuse(t *testing.T) {
	p := testPool(10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	connect := func() net.Conn {
		t.Helper()
		w, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		return w
	}
	accept := func() net.Conn {
		t.Helper()
		h, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		p.add(h, bufio.NewReader(h), workerInfo{name: "test"})
		return h
	}
	dial := func() (worker, hub net.Conn) {
		t.Helper()
		w := connect()
		return w, accept()
	}

	// A connection closed underneath the pool: the kernel ends its
	// registration, and its descriptor number goes to the next connection
	// the hub accepts. When the pool lets go of the old connection later,
	// the poller must not touch the new one's registration.
	_, under := dial()
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	underFD := fdOf(t, under)
	w := connect()
	under.Close()
	reused := accept()
	if fd := fdOf(t, reused); fd != underFD {
		t.Logf("the new connection got descriptor %d, not %d", fd, underFD)
	}
	// The connection closed underneath is the oldest, but the check a
	// taker makes skips it: the next one is handed out.
	if c, err := p.acquire(t.Context(), far(), false); err != nil || c.conn != reused {
		t.Fatalf("got %v, %v; want the connection accepted last", c, err)
	} else {
		p.release(c, false)
	}
	w.Close()
	waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
	_, under = dial()
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	under.Close()
	var underGone bool

	for i := range 300 {
		w, _ := dial()
		switch i % 3 {
		case 0: // the worker hangs up
			w.Close()
			want := 1 // the one closed underneath, until a taker met it
			if underGone {
				want = 0
			}
			waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == want })
		case 1: // the hub closes it after a job
			c, err := p.acquire(t.Context(), far(), false)
			if err != nil {
				t.Fatal(err)
			}
			if c.conn == under {
				t.Fatal("acquire handed out the connection closed underneath the pool")
			}
			underGone = true // the taker's check dropped it
			p.release(c, false)
			w.Close()
		case 2: // the hub closes it while idle, as a drain does
			p.mu.Lock()
			var c *workerConn
			for k := range p.conns {
				if k.conn.RemoteAddr().String() == w.LocalAddr().String() {
					c = k
				}
			}
			p.forget(c)
			p.mu.Unlock()
			c.close()
			w.Close()
		}
	}
	if s := p.Stats(); !underGone || s.Idle != 0 {
		t.Fatalf("after the churn: %+v", s)
	}

	const n = 20
	workers := make([]net.Conn, n)
	for i := range workers {
		workers[i], _ = dial()
	}
	waitFor(t, "idle", func() bool { return p.Stats().Idle == n })
	requirePolled(t, p)
	time.Sleep(20 * time.Millisecond)
	if s := p.Stats(); s.Idle != n {
		t.Fatalf("healthy connections left the pool: %+v", s)
	}
	for i, w := range workers {
		w.Close()
		waitFor(t, "a hung-up connection to leave", func() bool { return p.Stats().Idle == n-1-i })
	}
}

// fdOf returns conn's descriptor number, or -1 once it is closed.
func fdOf(t *testing.T, conn net.Conn) int {
	t.Helper()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// TestIdleWatchTLS checks a TLS worker connection: watched by the poller
// through the TCP connection under it, serving jobs, and dropped when the
// worker hangs up (with a close_notify first, which the poller sees as
// bytes).
func TestIdleWatchTLS(t *testing.T) {
	p := testPool(10)
	w, _ := tlsWorker(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p)
	done := serveCanned(w)
	for range 5 {
		roundTripCanned(t, p)
	}
	time.Sleep(20 * time.Millisecond)
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("a healthy TLS connection left the pool: %+v", s)
	}
	w.Close()
	<-done
	waitFor(t, "the hung-up TLS connection to leave", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 0 })

	// A worker that talks out of turn leaves too.
	w, _ = tlsWorker(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	w.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
	waitFor(t, "the misbehaving TLS connection to leave", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 0 })
	w.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Read(make([]byte, 1)); err == nil {
		t.Fatal("the hub should have closed the connection")
	}
}

// TestIdleWatchTLSNoData checks that bytes on an idle TLS connection that
// make no data (here, the start of a record that never ends) do not drop
// it, as they did not when a goroutine watched it: TLS is asked, and the
// connection goes back to the pool, watched again.
func TestIdleWatchTLSNoData(t *testing.T) {
	p := testPool(10)
	_, raw := tlsWorker(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p)
	raw.Write([]byte{23}) // the first byte of an application data record
	waitFor(t, "the connection to be set aside", func() bool { return p.Stats().Busy == 1 })
	waitFor(t, "the connection to come back", func() bool { s := p.Stats(); return s.Idle == 1 && s.Busy == 0 })
	raw.Close()
	waitFor(t, "the hung-up TLS connection to leave", func() bool { return p.Stats().Idle == 0 })
}

// TestIdleWatchStaleReport checks what the poller does with a report that
// is stale by the time it looks (the bytes it reported were a response a
// job has since read): the connection stays in the pool, and its
// registration, which the report used up, is armed again.
func TestIdleWatchStaleReport(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p)
	var c *workerConn
	p.mu.Lock()
	for c = range p.conns {
	}
	p.mu.Unlock()
	// Disarm the registration as a report would have.
	disarm := unix.EpollEvent{Events: unix.EPOLLONESHOT, Fd: c.poll.ev.Fd, Pad: c.poll.ev.Pad}
	var err error
	if cerr := c.raw.Control(func(fd uintptr) {
		err = unix.EpollCtl(poller.epfd, unix.EPOLL_CTL_MOD, int(fd), &disarm)
	}); cerr != nil || err != nil {
		t.Fatal(cerr, err)
	}
	p.checkIdle(c) // the stale report
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("a stale report dropped a healthy connection: %+v", s)
	}
	w.Close()
	waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
}

// TestIdleWatchJobsBackToBack runs jobs from several goroutines over one
// connection, so that it goes from job to job without being idle (its
// registration stays quiet) as well as through the idle set, and checks
// that it is watched once it is idle for good.
func TestIdleWatchJobsBackToBack(t *testing.T) {
	p := testPool(100)
	w := workerSide(t, p)
	done := serveCanned(w)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				roundTripCanned(t, p)
			}
		})
	}
	wg.Wait()
	if s := p.Stats(); s.Idle != 1 || s.Busy != 0 {
		t.Fatalf("after the jobs: %+v", s)
	}
	w.Close()
	<-done
	waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
}

// TestIdleWatchHangupRightAfterResponse has the worker hang up as soon as
// it has sent a response that keeps the connection open: the FIN arrives
// while the job still holds the connection, and the connection must leave
// the pool as soon as the job gives it back.
func TestIdleWatchHangupRightAfterResponse(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p)
	go func() {
		br := bufio.NewReader(w)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		w.Write([]byte(cannedResponse))
		w.Close()
	}()
	roundTripCanned(t, p)
	waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
}

// TestIdleWatchHangupBetweenJobs has a worker hang up right after a response
// that keeps its connection open, while another request waits for that
// connection: the waiting request, a GET without an idempotency key, must
// go to the next worker rather than fail.
func TestIdleWatchHangupBetweenJobs(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	requirePolled(t, p) // without the poller nothing checks the socket between jobs
	answerOnce(w, cannedResponse)
	first := startJob(t, p)
	second := make(chan struct{})
	go func() {
		defer close(second)
		roundTripCanned(t, p)
	}()
	waitFor(t, "the second request to wait", func() bool { return p.Stats().Waiting == 1 })
	w.Close()
	// Let the FIN arrive before the connection changes hands.
	waitFor(t, "the hang-up to reach the hub", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.conns {
			if n, err := c.peek(); n == 0 && err == nil {
				return true
			}
		}
		return false
	})
	io.Copy(io.Discard, first.Body)
	first.Body.Close()
	serveCanned(workerSide(t, p))
	<-second
}

// TestIdleWatchTLSHangupBetweenJobs is TestIdleWatchHangupBetweenJobs over
// TLS: the worker's close_notify reaches the hub before its FIN, and the
// check before the next job must read it as the hang-up it is, so that the
// waiting GET goes to the next worker instead of failing with 502.
func TestIdleWatchTLSHangupBetweenJobs(t *testing.T) {
	p := testPool(10)
	w, _ := tlsWorker(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	answerOnce(w, cannedResponse)
	first := startJob(t, p)
	second := make(chan struct{})
	go func() {
		defer close(second)
		roundTripCanned(t, p)
	}()
	waitFor(t, "the second request to wait", func() bool { return p.Stats().Waiting == 1 })
	w.Close() // close_notify, then FIN
	waitFor(t, "the hang-up to reach the hub", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.conns {
			if n, err := c.peek(); n > 0 && err == nil {
				return true
			}
		}
		return false
	})
	io.Copy(io.Discard, first.Body)
	first.Body.Close()
	serveCanned(workerSide(t, p))
	<-second
}
