package worker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

const waitLimit = 5 * time.Second

// ---- a tiny hub -------------------------------------------------------------

// testHub accepts worker connections on loopback, reads the handshake and
// answers it according to policy, and hands accepted connections to the test.
type testHub struct {
	t     *testing.T
	ln    net.Listener
	conns chan *hubSide

	mu     sync.Mutex
	seq    int
	bare   bool // pothead: no handshake
	policy func(seq int) (status int, reason string)
	// afterUpgrade is written in the same Write as the 101 response.
	afterUpgrade []byte
	// features, if not empty, is the 101's Reverse-Http-Features value.
	features string
	all      []net.Conn
}

// hubSide is the hub's end of one worker connection.
type hubSide struct {
	c  net.Conn
	br *bufio.Reader
	hs *http.Request // the handshake request; nil for pothead
}

func newTestHub(t *testing.T) *testHub {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startTestHub(t, ln)
}

// newTLSTestHub is newTestHub over TLS (with httptest's certificate); it
// also returns a client configuration that trusts the hub.
func newTLSTestHub(t *testing.T) (*testHub, *tls.Config) {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	serverCfg := &tls.Config{Certificates: ts.TLS.Certificates}
	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	ts.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	return startTestHub(t, ln), &tls.Config{RootCAs: roots}
}

func startTestHub(t *testing.T, ln net.Listener) *testHub {
	h := &testHub{t: t, ln: ln, conns: make(chan *hubSide, 16)}
	go h.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.all {
			c.Close()
		}
	})
	return h
}

// configure changes the hub's behaviour for connections accepted later.
func (h *testHub) configure(f func(h *testHub)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

func (h *testHub) addr() string { return h.ln.Addr().String() }

func (h *testHub) acceptLoop() {
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		h.all = append(h.all, c)
		h.mu.Unlock()
		go h.handle(c)
	}
}

func (h *testHub) handle(c net.Conn) {
	br := bufio.NewReader(c)
	h.mu.Lock()
	bare := h.bare
	h.mu.Unlock()
	if bare {
		h.conns <- &hubSide{c: c, br: br}
		return
	}
	req, err := http.ReadRequest(br)
	if err != nil {
		// As the hub does, to a worker that sends no HTTP (TLS, say).
		io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 19\r\nConnection: close\r\n\r\nmalformed handshake")
		c.Close()
		return
	}
	h.mu.Lock()
	seq := h.seq
	h.seq++
	policy, extra, features := h.policy, h.afterUpgrade, h.features
	h.afterUpgrade = nil
	h.mu.Unlock()
	status, reason := http.StatusSwitchingProtocols, ""
	if policy != nil {
		status, reason = policy(seq)
	}
	if status != http.StatusSwitchingProtocols {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			status, http.StatusText(status), len(reason)+1, reason+"\n")
		c.Close()
		return
	}
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n"
	if features != "" {
		head += FeaturesHeader + ": " + features + "\r\n"
	}
	msg := append([]byte(head+"\r\n"), extra...)
	if _, err := c.Write(msg); err != nil {
		c.Close()
		return
	}
	h.conns <- &hubSide{c: c, br: br, hs: req}
}

// next waits for the next accepted worker connection.
func (h *testHub) next(t *testing.T) *hubSide {
	t.Helper()
	select {
	case s := <-h.conns:
		return s
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting for a worker connection")
		return nil
	}
}

// expectNone checks that no further connection arrives within a short while.
func (h *testHub) expectNone(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case s := <-h.conns:
		t.Fatalf("unexpected extra connection from %v", s.c.RemoteAddr())
	case <-time.After(d):
	}
}

// send writes a job and reads the response (with its body).
func (s *hubSide) send(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	if err := req.Write(s.c); err != nil {
		t.Fatalf("writing job: %v", err)
	}
	return s.read(t, req)
}

func (s *hubSide) read(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(waitLimit))
	defer s.c.SetReadDeadline(time.Time{})
	// As a hub does, pass over readiness frames sent before the job.
	for {
		b, err := s.br.Peek(1)
		if err != nil || (b[0] != FrameReady && b[0] != FrameNotReady) {
			break
		}
		s.br.Discard(1)
	}
	resp, err := http.ReadResponse(s.br, req)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return resp, string(body)
}

