package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newReadyHub is a test hub whose 101 agrees on FeatureAccept and
// FeatureReady.
func newReadyHub(t *testing.T) *testHub {
	hub := newTestHub(t)
	hub.configure(func(h *testHub) { h.features = "accept, ready" })
	return hub
}

// frame reads the next readiness frame the worker sends on s.
func (s *hubSide) frame(t *testing.T) byte {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(waitLimit))
	defer s.c.SetReadDeadline(time.Time{})
	b, err := s.br.ReadByte()
	if err != nil {
		t.Fatalf("waiting for a readiness frame: %v", err)
	}
	if b != FrameReady && b != FrameNotReady {
		t.Fatalf("read %q, want a readiness frame", b)
	}
	return b
}

// expectFrame reads frames until want, failing on anything else first.
func (s *hubSide) expectFrame(t *testing.T, want byte) {
	t.Helper()
	if f := s.frame(t); f != want {
		t.Fatalf("frame %q, want %q", f, want)
	}
}

// expectQuiet checks that the worker sends nothing on s for d.
func (s *hubSide) expectQuiet(t *testing.T, d time.Duration) {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(d))
	defer s.c.SetReadDeadline(time.Time{})
	if b, err := s.br.ReadByte(); err == nil {
		t.Fatalf("read %q, want nothing", b)
	}
}

// heldHandler runs each job until release is closed, after telling started.
func heldHandler(started chan<- string, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		<-release
		fmt.Fprintf(w, "job %s", r.URL.Path)
	})
}

// TestReadyFramesSingleHub: with the ready feature a worker offers each
// connection after its handshake and again after every response.
func TestReadyFramesSingleHub(t *testing.T) {
	hub := newReadyHub(t)
	startWorker(t, hub, Config{Handler: pathHandler()})
	s := hub.next(t)
	s.expectFrame(t, FrameReady)
	for i := range 3 {
		p := fmt.Sprintf("/r%d", i)
		if resp, body := s.send(t, get(p)); resp.StatusCode != 200 || body != "job "+p || resp.Close {
			t.Fatalf("job %d: %d %q close=%v", i, resp.StatusCode, body, resp.Close)
		}
		s.expectFrame(t, FrameReady)
	}
	s.expectQuiet(t, 50*time.Millisecond)
}

// drainFrames reads the frames the worker has sent on s so far and
// returns the last, or 0 for none.
func (s *hubSide) drainFrames(t *testing.T) byte {
	t.Helper()
	var last byte
	for {
		s.c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		b, err := s.br.ReadByte()
		s.c.SetReadDeadline(time.Time{})
		if err != nil {
			return last
		}
		if b != FrameReady && b != FrameNotReady {
			t.Fatalf("read %q, want a readiness frame", b)
		}
		last = b
	}
}

// readiness follows what the frames on some connections say.
type readiness map[*hubSide]byte

func (r readiness) update(t *testing.T, sides ...*hubSide) {
	for _, s := range sides {
		if f := s.drainFrames(t); f != 0 {
			r[s] = f
		}
	}
}

