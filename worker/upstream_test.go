package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// readyHub is a test hub whose connections speak the ready feature.
func readyHub(t *testing.T) *testHub {
	hub := newTestHub(t)
	hub.configure(func(h *testHub) { h.features = FeatureAccept + ", " + FeatureReady })
	return hub
}

// writeLog records the writes to a connection.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []string
}

func (l *writeLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes = append(l.writes, string(p))
	return len(p), nil
}

func (l *writeLog) SetWriteDeadline(time.Time) error { return nil }

func (l *writeLog) Close() error { return nil }

func (l *writeLog) taken() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.writes
	l.writes = nil
	return w
}

// oneSlotWorker makes a worker with one slot and one hub address, without
// a server or sockets; newConn gives it an idle connection that speaks
// frames, whose writes are recorded.
func oneSlotWorker(t *testing.T) (newConn func() (*hubConn, *writeLog)) {
	w := &Worker{log: testLogger(t)}
	w.offers = newOffers(w, 1, false)
	ep := &endpoint{name: "hub", addr: "a", ctx: context.Background(), score: 1}
	w.offers.addEndpoint(ep)
	t.Cleanup(func() { w.offers.removeEndpoint(ep) })
	return func() (*hubConn, *writeLog) {
		log := &writeLog{}
		c := &hubConn{Conn: log, w: w, ep: ep, ready: true, released: make(chan struct{})}
		c.becomeIdle()
		return c, log
	}
}

// The ready frame that follows a response goes out in the same write as
// the response's end, so that the hub finds it with the response instead
// of being woken for it a moment later; a connection closed after its
// response writes the response's end before it closes.
func TestReadyFrameRidesWithResponse(t *testing.T) {
	newConn := oneSlotWorker(t)
	c, log := newConn()
	if got := log.taken(); !slices.Equal(got, []string{"+"}) {
		t.Fatalf("after the handshake: writes %q, want the ready frame", got)
	}
	const resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for i := range 3 {
		if arrive(c) != slotTaken {
			t.Fatalf("job %d: no slot", i)
		}
		c.Write([]byte("HTTP/1.1 200 OK\r\n")) // while the handler runs
		c.w.offers.done(c)                     // the handler returns
		c.holdTail()
		c.Write([]byte("Content-Length: 2\r\n\r\n"))
		c.Write([]byte("ok"))
		if got := log.taken(); !slices.Equal(got, []string{"HTTP/1.1 200 OK\r\n"}) {
			t.Fatalf("job %d: writes before the connection is idle: %q", i, got)
		}
		c.becomeIdle()
		if got := log.taken(); !slices.Equal(got, []string{"Content-Length: 2\r\n\r\nok+"}) {
			t.Fatalf("job %d: writes %q, want the response's end and the frame in one", i, got)
		}
	}
	arrive(c)
	c.w.offers.done(c)
	c.holdTail()
	c.Write([]byte(resp))
	c.Close()
	if got := log.taken(); !slices.Equal(got, []string{resp}) {
		t.Fatalf("closed after the response: writes %q, want the response", got)
	}
}

// A response that ends the connection (Connection: close) is written whole
// before the connection closes, though its end was held for a frame.
func TestHeldResponseEndBeforeClose(t *testing.T) {
	hub := readyHub(t)
	startWorker(t, hub, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, strings.Repeat("x", 3000))
	})})
	s := hub.next(t)
	s.expectFrame(t, FrameReady)
	resp, body := s.send(t, get("/"))
	if resp.StatusCode != 200 || len(body) != 3000 || !resp.Close {
		t.Fatalf("got %d, %d bytes, close %v", resp.StatusCode, len(body), resp.Close)
	}
	s.expectEOF(t, waitLimit)
}

// forwarderTo runs a worker forwarding to upstream and returns the hub's
// end of its one connection.
func forwarderTo(t *testing.T, upstream string) *hubSide {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	hub := readyHub(t)
	startWorker(t, hub, Config{Handler: NewForwarder(u, testLogger(t))})
	s := hub.next(t)
	s.expectFrame(t, FrameReady)
	return s
}