// expectEOF checks that the worker closes the connection within d.
func (s *hubSide) expectEOF(t *testing.T, d time.Duration) {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(d))
	defer s.c.SetReadDeadline(time.Time{})
	b, err := s.br.ReadByte()
	if err == nil {
		t.Fatalf("expected EOF, read %q", b)
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("expected EOF, got %v", err)
	}
}

func get(path string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, "http://job.example"+path, nil)
	if err != nil {
		panic(err)
	}
	return req
}

// ---- running a worker -------------------------------------------------------

// testLogWriter sends logs to t.Log until the test ends.
type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	lw := &testLogWriter{t: t}
	t.Cleanup(func() { lw.mu.Lock(); lw.done = true; lw.mu.Unlock() })
	return slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type runningWorker struct {
	*Worker
	cancel context.CancelFunc
	done   chan error
}

// wait waits for Run to return and gives its result.
func (rw *runningWorker) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-rw.done:
		rw.done <- err
		return err
	case <-time.After(waitLimit):
		t.Fatal("Run did not return")
		return nil
	}
}

func startWorker(t *testing.T, hub *testHub, cfg Config) *runningWorker {
	t.Helper()
	return startWorkerAt(t, hub.addr(), cfg)
}

// startWorkerAt runs a worker for a hub at addr, which need not listen yet,
// until the test ends.
func startWorkerAt(t *testing.T, addr string, cfg Config) *runningWorker {
	t.Helper()
	cfg.Hub = addr
	if cfg.Pool == "" {
		cfg.Pool = "test"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = waitLimit
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{Worker: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-rw.done:
		case <-time.After(2 * waitLimit):
			t.Error("Run did not return after cancel")
		}
	})
	return rw
}

// eventually polls cond until it holds or the wait limit passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pathHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "job %s", r.URL.Path)
	})
}

// ---- tests ------------------------------------------------------------------

func TestHandshakeHeaders(t *testing.T) {
	hub := newTestHub(t)
	startWorker(t, hub, Config{Pool: "jobs/α b", Token: "s3cret", Name: "w-1", Handler: pathHandler()})
	hs := hub.next(t).hs
	if hs.Method != http.MethodGet {
		t.Errorf("method %q, want GET", hs.Method)
	}
	if want := "/jobs%2F%CE%B1%20b"; hs.RequestURI != want {
		t.Errorf("target %q, want %q", hs.RequestURI, want)
	}
	if hs.Proto != "HTTP/1.1" {
		t.Errorf("proto %q", hs.Proto)
	}
	if hs.Host != hub.addr() {
		t.Errorf("Host %q, want %q", hs.Host, hub.addr())
	}
	for k, want := range map[string]string{
		"Connection":          "Upgrade",
		"Upgrade":             "PTTH/1.0",
		"Authorization":       "Bearer s3cret",
		"Reverse-Http-Worker": "w-1",
		FeaturesHeader:        FeatureAccept + ", " + FeatureReady,
	} {
		if got := hs.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
}

func TestHandshakeDefaults(t *testing.T) {
	hub := newTestHub(t)
	startWorker(t, hub, Config{Handler: pathHandler()})
	hs := hub.next(t).hs
	if v, ok := hs.Header["Authorization"]; ok {
		t.Errorf("Authorization sent without a token: %q", v)
	}
	host, _ := os.Hostname()
	if got := hs.Header.Get("Reverse-Http-Worker"); got != host {
		t.Errorf("worker name %q, want host name %q", got, host)
	}
}

func TestConfigErrors(t *testing.T) {
	h := pathHandler()
	for name, cfg := range map[string]Config{
		"no hub":       {Pool: "p", Handler: h},
		"no port":      {Hub: "localhost", Pool: "p", Handler: h},
		"no handler":   {Hub: "h:1", Pool: "p"},
		"no pool":      {Hub: "h:1", Handler: h},
		"bad protocol": {Hub: "h:1", Pool: "p", Handler: h, Protocol: "http"},
		"token CRLF":   {Hub: "h:1", Pool: "p", Handler: h, Token: "a\r\nX: y"},
		"name LF":      {Hub: "h:1", Pool: "p", Handler: h, Name: "a\nb"},
		"slots":        {Hub: "h:1", Pool: "p", Handler: h, Slots: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := New(Config{Hub: "h:1", Handler: h, Protocol: ProtocolPothead}); err != nil {
		t.Errorf("pothead without pool: %v", err)
	}
}

func TestRejectedAtStart(t *testing.T) {
	hub := newTestHub(t)
	hub.configure(func(h *testHub) {
		h.policy = func(int) (int, string) { return http.StatusUnauthorized, "bad token" }
	})
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Config{
			Hub: hub.addr(), Pool: "p", Token: "wrong", Slots: 3,
			Handler: pathHandler(), Logger: testLogger(t),
		})
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after a rejected handshake")
	}
	var he *HandshakeError
	if !errors.As(err, &he) {
		t.Fatalf("Run returned %v (%T), want *HandshakeError", err, err)
	}
	if he.Status != http.StatusUnauthorized || he.Reason != "bad token" {
		t.Errorf("got %+v", he)
	}
	if want := "hub rejected the handshake: 401 Unauthorized: bad token"; err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}
}

