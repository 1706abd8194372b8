package reversehttp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/reversehttp/reverse_http/internal/testpki"
	"github.com/reversehttp/reverse_http/worker"
)

// testListener is a worker listener on a loopback port, with its pools, run
// without Caddy.
type testListener struct {
	*workerListener
	pools map[string]*Pool
	logs  *observer.ObservedLogs
}

// listenerOptions configure a testListener; zero values take the defaults.
type listenerOptions struct {
	pools         map[string]*PoolConfig // default: "jobs" with token "secret"
	tls           *tls.Config
	timeout       time.Duration
	maxHandshakes int
	burst         int
	interval      time.Duration
	// listenConfig opens the socket as the app does (workerListenConfig)
	// instead of with net.Listen.
	listenConfig bool
}

func startTestListener(t testing.TB, o listenerOptions) *testListener {
	t.Helper()
	if o.pools == nil {
		o.pools = map[string]*PoolConfig{"jobs": {Tokens: []string{"secret"}}}
	}
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	tl := &testListener{pools: make(map[string]*Pool), logs: logs}
	wl := &workerListener{
		pools: make(map[string]*poolEntry), tlsConfig: o.tls, logger: logger,
		timeout: cmpOr(o.timeout, 10*time.Second), maxHandshakes: cmpOr(o.maxHandshakes, DefaultMaxHandshakes),
		sampled: newLogSampler(logger, cmpOr(o.burst, 1000), cmpOr(o.interval, time.Minute)),
	}
	for name, pc := range o.pools {
		pc.Listen = []string{"127.0.0.1:0"}
		if err := pc.provision(name, caddy.NewReplacer()); err != nil {
			t.Fatal(err)
		}
		p := newPool(name)
		// The test's pool configs are not provisioned (no protocol, TLS
		// given to the listener directly): their admission check is not
		// what these tests are about.
		limits := pc.limits()
		limits.admits = nil
		p.configure(limits, logger.With(zap.String("pool", name)))
		tl.pools[name] = p
		entry := &poolEntry{pool: p, config: pc}
		if pc.Protocol == worker.ProtocolPothead {
			wl.bare = entry
		} else {
			wl.pools[name] = entry
		}
	}
	listen := net.Listen
	if o.listenConfig {
		lc := workerListenConfig()
		listen = func(network, address string) (net.Listener, error) {
			return lc.Listen(context.Background(), network, address)
		}
	}
	ln, err := listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl.serveOn(ln)
	t.Cleanup(func() {
		wl.stop()
		for _, p := range tl.pools {
			p.drain()
		}
	})
	tl.workerListener = wl
	return tl
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func (tl *testListener) addr() string { return tl.ln.Addr().String() }

func (tl *testListener) dial(t testing.TB) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", tl.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}

// conns returns the worker info of each connection pool p holds.
func conns(p *Pool) []workerInfo {
	var infos []workerInfo
	p.retireIf(func(c *workerConn) bool {
		infos = append(infos, c.info)
		return false
	})
	return infos
}

// handshakeHead is a ptth handshake for pool jobs with token secret, with
// extra header lines.
func handshakeHead(target string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: PTTH/1.0\r\nAuthorization: Bearer secret\r\n", target)
	for _, line := range extra {
		b.WriteString(line + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// exchange sends raw on a new connection and returns the hub's answer with
// its body read.
func (tl *testListener) exchange(t *testing.T, raw string) (*http.Response, string) {
	t.Helper()
	conn := tl.dial(t)
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// TestHandshakeSizeLimit sends a handshake exactly as long as the bound,
// which is admitted, and one a byte longer, which gets 431.
func TestHandshakeSizeLimit(t *testing.T) {
	tl := startTestListener(t, listenerOptions{})
	padded := func(n int) string {
		head := handshakeHead("/jobs", "X-Pad: ")
		pad := n - len(head)
		return handshakeHead("/jobs", "X-Pad: "+strings.Repeat("p", pad))
	}
	if h := padded(maxHandshakeBytes); len(h) != maxHandshakeBytes {
		t.Fatalf("test head is %d bytes", len(h))
	}
	resp, _ := tl.exchange(t, padded(maxHandshakeBytes))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("a head of exactly %d bytes got %d, want 101", maxHandshakeBytes, resp.StatusCode)
	}
	// The pool takes the connection in after the hub has written the 101.
	waitFor(t, "the admitted connection in the pool", func() bool { return len(conns(tl.pools["jobs"])) == 1 })
	resp, body := tl.exchange(t, padded(maxHandshakeBytes+1))
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(body, "exceed") {
		t.Fatalf("a head of %d bytes got %d %q, want 431 with a reason", maxHandshakeBytes+1, resp.StatusCode, body)
	}
	if n := len(conns(tl.pools["jobs"])); n != 1 {
		t.Fatalf("the pool holds %d connections, want the one admitted", n)
	}
}

// TestHandshakeHugeHeaderCostsNoMemory sends a 64 MiB header line: the hub
// answers 431 without ever holding more than the bound.
func TestHandshakeHugeHeaderCostsNoMemory(t *testing.T) {
	tl := startTestListener(t, listenerOptions{})
	const total = 64 << 20
	chunk := bytes.Repeat([]byte("a"), 64<<10)
	conn := tl.dial(t)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	written := make(chan int64, 1)
	go func() {
		n, _ := io.WriteString(conn, "GET /jobs HTTP/1.1\r\nX-Big: ")
		sent := int64(n)
		for sent < total {
			n, err := conn.Write(chunk)
			sent += int64(n)
			if err != nil {
				break
			}
		}
		written <- sent
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("got %d, want 431", resp.StatusCode)
	}
	// The hub discards what follows its answer for a while: the rest of
	// the header goes through the socket, not into the hub's memory.
	sent := <-written
	conn.Close()
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("sent %d MiB of header; the process allocated %d KiB meanwhile, heap grew by %d KiB", sent>>20, allocated>>10, grown>>10)
	if allocated > 4<<20 {
		t.Fatalf("allocated %d KiB while the header was sent: the handshake was buffered", allocated>>10)
	}
}

// TestHandshakesInProgressCapped holds max_handshakes half-open handshakes:
// one connection more is closed at once, and a good worker joins once the
// slow ones have timed out.
func TestHandshakesInProgressCapped(t *testing.T) {
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name      string
		serverTLS *tls.Config
		workerTLS *tls.Config
	}{
		{"plain", nil, nil},
		{"tls", pki.serverConfig(t), &tls.Config{ServerName: "localhost", RootCAs: pki.pool()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const limit = 3
			tl := startTestListener(t, listenerOptions{tls: tc.serverTLS, maxHandshakes: limit, timeout: time.Second})
			for range limit {
				tl.dial(t) // sends nothing
			}
			waitFor(t, "the half-open handshakes", func() bool { return tl.handshakes.Load() == limit })
			extra := tl.dial(t)
			if _, err := extra.Read(make([]byte, 1)); err == nil {
				t.Fatal("the connection beyond max_handshakes got an answer")
			}
			waitFor(t, "the refusal to be counted", func() bool { return tl.refused.Load() >= 1 })
			if h, r := tl.handshakes.Load(), tl.refused.Load(); h != limit || r != 1 {
				t.Fatalf("%d handshakes in progress, %d refused: want %d and 1 (closed at once, while the slow ones still held their places)", h, r, limit)
			}
			w, err := worker.New(worker.Config{
				Hub: tl.addr(), Pool: "jobs", Token: "secret", Handler: http.NotFoundHandler(),
				TLS: tc.workerTLS, Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { w.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			p := tl.pools["jobs"]
			waitFor(t, "the good worker to join once the slow handshakes timed out", func() bool { return p.Stats().Idle == 1 })
		})
	}
}

// TestHandshakeLogSampling floods the listener with bad handshakes: the
// first lines are logged, the rest are counted in one summary line.
func TestHandshakeLogSampling(t *testing.T) {
	const burst, flood = 3, 10
	tl := startTestListener(t, listenerOptions{burst: burst, interval: time.Second})
	for range flood {
		resp, _ := tl.exchange(t, "BREW /jobs HTCPCP/1.0\r\n\r\n")
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("got %d, want 400", resp.StatusCode)
		}
	}
	var summary []observer.LoggedEntry
	waitFor(t, "the summary line", func() bool {
		summary = tl.logs.FilterMessage("worker connection log lines suppressed").All()
		return len(summary) > 0
	})
	logged := tl.logs.FilterMessage("worker handshake rejected").Len()
	fields := summary[0].ContextMap()
	if logged != burst || fields["rejected"] != int64(flood-burst) || fields["suppressed"] != int64(flood-burst) {
		t.Fatalf("logged %d rejections and a summary of %v; want %d and %d suppressed", logged, fields, burst, flood-burst)
	}
}

// TestHandshakeFeatures checks the negotiation of optional features: the
// hub answers with those it speaks among those asked for, and records them.
func TestHandshakeFeatures(t *testing.T) {
	for _, tc := range []struct {
		name, header string // header "": none sent
		want         string
	}{
		{"none asked", "", ""},
		{"accept among unknown ones", "x-future, ACCEPT ,other", worker.FeatureAccept},
		{"only unknown ones", "x-future", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := startTestListener(t, listenerOptions{})
			var extra []string
			if tc.header != "" {
				extra = append(extra, worker.FeaturesHeader+": "+tc.header)
			}
			resp, _ := tl.exchange(t, handshakeHead("/jobs", extra...))
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("got %d", resp.StatusCode)
			}
			if got := resp.Header.Get(worker.FeaturesHeader); got != tc.want {
				t.Fatalf("101 lists features %q, want %q", got, tc.want)
			}
			p := tl.pools["jobs"]
			waitFor(t, "the connection in the pool", func() bool { return p.Stats().Idle == 1 })
			if got := conns(p)[0].features.accept; got != (tc.want != "") {
				t.Fatalf("connection recorded accept=%v", got)
			}
		})
	}
}

// TestHandshakeTargetUnescapedOnce checks that a handshake's target is
// unescaped exactly once: %41 is A, %2541 is the name "a%41", which no
// pool can have.
func TestHandshakeTargetUnescapedOnce(t *testing.T) {
	tl := startTestListener(t, listenerOptions{pools: map[string]*PoolConfig{"aA": {Tokens: []string{"secret"}}}})
	if resp, _ := tl.exchange(t, handshakeHead("/a%41")); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("/a%%41 for pool aA got %d, want 101", resp.StatusCode)
	}
	resp, body := tl.exchange(t, handshakeHead("/a%2541"))
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `"a%41"`) {
		t.Fatalf("/a%%2541 got %d %q, want 404 naming a%%41", resp.StatusCode, body)
	}
}

// TestHandshakeRecordsAdmission checks what a connection's admission
// records: the protocol, TLS and the token it presented.
func TestHandshakeRecordsAdmission(t *testing.T) {
	tl := startTestListener(t, listenerOptions{})
	if resp, _ := tl.exchange(t, handshakeHead("/jobs", worker.WorkerHeader+": w1")); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %d", resp.StatusCode)
	}
	p := tl.pools["jobs"]
	waitFor(t, "the connection in the pool", func() bool { return p.Stats().Idle == 1 })
	info := conns(p)[0]
	if adm := info.admission; info.name != "w1" || adm.protocol != worker.ProtocolPTTH || adm.tls || string(adm.token) != "secret" || adm.peerCerts != nil {
		t.Fatalf("recorded %+v", info)
	}
}