// serveUpstream serves h on ln until the test ends.
func serveUpstream(t *testing.T, ln net.Listener, h http.Handler, state ...func(net.Conn, http.ConnState)) *http.Server {
	srv := &http.Server{Handler: h}
	if len(state) > 0 {
		srv.ConnState = state[0]
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return srv
}

// --upstream unix:/PATH: a real app listening on a unix socket.
func TestForwarderUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	serveUpstream(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s host=%s body=%s", r.Method, r.URL.RequestURI(), r.Host, b)
	}), func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	})
	s := forwarderTo(t, "unix:"+path)
	for i := range 3 {
		resp, body := s.send(t, get(fmt.Sprintf("/get?i=%d", i)))
		if want := fmt.Sprintf("GET /get?i=%d host=job.example body=", i); resp.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
		s.expectFrame(t, FrameReady)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d upstream connections for three jobs, want 1 (kept alive)", n)
	}
	// A job with a body goes the reverse proxy's way, to the same socket.
	fmt.Fprintf(s.c, "POST /post HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100 Continue", resp.StatusCode)
	}
	io.WriteString(s.c, "hello")
	if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "POST /post host=app.example body=hello" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// The direct exchange: hop-by-hop headers stay behind, in both
// directions; 1xx responses other than 100 are relayed; trailers too.
func TestForwarderDirectHeaders(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveUpstream(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/base/headers":
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "must not pass")
			w.Header().Set("Keep-Alive", "timeout=5")
			fmt.Fprintf(w, "x-hop=%q keep-alive=%q te=%q ua=%q expect=%q x-end=%q",
				r.Header.Get("X-Hop"), r.Header.Get("Keep-Alive"), r.Header.Get("Te"),
				r.Header.Get("User-Agent"), r.Header.Get("Expect"), r.Header.Get("X-End"))
		case "/base/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "final")
		case "/base/trailer":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
		}
	}))
	s := forwarderTo(t, "http://"+ln.Addr().String()+"/base")

	req := get("/headers")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "must not pass")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Te", "trailers")
	req.Header.Set("X-End", "passes")
	req.Header.Set("User-Agent", "") // none, and the worker adds none
	resp, body := s.send(t, req)
	want := `x-hop="" keep-alive="" te="trailers" ua="" expect="" x-end="passes"`
	if resp.StatusCode != 200 || body != want {
		t.Errorf("upstream saw %q, want %q", body, want)
	}
	if resp.Header.Get("X-Hop") != "" || resp.Header.Get("Keep-Alive") != "" {
		t.Errorf("hop-by-hop response headers passed: %v", resp.Header)
	}
	s.expectFrame(t, FrameReady)

	get("/hints").Write(s.c)
	s.c.SetReadDeadline(time.Now().Add(waitLimit))
	resp, err = http.ReadResponse(s.br, nil)
	if err != nil || resp.StatusCode != http.StatusEarlyHints || resp.Header.Get("Link") == "" {
		t.Fatalf("got %v, %v; want 103 with its Link", resp, err)
	}
	resp, body = s.read(t, nil)
	if resp.StatusCode != 200 || body != "final" || resp.Header.Get("Link") != "" {
		t.Fatalf("final response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	s.expectFrame(t, FrameReady)

	resp, body = s.send(t, get("/trailer"))
	if body != "body" || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("got %q, trailer %v", body, resp.Trailer)
	}
}

// rawUpstream accepts connections on a loopback port and hands each to
// serve.
func rawUpstream(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go serve(c, bufio.NewReader(c))
		}
	}()
	return "http://" + ln.Addr().String()
}

// An upstream's response head beyond maxUpstreamHeader answers 502, and a
// body cut short does not look whole to the hub.
func TestForwarderDirectLimits(t *testing.T) {
	old := maxUpstreamHeader
	maxUpstreamHeader = 4 << 10
	t.Cleanup(func() { maxUpstreamHeader = old })
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/big":
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok", strings.Repeat("b", 5<<10))
			case "/fits":
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok", strings.Repeat("b", 3<<10))
			case "/short":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
				c.Close()
				return
			}
		}
	})
	s := forwarderTo(t, up)
	if resp, body := s.send(t, get("/fits")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("head under the limit: %d %q", resp.StatusCode, body)
	}
	s.expectFrame(t, FrameReady)
	if resp, _ := s.send(t, get("/big")); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("head over the limit: %d, want 502", resp.StatusCode)
	}
	s.expectFrame(t, FrameReady)

	get("/short").Write(s.c)
	s.c.SetReadDeadline(time.Now().Add(waitLimit))
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Fatalf("a body cut short read whole: %q", b)
	}
}