func TestRejectedLaterIsRetried(t *testing.T) {
	hub := newTestHub(t)
	hub.configure(func(h *testHub) {
		h.policy = func(seq int) (int, string) {
			if seq == 1 {
				return http.StatusUnauthorized, "token rotated"
			}
			return http.StatusSwitchingProtocols, ""
		}
	})
	rw := startWorker(t, hub, Config{Handler: pathHandler()})
	a := hub.next(t)
	a.send(t, get("/one"))
	a.c.Close()
	b := hub.next(t) // after the 401, with backoff
	if resp, body := b.send(t, get("/two")); resp.StatusCode != 200 || body != "job /two" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	select {
	case err := <-rw.done:
		t.Fatalf("Run returned %v", err)
	default:
	}
}

func TestSlots(t *testing.T) {
	hub := newTestHub(t)
	rw := startWorker(t, hub, Config{Slots: 3, Handler: pathHandler()})
	var sides []*hubSide
	for range 3 {
		sides = append(sides, hub.next(t))
	}
	eventually(t, "3 connections", func() bool { return rw.Connected() == 3 })
	hub.expectNone(t, 200*time.Millisecond)
	for i, s := range sides {
		p := fmt.Sprintf("/slot%d", i)
		if _, body := s.send(t, get(p)); body != "job "+p {
			t.Errorf("slot %d: body %q", i, body)
		}
	}
}

func TestKeepAliveAndFirstJobRightAfterUpgrade(t *testing.T) {
	hub := newTestHub(t)
	var first bytes.Buffer
	get("/first").Write(&first)
	hub.configure(func(h *testHub) { h.afterUpgrade = first.Bytes() })
	startWorker(t, hub, Config{Handler: pathHandler()})
	s := hub.next(t)
	resp, body := s.read(t, get("/first"))
	if resp.StatusCode != 200 || body != "job /first" {
		t.Fatalf("first job: %d %q", resp.StatusCode, body)
	}
	for i := range 5 {
		p := fmt.Sprintf("/again/%d", i)
		resp, body := s.send(t, get(p))
		if resp.StatusCode != 200 || body != "job "+p || resp.Close {
			t.Fatalf("job %d: %d %q close=%v", i, resp.StatusCode, body, resp.Close)
		}
	}
	hub.expectNone(t, 100*time.Millisecond)
}

func TestExpectContinue(t *testing.T) {
	hub := newTestHub(t)
	startWorker(t, hub, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "got %s", b)
	})})
	s := hub.next(t)
	for i := range 2 { // twice: the connection stays usable
		fmt.Fprintf(s.c, "POST /up HTTP/1.1\r\nHost: job.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		resp, _ := s.read(t, nil)
		if resp.StatusCode != http.StatusContinue {
			t.Fatalf("round %d: got %d before the body, want 100", i, resp.StatusCode)
		}
		io.WriteString(s.c, "hello")
		resp, body := s.read(t, nil)
		if resp.StatusCode != 200 || body != "got hello" || resp.Close {
			t.Fatalf("round %d: %d %q close=%v", i, resp.StatusCode, body, resp.Close)
		}
	}
}