// TestPlaintextOnTLSListener sends a plaintext handshake to a TLS worker
// listener, which answers in plaintext that it requires TLS.
func TestPlaintextOnTLSListener(t *testing.T) {
	tl := startTestListener(t, listenerOptions{tls: newTestPKI(t).serverConfig(t)})
	resp, body := tl.exchange(t, handshakeHead("/jobs"))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "requires TLS") {
		t.Fatalf("got %d %q, want 400 saying the listener requires TLS", resp.StatusCode, body)
	}
}

// TestTLSOnPlainListener starts a TLS handshake on a plain worker listener,
// which answers that it does not use TLS.
func TestTLSOnPlainListener(t *testing.T) {
	tl := startTestListener(t, listenerOptions{})
	conn := tl.dial(t)
	rec := &recordingConn{Conn: conn}
	err := tls.Client(rec, &tls.Config{ServerName: "localhost"}).Handshake()
	if err == nil {
		t.Fatal("the TLS handshake succeeded")
	}
	rest, _ := io.ReadAll(conn)
	answer := rec.read.String() + string(rest)
	if !strings.HasPrefix(answer, "HTTP/1.1 400 ") || !strings.Contains(answer, "does not use TLS") {
		t.Fatalf("answer %q, want a 400 saying the listener does not use TLS", answer)
	}
}

