package reversehttp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// workerSide connects a loopback connection to p as a worker would and
// returns the worker's end.
func workerSide(t *testing.T, p *Pool) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The pool closes its end, as it would in use: closing it underneath
	// the pool would leave it registered with the poller (see pollIdle).
	t.Cleanup(func() { w.Close(); p.drain(); h.Close() })
	p.add(h, bufio.NewReader(h), workerInfo{name: "test"})
	return w
}

func testPool(maxQueue int) *Pool {
	p := newPool("test")
	p.configure(poolLimits{maxQueue: maxQueue, queueTimeout: time.Minute, maxResponseHeader: DefaultMaxResponseHeader, maxAttempts: DefaultMaxAttempts}, zap.NewNop())
	return p
}

func far() time.Time { return time.Now().Add(time.Minute) }

func TestPoolFIFO(t *testing.T) {
	p := testPool(100)
	const n = 5
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.acquire(context.Background(), far(), false)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			p.put(c)
		}()
		waitFor(t, "request to queue", func() bool { return p.Stats().Waiting == i+1 })
	}
	workerSide(t, p) // one connection serves them all, oldest first
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("request %d got the connection in turn %d", got, want)
		}
		want++
	}
	if s := p.Stats(); s.Idle != 1 || s.Busy != 0 || s.Waiting != 0 {
		t.Fatalf("after the jobs the connection should be idle: %+v", s)
	}
}

func TestPoolIdleConnectionServesAtOnce(t *testing.T) {
	p := testPool(100)
	workerSide(t, p)
	waitFor(t, "idle connection", func() bool { return p.Stats().Idle == 1 })
	c, err := p.acquire(context.Background(), far(), false)
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.Busy != 1 || s.Idle != 0 {
		t.Fatalf("stats %+v", s)
	}
	p.release(c, false)
	if s := p.Stats(); s.Busy != 0 || s.Idle != 0 {
		t.Fatalf("a released, closed connection must leave the pool: %+v", s)
	}
}