func TestDecline(t *testing.T) {
	hub := newTestHub(t)
	startWorker(t, hub, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Decline(w)
	})})
	check := func(resp *http.Response, body string) {
		t.Helper()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503", resp.StatusCode)
		}
		if got := resp.Header.Get("Reverse-Http-Declined"); got != "1" {
			t.Errorf("Reverse-Http-Declined %q", got)
		}
		if body != "declined\n" || !resp.Close {
			t.Errorf("body %q close=%v", body, resp.Close)
		}
	}
	// With a body held back for 100-continue: no 100, a 503, and the
	// worker closes the connection without waiting for the body.
	s := hub.next(t)
	fmt.Fprintf(s.c, "POST /up HTTP/1.1\r\nHost: job.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	check(s.read(t, nil))
	s.expectEOF(t, waitLimit)

	// The slot comes back at once; a bodiless job is declined the same way.
	s = hub.next(t)
	check(s.send(t, get("/x")))
	s.expectEOF(t, waitLimit)
	hub.next(t)

	// Without hijacking (a recorder), Decline still writes the answer.
	rec := httptest.NewRecorder()
	Decline(rec)
	if rec.Code != 503 || rec.Header().Get(DeclinedHeader) != "1" {
		t.Errorf("recorder: %d %v", rec.Code, rec.Header())
	}
}

func TestHubClosesMidJob(t *testing.T) {
	hub := newTestHub(t)
	started := make(chan struct{})
	cancelled := make(chan struct{})
	startWorker(t, hub, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(2 * waitLimit):
		}
	})})
	s := hub.next(t)
	get("/long").Write(s.c)
	<-started
	s.c.Close()
	select {
	case <-cancelled:
	case <-time.After(waitLimit):
		t.Fatal("handler context not cancelled after the hub closed the connection")
	}
	hub.next(t) // the slot is redialled
}

func TestRedial(t *testing.T) {
	hub := newTestHub(t)
	rw := startWorker(t, hub, Config{Handler: pathHandler()})
	a := hub.next(t)
	a.send(t, get("/x"))
	a.c.Close()
	b := hub.next(t)
	if _, body := b.send(t, get("/y")); body != "job /y" {
		t.Errorf("body %q", body)
	}
	eventually(t, "1 connection", func() bool { return rw.Connected() == 1 })
}

func TestDrain(t *testing.T) {
	hub := newTestHub(t)
	started := make(chan struct{})
	release := make(chan struct{})
	rw := startWorker(t, hub, Config{Slots: 2, DrainTimeout: 30 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			<-release
			io.WriteString(w, "done")
		})})
	busy, idle := hub.next(t), hub.next(t)
	// Both handshakes are complete on the worker's side too.
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })
	get("/slow").Write(busy.c)
	<-started

	rw.cancel()
	began := time.Now()
	idle.expectEOF(t, 2*time.Second) // well under net/http's 5 s for StateNew
	t.Logf("idle connection closed %v after cancel", time.Since(began))
	select {
	case err := <-rw.done:
		t.Fatalf("Run returned %v while a job was running", err)
	default:
	}

	close(release)
	resp, body := busy.read(t, get("/slow"))
	if resp.StatusCode != 200 || body != "done" {
		t.Errorf("running job: %d %q", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("response to the last job lacks Connection: close")
	}
	busy.expectEOF(t, waitLimit)
	if err := rw.wait(t); err != nil {
		t.Errorf("Run returned %v, want nil", err)
	}
	hub.expectNone(t, 100*time.Millisecond)
}