// recordingConn keeps what is read from it.
type recordingConn struct {
	net.Conn
	read bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Write(p[:n])
	return n, err
}

// TestListenerStopClosesAdmission checks that a handshake finishing on a
// listener whose config is being replaced is answered 503, so the worker
// dials the new config's listener, and never joins the pool.
func TestListenerStopClosesAdmission(t *testing.T) {
	tl := startTestListener(t, listenerOptions{})
	conn := tl.dial(t)
	waitFor(t, "the handshake in progress", func() bool { return tl.handshakes.Load() == 1 })
	tl.closeAdmission()
	if _, err := io.WriteString(conn, handshakeHead("/jobs")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("got %d, want 503", resp.StatusCode)
	}
	if n := len(conns(tl.pools["jobs"])); n != 0 {
		t.Fatalf("the pool took %d connections after its listener closed admission", n)
	}
}

// testPKI is a CA made for a test (internal/testpki), with a server
// certificate for localhost and client certificates it signs.
type testPKI struct {
	ca  *testpki.CA
	dir string
}

func newTestPKI(t *testing.T) *testPKI {
	return &testPKI{ca: testpki.NewCA(t, "reverse_http test CA"), dir: t.TempDir()}
}

func (p *testPKI) serverConfig(t *testing.T) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.ca.Issue(t, testpki.Leaf{Names: []string{"localhost"}})}}
}

// clientCert returns a client certificate the CA signed.
func (p *testPKI) clientCert(t *testing.T) tls.Certificate {
	return p.ca.Issue(t, testpki.Leaf{Names: []string{"worker"}, Client: true})
}

func (p *testPKI) pool() *x509.CertPool { return p.ca.Pool() }

// caFile writes the CA certificate as PEM and returns the file's path.
func (p *testPKI) caFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(path, p.ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
