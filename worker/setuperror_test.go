package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/reversehttp/reverse_http/internal/testpki"
)

// newTLSHubWith is a test hub behind a TLS listener configured by cfg.
func newTLSHubWith(t *testing.T, cfg *tls.Config) *testHub {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return startTestHub(t, ln)
}

// logBuffer keeps a worker's log lines (and passes them to t.Log).
type logBuffer struct {
	testLogWriter
	bmu   sync.Mutex
	lines []string
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.bmu.Lock()
	b.lines = append(b.lines, string(p))
	b.bmu.Unlock()
	return b.testLogWriter.Write(p)
}

// count returns how many lines contain s.
func (b *logBuffer) count(s string) int {
	b.bmu.Lock()
	defer b.bmu.Unlock()
	n := 0
	for _, l := range b.lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func capturingLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	b := &logBuffer{testLogWriter: testLogWriter{t: t}}
	t.Cleanup(func() { b.mu.Lock(); b.done = true; b.mu.Unlock() })
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// runUntilError runs a worker and returns what Run returned.
func runUntilError(t *testing.T, cfg Config) error {
	t.Helper()
	if cfg.Pool == "" {
		cfg.Pool = "test"
	}
	if cfg.Handler == nil {
		cfg.Handler = pathHandler()
	}
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	err := Run(ctx, cfg)
	if ctx.Err() != nil {
		t.Fatalf("Run kept retrying: %v", err)
	}
	return err
}

// TestSetupErrors: a TLS mistake that retrying cannot heal ends Run at its
// first attempt with a SetupError naming it.
func TestSetupErrors(t *testing.T) {
	ca := testpki.NewCA(t, "hub CA")
	serverCert := ca.Issue(t, testpki.Leaf{Names: []string{"localhost", "127.0.0.1"}})
	expired := ca.Issue(t, testpki.Leaf{Names: []string{"localhost", "127.0.0.1"}, Expired: true})
	clientCA := testpki.NewCA(t, "client CA")
	strangerCert := testpki.NewCA(t, "stranger").Issue(t, testpki.Leaf{Names: []string{"w"}, Client: true})
	requireClient := func(max uint16) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs: clientCA.Pool(), MaxVersion: max}
	}
	plain := func(t *testing.T) *testHub { return newTestHub(t) }
	tlsHub := func(cfg *tls.Config) func(t *testing.T) *testHub {
		return func(t *testing.T) *testHub { return newTLSHubWith(t, cfg) }
	}
	good := &tls.Config{Certificates: []tls.Certificate{serverCert}}
	for _, tc := range []struct {
		name   string
		hub    func(t *testing.T) *testHub
		client *tls.Config
		want   SetupProblem
	}{
		{"unknown CA", tlsHub(good), &tls.Config{RootCAs: testpki.NewCA(t, "other").Pool()}, UntrustedHub},
		{"wrong name", tlsHub(good), &tls.Config{RootCAs: ca.Pool(), ServerName: "hub.example"}, WrongServerName},
		{"expired", tlsHub(&tls.Config{Certificates: []tls.Certificate{expired}}), &tls.Config{RootCAs: ca.Pool()}, InvalidHubCertificate},
		{"client certificate required, TLS 1.3", tlsHub(requireClient(0)), &tls.Config{RootCAs: ca.Pool()}, ClientCertificateRequired},
		{"client certificate required, TLS 1.2", tlsHub(requireClient(tls.VersionTLS12)), &tls.Config{RootCAs: ca.Pool()}, ClientCertificateRequired},
		{"client certificate refused, TLS 1.3", tlsHub(requireClient(0)),
			&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{strangerCert}}, ClientCertificateRejected},
		{"client certificate refused, TLS 1.2", tlsHub(requireClient(tls.VersionTLS12)),
			&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{strangerCert}}, ClientCertificateRejected},
		{"TLS to a plain hub", plain, &tls.Config{RootCAs: ca.Pool()}, HubWithoutTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub := tc.hub(t)
			err := runUntilError(t, Config{Hub: hub.addr(), TLS: tc.client, Slots: 2})
			var se *SetupError
			if !errors.As(err, &se) || se.Problem != tc.want {
				t.Fatalf("Run returned %v (%T), want a SetupError %q", err, err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
	t.Run("plain to a hub that says it wants TLS", func(t *testing.T) {
		hub := newTestHub(t)
		hub.configure(func(h *testHub) {
			h.policy = func(int) (int, string) { return http.StatusBadRequest, "this address requires TLS" }
		})
		err := runUntilError(t, Config{Hub: hub.addr()})
		var se *SetupError
		var he *HandshakeError
		if !errors.As(err, &se) || se.Problem != HubRequiresTLS || !errors.As(err, &he) {
			t.Fatalf("Run returned %v (%T), want a SetupError %q around the 400", err, err, HubRequiresTLS)
		}
	})
}

// waitRetries waits until the worker has logged n failed attempts, and
// checks that Run is still going.
func waitRetries(t *testing.T, logs *logBuffer, rw *runningWorker, n int) {
	t.Helper()
	eventually(t, "retries", func() bool { return logs.count("cannot connect to hub") >= n })
	select {
	case err := <-rw.done:
		t.Fatalf("Run returned %v, want it to keep retrying", err)
	default:
	}
}

// TestHealableFailuresRetried: a refused connection, and a plain worker on
// a TLS listener that just hangs up (ambiguous), are retried; the first
// connects once a hub listens.
func TestHealableFailuresRetried(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		addr := closedPort(t)
		logger, logs := capturingLogger(t)
		rw := startWorkerAt(t, addr, Config{Logger: logger, Handler: pathHandler()})
		waitRetries(t, logs, rw, 2)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on %s again: %v", addr, err)
		}
		hub := startTestHub(t, ln)
		if _, body := hub.next(t).send(t, get("/x")); body != "job /x" {
			t.Errorf("body %q", body)
		}
	})
	t.Run("plain to a TLS hub that hangs up", func(t *testing.T) {
		hub := newTLSHubWith(t, &tls.Config{Certificates: []tls.Certificate{testpki.NewCA(t, "ca").Issue(t, testpki.Leaf{Names: []string{"127.0.0.1"}})}})
		logger, logs := capturingLogger(t)
		rw := startWorkerAt(t, hub.addr(), Config{Logger: logger, Handler: pathHandler()})
		waitRetries(t, logs, rw, 2)
	})
}

// TestTLSErrorsAfterSuccessRetried: once a handshake has succeeded, even a
// certificate the worker does not trust is only retried.
func TestTLSErrorsAfterSuccessRetried(t *testing.T) {
	ca := testpki.NewCA(t, "hub CA")
	good := ca.Issue(t, testpki.Leaf{Names: []string{"127.0.0.1"}})
	bad := testpki.NewCA(t, "other").Issue(t, testpki.Leaf{Names: []string{"127.0.0.1"}})
	var useBad atomic.Bool
	hub := newTLSHubWith(t, &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if useBad.Load() {
			return &bad, nil
		}
		return &good, nil
	}})
	logger, logs := capturingLogger(t)
	rw := startWorkerAt(t, hub.addr(), Config{Logger: logger, TLS: &tls.Config{RootCAs: ca.Pool()}, Handler: pathHandler()})
	s := hub.next(t)
	s.send(t, get("/x"))
	useBad.Store(true)
	s.c.Close()
	waitRetries(t, logs, rw, 2)
	useBad.Store(false)
	if _, body := hub.next(t).send(t, get("/y")); body != "job /y" {
		t.Errorf("body %q", body)
	}
}