func TestDrainTimeout(t *testing.T) {
	hub := newTestHub(t)
	started := make(chan struct{})
	cancelled := make(chan struct{})
	rw := startWorker(t, hub, Config{DrainTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			<-r.Context().Done()
			close(cancelled)
		})})
	s := hub.next(t)
	get("/stuck").Write(s.c)
	<-started
	rw.cancel()
	if err := rw.wait(t); err != nil {
		t.Errorf("Run returned %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(waitLimit):
		t.Fatal("stuck handler not cancelled after the drain timeout")
	}
	s.expectEOF(t, waitLimit)
}

func TestPothead(t *testing.T) {
	hub := newTestHub(t)
	hub.configure(func(h *testHub) { h.bare = true })
	startWorker(t, hub, Config{Protocol: ProtocolPothead, Slots: 2, Handler: pathHandler()})
	a, b := hub.next(t), hub.next(t)
	for _, s := range []*hubSide{a, b, a} {
		if resp, body := s.send(t, get("/bare")); resp.StatusCode != 200 || body != "job /bare" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	}
}

func TestTLS(t *testing.T) {
	hub, clientCfg := newTLSTestHub(t)
	startWorker(t, hub, Config{TLS: clientCfg, Token: "t", Handler: pathHandler()})
	s := hub.next(t)
	if got := s.hs.Header.Get("Authorization"); got != "Bearer t" {
		t.Errorf("Authorization %q", got)
	}
	if resp, body := s.send(t, get("/secure")); resp.StatusCode != 200 || body != "job /secure" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
}

func TestBackoff(t *testing.T) {
	for attempt := range 40 {
		ceiling := min(backoffMin<<min(attempt, 20), backoffMax)
		for range 20 {
			if d := backoff(attempt); d < ceiling/2 || d >= ceiling {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v)", attempt, d, ceiling/2, ceiling)
			}
		}
	}
}

// ---- forwarding -------------------------------------------------------------

func TestForwarder(t *testing.T) {
	next := make(chan struct{})
	upCancelled := make(chan struct{})
	upStarted := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/base/echo":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "uri=%s host=%s xff=%s xfh=%s xfp=%s body=%s",
				r.URL.RequestURI(), r.Host, r.Header.Get("X-Forwarded-For"),
				r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto"), b)
		case "/base/stream":
			io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			<-next
			io.WriteString(w, "second\n")
		case "/base/hang":
			close(upStarted)
			select {
			case <-r.Context().Done():
				close(upCancelled)
			case <-time.After(2 * waitLimit):
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL + "/base")

	hub := newTestHub(t)
	startWorker(t, hub, Config{Handler: NewForwarder(u, testLogger(t))})
	s := hub.next(t)

	t.Run("headers and body", func(t *testing.T) {
		fmt.Fprintf(s.c, "POST /echo?q=1 HTTP/1.1\r\nHost: app.example\r\n"+
			"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: app.example\r\nX-Forwarded-Proto: https\r\n"+
			"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		resp, _ := s.read(t, nil)
		if resp.StatusCode != http.StatusContinue {
			t.Fatalf("got %d, want 100 Continue", resp.StatusCode)
		}
		io.WriteString(s.c, "hello")
		resp, body := s.read(t, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("got %d %q, want 200", resp.StatusCode, body)
		}
		want := "uri=/base/echo?q=1 host=app.example xff=203.0.113.9 xfh=app.example xfp=https body=hello"
		if body != want {
			t.Errorf("upstream saw\n %s\nwant\n %s", body, want)
		}
	})

	t.Run("streaming", func(t *testing.T) {
		get("/stream").Write(s.c)
		s.c.SetReadDeadline(time.Now().Add(waitLimit))
		defer s.c.SetReadDeadline(time.Time{})
		resp, err := http.ReadResponse(s.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "first\n" {
			t.Fatalf("first chunk %q, %v", line, err)
		}
		close(next) // only now may upstream finish
		rest, err := io.ReadAll(resp.Body)
		if err != nil || string(rest) != "second\n" {
			t.Fatalf("rest %q, %v", rest, err)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		get("/hang").Write(s.c)
		<-upStarted
		s.c.Close()
		select {
		case <-upCancelled:
		case <-time.After(waitLimit):
			t.Fatal("upstream request not cancelled when the hub closed the connection")
		}
	})
}