// A pooled connection the upstream closed while idle costs the job
// nothing, and neither does one it closes just as the request goes out:
// the request, which has no body, goes out again on a new connection,
// once. A GET finds out that the connection is closed by trying it; a
// POST, which may not go out twice, by a look before it is sent.
func TestForwarderDirectStaleConnection(t *testing.T) {
	var requests atomic.Int32
	idleClosed := make(chan struct{})
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			n := requests.Add(1)
			if req.URL.Path == "/drop" && n%2 == 0 {
				// Read the request, then hang up without a word.
				c.Close()
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			if req.URL.Path == "/idle-close" {
				// Close after the response, as an idle timeout would.
				c.Close()
				close(idleClosed)
				return
			}
		}
	})
	s := forwarderTo(t, up)
	if resp, body := s.send(t, get("/idle-close")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("first: %d %q", resp.StatusCode, body)
	}
	s.expectFrame(t, FrameReady)
	<-idleClosed
	if resp, body := s.send(t, get("/x")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the upstream closed an idle connection: %d %q", resp.StatusCode, body)
	}
	s.expectFrame(t, FrameReady)
	idleClosed = make(chan struct{})
	if resp, body := s.send(t, get("/idle-close")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("second /idle-close: %d %q", resp.StatusCode, body)
	}
	s.expectFrame(t, FrameReady)
	<-idleClosed
	post, _ := http.NewRequest(http.MethodPost, "http://job.example/charge", http.NoBody)
	post.ContentLength = 0
	post.Header.Set("Content-Length", "0")
	if resp, body := s.send(t, post); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("a POST after the upstream closed an idle connection: %d %q", resp.StatusCode, body)
	}
	s.expectFrame(t, FrameReady)
	requests.Store(1) // the next /drop is the second request: dropped
	if resp, body := s.send(t, get("/drop")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after a dropped request: %d %q", resp.StatusCode, body)
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("request count %d, want 3 (the dropped request went out once more)", n)
	}
}

// The upstream may send maxInformational 1xx responses before its final
// one, which are relayed; one more answers 502.
func TestForwarderDirectInformationalLimit(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			n := maxInformational
			if req.URL.Path == "/over" {
				n++
			}
			io.WriteString(c, strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", n)+
				"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	s := forwarderTo(t, up)
	for _, tc := range []struct {
		path   string
		status int
	}{{"/at", 200}, {"/over", http.StatusBadGateway}} {
		get(tc.path).Write(s.c)
		s.c.SetReadDeadline(time.Now().Add(waitLimit))
		hints := 0
		for {
			if err := skipFrames(s.br); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(s.br, nil)
			if err != nil {
				t.Fatalf("%s: %v", tc.path, err)
			}
			if resp.StatusCode == http.StatusEarlyHints {
				hints++
				continue
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != tc.status || hints != maxInformational {
				t.Fatalf("%s: %d after %d hints, want %d after %d", tc.path, resp.StatusCode, hints, tc.status, maxInformational)
			}
			break
		}
	}
}

// A connection whose offer the offers withdrew a moment ago (its slot was
// taken by a job on another connection, here) and which the worker then
// retires keeps what is left of that withdrawal's grace: a job may have
// crossed the not-ready frame. One never offered since its last job
// closes at once.
func TestRetireAfterWithdrawal(t *testing.T) {
	newConn := oneSlotWorker(t)
	c, log := newConn()
	other, _ := newConn()
	if arrive(other) != slotTaken {
		t.Fatal("the job on the other connection got no slot")
	}
	if got := log.taken(); !slices.Equal(got, []string{"+", "-"}) {
		t.Fatalf("offered, then its slot taken: writes %q, want the two frames", got)
	}
	c.retire()
	c.wmu.Lock()
	inGrace := c.inGraceLocked()
	c.wmu.Unlock()
	if !inGrace {
		t.Fatal("retired just after its withdrawal: not in a grace")
	}
	if got := log.taken(); len(got) != 0 {
		t.Errorf("retired after its withdrawal: writes %q, want none", got)
	}
	select {
	case <-c.released:
		t.Fatal("closed at once, though a job may have crossed its withdrawal")
	case <-time.After(retireGraceMin / 2):
	}
	select {
	case <-c.released:
	case <-time.After(retireGraceMax + waitLimit):
		t.Fatal("still open after its grace")
	}

	// Never offered since its job: nothing can be on its way.
	third, thirdLog := newConn() // the one slot is busy: not offered
	if got := thirdLog.taken(); len(got) != 0 {
		t.Fatalf("offered with no slot free: writes %q", got)
	}
	third.retire()
	select {
	case <-third.released:
	default:
		t.Fatal("a connection never offered was not closed at once")
	}
}