// TestSlotsAcrossHubs: one slot, two hubs. The worker holds a connection
// to each and offers its slot to one at a time, then (unused for a round)
// to both; while a job runs it offers none, and a job a hub sends anyway
// (a withdrawal crossed it) is declined at once, on a connection that
// stays; when the job ends the slot is offered again.
func TestSlotsAcrossHubs(t *testing.T) {
	a, b := newReadyHub(t), newReadyHub(t)
	started := make(chan string, 4)
	release := make(chan struct{})
	rw := startWorker(t, a, Config{Hubs: []string{b.addr()}, Handler: heldHandler(started, release)})
	sa, sb := a.next(t), b.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })
	st := readiness{}
	eventually(t, "the slot offered to both hubs", func() bool {
		st.update(t, sa, sb)
		return st[sa] == FrameReady && st[sb] == FrameReady
	})

	// Hub A takes it: B's offer is withdrawn.
	get("/a").Write(sa.c)
	if p := <-started; p != "/a" {
		t.Fatalf("started %s", p)
	}
	eventually(t, "B's offer withdrawn", func() bool { st.update(t, sb); return st[sb] == FrameNotReady })

	// B sends a job all the same: declined before anything runs, and
	// the connection stays open for the next job.
	resp, body := sb.send(t, get("/b"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(DeclinedHeader) != "1" || resp.Close {
		t.Fatalf("crossing job: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	st[sb] = FrameNotReady // after every response, until the worker says otherwise

	close(release)
	if resp, body := sa.read(t, get("/a")); resp.StatusCode != 200 || body != "job /a" {
		t.Fatalf("job /a: %d %q", resp.StatusCode, body)
	}
	st[sa] = FrameNotReady
	eventually(t, "the slot offered to B", func() bool { st.update(t, sa, sb); return st[sb] == FrameReady })
	if resp, body := sb.send(t, get("/b2")); resp.StatusCode != 200 || body != "job /b2" {
		t.Fatalf("job /b2: %d %q", resp.StatusCode, body)
	}
	a.expectNone(t, 50*time.Millisecond)
	b.expectNone(t, 50*time.Millisecond) // no redial: the decline kept its connection
}

// TestSlotsAcrossOlderHubs: hubs without the ready feature get no frames;
// a job beyond the free slots is declined, without its body, on a
// connection that stays.
func TestSlotsAcrossOlderHubs(t *testing.T) {
	a, b := newTestHub(t), newTestHub(t)
	started := make(chan string, 4)
	release := make(chan struct{})
	startWorker(t, a, Config{Hubs: []string{b.addr()}, Handler: heldHandler(started, release)})
	sa, sb := a.next(t), b.next(t)
	get("/a").Write(sa.c)
	<-started
	resp, _ := sb.send(t, get("/b"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Close {
		t.Fatalf("job beyond the slots: %d close=%v", resp.StatusCode, resp.Close)
	}
	// One with a body: declined without a 100, and closed (net/http
	// would not reuse a connection whose expected body it left unread).
	fmt.Fprintf(sb.c, "POST /up HTTP/1.1\r\nHost: job.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, _ = sb.read(t, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close {
		t.Fatalf("upload beyond the slots: %d close=%v", resp.StatusCode, resp.Close)
	}
	sb.expectEOF(t, waitLimit)
	close(release)
	sa.read(t, get("/a"))
	sb = b.next(t) // redialled
	if _, body := sb.send(t, get("/b")); body != "job /b" {
		t.Fatalf("body %q", body)
	}
}

// listenSamePort listens on a free port of 127.0.0.1 and on the same port
// of 127.0.0.2.
func listenSamePort(t *testing.T) (net.Listener, net.Listener) {
	t.Helper()
	for range 20 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(l1.Addr().String())
		l2, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err == nil {
			return l1, l2
		}
		l1.Close()
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil
}

// TestHubNameResolvesToSeveral: a name whose addresses are two hubs
// counts as two; resolved again, an address that vanishes is left (its idle
// connection closes) and one that comes back is joined.
func TestHubNameResolvesToSeveral(t *testing.T) {
	l1, l2 := listenSamePort(t)
	h1, h2 := startTestHub(t, l1), startTestHub(t, l2)
	_, port, _ := net.SplitHostPort(l1.Addr().String())
	var mu sync.Mutex
	addrs := []string{"127.0.0.1", "127.0.0.2"}
	lookup := func(ctx context.Context, host string) ([]string, error) {
		if host != "hubs.test" {
			return nil, errors.New("no such host")
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), addrs...), nil
	}
	startWorkerAt(t, "hubs.test:"+port, Config{LookupHost: lookup, ResolveInterval: 20 * time.Millisecond, Handler: pathHandler()})
	s1, s2 := h1.next(t), h2.next(t)
	for _, s := range []*hubSide{s1, s2} {
		if s.hs.Host != "hubs.test:"+port {
			t.Errorf("handshake Host %q, want the hub's name", s.hs.Host)
		}
		if _, body := s.send(t, get("/x")); body != "job /x" {
			t.Errorf("body %q", body)
		}
	}
	mu.Lock()
	addrs = []string{"127.0.0.1"}
	mu.Unlock()
	s2.expectEOF(t, waitLimit)
	h2.expectNone(t, 100*time.Millisecond)
	mu.Lock()
	addrs = []string{"127.0.0.2", "127.0.0.1"}
	mu.Unlock()
	if _, body := h2.next(t).send(t, get("/y")); body != "job /y" {
		t.Errorf("body %q", body)
	}
	h1.expectNone(t, 50*time.Millisecond)
}

// pollReady reads frames from sides in turn until one of them says ready,
// and returns it.
func pollReady(t *testing.T, sides ...*hubSide) *hubSide {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		for _, s := range sides {
			s.c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			b, err := s.br.ReadByte()
			s.c.SetReadDeadline(time.Time{})
			if err == nil && b == FrameReady {
				return s
			}
			if err == nil && b != FrameNotReady {
				t.Fatalf("read %q, want a readiness frame", b)
			}
		}
	}
	t.Fatal("no connection was offered")
	return nil
}

// TestGateWithdrawsOffers: a closed gate withdraws the offer on an idle
// connection (no redial) and declines a job that crosses it; open, one
// slot is offered at a time.
func TestGateWithdrawsOffers(t *testing.T) {
	hub := newReadyHub(t)
	var closed atomic.Bool
	gate := func(context.Context) error {
		if closed.Load() {
			return errors.New("closed by the test")
		}
		return nil
	}
	started := make(chan string, 4)
	release := make(chan struct{})
	startWorker(t, hub, Config{Slots: 2, Gate: gate, GateInterval: 10 * time.Millisecond, Handler: heldHandler(started, release)})
	s1, s2 := hub.next(t), hub.next(t)
	// One offer at a time: exactly one of the two connections is ready.
	first := pollReady(t, s1, s2)
	other := s1
	if first == s1 {
		other = s2
	}
	other.expectQuiet(t, 100*time.Millisecond)
	closed.Store(true)
	first.expectFrame(t, FrameNotReady)
	resp, _ := first.send(t, get("/crossed"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Close {
		t.Fatalf("job behind a closed gate: %d close=%v", resp.StatusCode, resp.Close)
	}
	closed.Store(false)
	offered := pollReady(t, s1, s2)
	get("/open").Write(offered.c)
	if p := <-started; p != "/open" {
		t.Fatalf("started %s", p)
	}
	close(release)
	offered.read(t, get("/open"))
	hub.expectNone(t, 50*time.Millisecond)
}

// TestDeclineAfterAutomaticAccept: a handler that declines a job the
// Worker accepted for it gets a warning that says what to do.
func TestDeclineAfterAutomaticAccept(t *testing.T) {
	hub := newAcceptHub(t)
	logger, logs := capturingLogger(t)
	startWorker(t, hub, Config{Logger: logger, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Decline(w)
	})})
	s := hub.next(t)
	postExpect(s, "/late")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want the automatic 100", resp.StatusCode)
	}
	io.WriteString(s.c, "hello")
	s.read(t, nil)
	eventually(t, "the warning", func() bool {
		return logs.count("Decline after the job was accepted") == 1 && logs.count("worker.AcceptLater") == 1
	})
}

// TestLeaveServesCrossingJob: leaving a hub address withdraws the offer on
// its idle connection with a not-ready frame, but the hub may have written
// a job just before it read that frame. The connection reads on for a
// grace, serves the job that crossed, and then closes.
func TestLeaveServesCrossingJob(t *testing.T) {
	l1, l2 := listenSamePort(t)
	h1, h2 := startTestHub(t, l1), startTestHub(t, l2)
	for _, h := range []*testHub{h1, h2} {
		h.configure(func(h *testHub) { h.features = "accept, ready" })
	}
	_, port, _ := net.SplitHostPort(l1.Addr().String())
	var mu sync.Mutex
	addrs := []string{"127.0.0.1", "127.0.0.2"}
	lookup := func(ctx context.Context, host string) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), addrs...), nil
	}
	startWorkerAt(t, "hubs.test:"+port, Config{LookupHost: lookup, ResolveInterval: 20 * time.Millisecond, Handler: pathHandler()})
	s1, s2 := h1.next(t), h2.next(t)
	offered := pollReady(t, s1, s2)
	keep := "127.0.0.2"
	if offered == s2 {
		keep = "127.0.0.1"
	}
	mu.Lock()
	addrs = []string{keep}
	mu.Unlock()
	offered.expectFrame(t, FrameNotReady)
	// The hub wrote this job before it read the frame.
	resp, body := offered.send(t, get("/crossed"))
	if resp.StatusCode != 200 || body != "job /crossed" {
		t.Fatalf("the job that crossed the withdrawal: %d %q", resp.StatusCode, body)
	}
	offered.expectEOF(t, waitLimit)
}