func TestPoolMaxQueue(t *testing.T) {
	p := testPool(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 {
		go p.acquire(ctx, far(), false)
	}
	waitFor(t, "two queued", func() bool { return p.Stats().Waiting == 2 })
	if _, err := p.acquire(ctx, far(), false); !errors.Is(err, errQueueFull) {
		t.Fatalf("third request: got %v, want errQueueFull", err)
	}
	// A request that a worker declined keeps its place even in a full queue.
	go p.acquire(ctx, far(), true)
	waitFor(t, "requeued request", func() bool { return p.Stats().Waiting == 3 })
}

func TestPoolQueueTimeout(t *testing.T) {
	p := testPool(10)
	start := time.Now()
	_, err := p.acquire(context.Background(), time.Now().Add(50*time.Millisecond), false)
	if !errors.Is(err, errQueueTimeout) {
		t.Fatalf("got %v, want errQueueTimeout", err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("gave up before the deadline")
	}
	if p.Stats().Waiting != 0 {
		t.Fatal("timed-out request still queued")
	}
}

func TestPoolCancelWhileQueued(t *testing.T) {
	p := testPool(10)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.acquire(ctx, far(), false)
		errc <- err
	}()
	waitFor(t, "queued", func() bool { return p.Stats().Waiting == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if p.Stats().Waiting != 0 {
		t.Fatal("cancelled request still queued")
	}
	// The next connection is not dispatched to the cancelled request.
	workerSide(t, p)
	waitFor(t, "idle connection", func() bool { return p.Stats().Idle == 1 })
}

func TestPoolRequeueGoesFirst(t *testing.T) {
	p := testPool(10)
	got := make(chan string, 2)
	for _, who := range []struct {
		name string
		head bool
	}{{"old", false}, {"declined", true}} {
		go func() {
			c, err := p.acquire(context.Background(), far(), who.head)
			if err == nil {
				got <- who.name
				p.put(c)
			}
		}()
		want := 1
		if who.head {
			want = 2
		}
		waitFor(t, "queued", func() bool { return p.Stats().Waiting == want })
	}
	workerSide(t, p)
	if first := <-got; first != "declined" {
		t.Fatalf("%s went first; a requeued request must go to the head", first)
	}
	<-got
}

func TestPoolIdleHangupLeavesPool(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	workerSide(t, p)
	waitFor(t, "two idle", func() bool { return p.Stats().Idle == 2 })
	w.Close()
	waitFor(t, "hung-up connection to leave", func() bool { return p.Stats().Idle == 1 })
}

func TestPoolIdleChatterLeavesPool(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	w.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")) // out of turn
	waitFor(t, "misbehaving connection to leave", func() bool { return p.Stats().Idle == 0 })
	buf := make([]byte, 1)
	w.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Read(buf); err == nil {
		t.Fatal("the hub should have closed the connection")
	}
}

// TestPoolNeverOverbooks runs many concurrent requests over three
// connections and checks that no connection ever carries two jobs and no
// more than three run at once.
func TestPoolNeverOverbooks(t *testing.T) {
	p := testPool(1000)
	for range 3 {
		workerSide(t, p)
	}
	var running, peak atomic.Int32
	inUse := sync.Map{}
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.acquire(context.Background(), far(), false)
			if err != nil {
				t.Error(err)
				return
			}
			if _, dup := inUse.LoadOrStore(c, true); dup {
				t.Error("connection handed to two requests at once")
			}
			n := running.Add(1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(100 * time.Microsecond)
			running.Add(-1)
			inUse.Delete(c)
			p.put(c)
		}()
	}
	wg.Wait()
	if peak.Load() > 3 {
		t.Fatalf("%d jobs ran at once over 3 connections", peak.Load())
	}
	if s := p.Stats(); s.Idle != 3 || s.Busy != 0 {
		t.Fatalf("stats after the run: %+v", s)
	}
}

func TestPoolDrain(t *testing.T) {
	p := testPool(10)
	errc := make(chan error, 1)
	go func() {
		_, err := p.acquire(context.Background(), far(), false)
		errc <- err
	}()
	waitFor(t, "queued", func() bool { return p.Stats().Waiting == 1 })
	p.drain()
	if err := <-errc; !errors.Is(err, errPoolClosed) {
		t.Fatalf("queued request got %v, want errPoolClosed", err)
	}
	if _, err := p.acquire(context.Background(), far(), false); !errors.Is(err, errPoolClosed) {
		t.Fatalf("new request got %v, want errPoolClosed", err)
	}
	w := workerSide(t, p) // a worker arriving now is turned away
	w.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Read(make([]byte, 1)); err == nil {
		t.Fatal("a draining pool should close new worker connections")
	}
}

// roundTripCanned runs one bodiless job through the transport on p, whose
// worker answers with serveCanned. It may run in any goroutine.
func roundTripCanned(t *testing.T, p *Pool) {
	t.Helper()
	ctx := context.WithValue(t.Context(), jobCtxKey{}, &job{pool: p, limits: p.getLimits(), deadline: far()})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://worker/ping", nil)
	if err != nil {
		t.Error(err)
		return
	}
	resp, err := transport{}.RoundTrip(req)
	if err != nil {
		t.Error(err)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("status %d, body %q, error %v", resp.StatusCode, body, err)
	}
}

// TestPoolEarlyBytesLeavePool checks that a worker that speaks right after
// its handshake, before it was asked anything, is dropped at once.
func TestPoolEarlyBytesLeavePool(t *testing.T) {
	p := testPool(10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	h, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	w.Write([]byte("GET /jobs HTTP/1.1\r\nHost: hub\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"))
	br := bufio.NewReader(h)
	if _, err := http.ReadRequest(br); err != nil { // the handshake
		t.Fatal(err)
	}
	p.add(h, br, workerInfo{name: "early"})
	waitFor(t, "the connection to leave", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 0 })
	w.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Read(make([]byte, 1)); err == nil {
		t.Fatal("the hub should have closed the connection")
	}
}

// TestPoolUnpollableConnection checks a connection that no poller can
// watch (not a socket): a goroutine watches it, it serves jobs, and it
// leaves the pool when its worker hangs up while it is idle.
func TestPoolUnpollableConnection(t *testing.T) {
	p := testPool(10)
	h, w := net.Pipe()
	t.Cleanup(func() { w.Close(); h.Close() })
	p.add(h, bufio.NewReader(h), workerInfo{name: "pipe"})
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	done := serveCanned(w)
	for range 5 {
		roundTripCanned(t, p)
	}
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("after the jobs: %+v", s)
	}
	w.Close()
	<-done
	waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
}

// startJob runs a bodiless job through the transport on p and returns its
// response without reading the body.
func startJob(t *testing.T, p *Pool) *http.Response {
	t.Helper()
	ctx := context.WithValue(t.Context(), jobCtxKey{}, &job{pool: p, limits: p.getLimits(), deadline: far()})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://worker/ping", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := transport{}.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// answerOnce has a worker read one request on w and write reply.
func answerOnce(w net.Conn, reply string) {
	go func() {
		if _, err := http.ReadRequest(bufio.NewReader(w)); err == nil {
			w.Write([]byte(reply))
		}
	}()
}

// TestPoolBytesBeyondResponseGoNowhere has a worker send a second,
// unasked-for response right behind the first, while another request
// waits: the connection must close, not hand those bytes to the waiting
// request as its response.
func TestPoolBytesBeyondResponseGoNowhere(t *testing.T) {
	p := testPool(10)
	w := workerSide(t, p)
	waitFor(t, "idle", func() bool { return p.Stats().Idle == 1 })
	answerOnce(w, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"+
		"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET")
	first := startJob(t, p)
	second := make(chan struct{})
	go func() {
		defer close(second)
		roundTripCanned(t, p) // wants "ok", from the next worker
	}()
	waitFor(t, "the second request to wait", func() bool { return p.Stats().Waiting == 1 })
	if b, err := io.ReadAll(first.Body); err != nil || string(b) != "A" {
		t.Fatalf("first response %q, %v", b, err)
	}
	first.Body.Close()
	w.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Read(make([]byte, 1)); err == nil {
		t.Fatal("the hub should have closed the connection")
	}
	serveCanned(workerSide(t, p))
	<-second
}

// TestPoolRefusesWhatTheConfigInForceDoesNot adds connections whose
// handshake passed a listener of an older config: one whose token the
// config in force no longer holds is closed, not pooled.
func TestPoolRefusesWhatTheConfigInForceDoesNot(t *testing.T) {
	p := newPool("test")
	p.configure(poolLimits{queueTimeout: time.Minute, maxResponseHeader: DefaultMaxResponseHeader, maxAttempts: DefaultMaxAttempts,
		admits: func(a admission) bool { return string(a.token) == "new" }}, zap.NewNop())
	for _, tc := range []struct {
		token string
		kept  bool
	}{{"old", false}, {"new", true}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		w, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		h, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close(); h.Close() })
		p.add(h, bufio.NewReader(h), workerInfo{name: tc.token, admission: admission{token: []byte(tc.token)}})
		if tc.kept {
			if s := p.Stats(); s.Idle != 1 {
				t.Fatalf("token %q: %+v, want the connection idle", tc.token, s)
			}
			continue
		}
		w.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := w.Read(make([]byte, 1)); err == nil || p.Stats().Idle != 0 {
			t.Fatalf("token %q: the connection was kept (%+v)", tc.token, p.Stats())
		}
	}
	p.drain()
}
