package reversehttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/reversehttp/reverse_http/worker"
)

// remoteAddrHandler answers with the address the job came from: one per
// worker connection.
func remoteAddrHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ms := r.URL.Query().Get("sleep"); ms != "" {
			d, _ := time.ParseDuration(ms + "ms")
			time.Sleep(d)
		}
		io.WriteString(w, r.RemoteAddr)
	})
}

// holdingHandler is remoteAddrHandler whose jobs with "hold" in the query
// run until release is closed.
func holdingHandler(release <-chan struct{}) http.Handler {
	next := remoteAddrHandler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("hold") {
			<-release
		}
		next.ServeHTTP(w, r)
	})
}

// getAsync sends a GET in the background and delivers "status body".
func getAsync(h *hub, path string) <-chan string {
	out := make(chan string, 1)
	go func() {
		resp, err := testClient.Get(h.site + path)
		if err != nil {
			out <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- fmt.Sprint(resp.StatusCode, " ", string(body))
	}()
	return out
}

// TestReloadKeepsConnectionsAndQueue reloads the config while a worker
// connection is idle and a request waits, and checks that both survive and
// that the new limits apply to the live pool.
func TestReloadKeepsConnectionsAndQueue(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")

	queued := getAsync(h, "/queued")
	waitFor(t, "a queued request", func() bool { return p.Stats().Waiting == 1 })
	h.load(strings.Replace(basicConfig, "token secret", "token secret\n\t\t\tmax_queue 1", 1))
	if livePool(t, "jobs") != p {
		t.Fatal("the reload replaced the pool")
	}
	if s := p.Stats(); s.Waiting != 1 {
		t.Fatalf("the queued request did not survive the reload: %+v", s)
	}
	// The new max_queue 1 is in force: the queue is full.
	if resp, _ := h.get("/"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("with max_queue 1 and one waiting, got %d, want 503", resp.StatusCode)
	}

	startWorker(t, h, "jobs", "secret", 1, remoteAddrHandler())
	first := <-queued
	if !strings.HasPrefix(first, "200 ") {
		t.Fatalf("queued request: %s", first)
	}
	h.load(basicConfig)
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("the idle worker connection did not survive the reload: %+v", s)
	}
	if resp, body := h.get("/"); resp.StatusCode != 200 || "200 "+body != first {
		t.Fatalf("after the reload the job came over %q, before over %q: want the same connection", body, first)
	}
}

// TestPoolRemovedByReload checks that a pool dropped from the config gets
// torn down: its waiting requests get 503 and its workers are let go.
func TestPoolRemovedByReload(t *testing.T) {
	const twoPools = `{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
		}
		pool other {
			listen {workers}
			token secret
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http /other* other
	reverse_http jobs
}`
	h := newHub(t, twoPools)
	other := livePool(t, "other")
	startWorker(t, h, "jobs", "secret", 1, remoteAddrHandler())
	release := make(chan struct{})
	letGo := sync.OnceFunc(func() { close(release) })
	t.Cleanup(letGo) // should the test fail while a job is held
	startWorker(t, h, "other", "secret", 1, holdingHandler(release))
	hold := getAsync(h, "/other?hold")
	waitFor(t, "a running job", func() bool { return other.Stats().Busy == 1 })
	queued := getAsync(h, "/other")
	waitFor(t, "a queued request", func() bool { return other.Stats().Waiting == 1 })

	h.load(basicConfig)
	if got := <-queued; !strings.HasPrefix(got, "503 ") {
		t.Fatalf("a request queued in the removed pool got %q, want 503", got)
	}
	letGo()
	<-hold
	waitFor(t, "the removed pool's workers to be disconnected", func() bool {
		s := other.Stats()
		return s.Idle+s.Busy == 0
	})
	if resp, _ := h.get("/"); resp.StatusCode != 200 {
		t.Fatalf("the remaining pool answered %d", resp.StatusCode)
	}
}

// TestStopAnswersQueueAndFinishesJobs stops Caddy while one job runs and
// one request waits: the waiting one gets 503 at once, the running one
// finishes.
func TestStopAnswersQueueAndFinishesJobs(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	release := make(chan struct{})
	letGo := sync.OnceFunc(func() { close(release) })
	t.Cleanup(letGo) // should the test fail while a job is held
	startWorker(t, h, "jobs", "secret", 1, holdingHandler(release))
	running := getAsync(h, "/?hold")
	waitFor(t, "a running job", func() bool { return p.Stats().Busy == 1 })
	queued := getAsync(h, "/queued")
	waitFor(t, "a queued request", func() bool { return p.Stats().Waiting == 1 })

	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- caddy.Stop() }() // waits for the running job
	if got := <-queued; !strings.HasPrefix(got, "503 ") {
		t.Fatalf("the queued request got %q, want 503", got)
	}
	letGo()
	if got := <-running; !strings.HasPrefix(got, "200 ") {
		t.Fatalf("the running job got %q, want 200", got)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > 4*time.Second {
		t.Fatalf("stopping took %v", waited)
	}
}

// TestAccessLogHasRequestID checks that the id a job carries appears in
// Caddy's access log.
func TestAccessLogHasRequestID(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "access.log")
	h := newHub(t, strings.Replace(basicConfig, "\treverse_http jobs\n",
		"\tlog {\n\t\toutput file "+logFile+"\n\t}\n\treverse_http jobs\n", 1))
	var seen string
	var mu sync.Mutex
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Get("X-Request-Id")
		mu.Unlock()
	}))
	if resp, _ := h.get("/"); resp.StatusCode != 200 {
		t.Fatalf("got %d", resp.StatusCode)
	}
	mu.Lock()
	id := seen
	mu.Unlock()
	if id == "" {
		t.Fatal("the job had no X-Request-Id")
	}
	waitFor(t, "the access log entry", func() bool {
		data, _ := os.ReadFile(logFile)
		for line := range strings.Lines(string(data)) {
			var entry struct {
				RequestID string `json:"request_id"`
			}
			if json.Unmarshal([]byte(line), &entry) == nil && entry.RequestID == id {
				return true
			}
		}
		return false
	})
}

// TestTLSWorkerListener serves the worker port with a certificate from
// Caddy's internal CA, and checks that a worker trusting that CA connects
// and serves while one that does not is refused.
func TestTLSWorkerListener(t *testing.T) {
	h := newHub(t, `{
	local_certs
	skip_install_trust
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			tls {
				hostnames localhost
			}
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`)
	rootFile := filepath.Join(testStorage(), "pki", "authorities", "local", "root.crt")
	waitFor(t, "Caddy's local root certificate", func() bool {
		_, err := os.Stat(rootFile)
		return err == nil
	})
	pem, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)

	// A worker that does not trust the CA is turned away at the TLS handshake.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var untrustingLog lockedBuffer
	untrusting, err := worker.New(worker.Config{
		Hub: h.worker, Pool: "jobs", Token: "secret", Handler: http.NotFoundHandler(),
		TLS:    &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool()},
		Logger: slog.New(slog.NewTextHandler(&untrustingLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	go untrusting.Run(ctx)
	waitFor(t, "the untrusting worker's failed attempt", func() bool {
		return strings.Contains(untrustingLog.String(), "cannot connect to hub")
	})

	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	w, err := worker.New(worker.Config{
		Hub: h.worker, Pool: "jobs", Token: "secret", Handler: remoteAddrHandler(),
		TLS:    &tls.Config{ServerName: "localhost", RootCAs: roots},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(wctx)
	p := livePool(t, "jobs")
	waitFor(t, "the TLS worker to connect", func() bool { return p.Stats().Idle == 1 })
	if resp, _ := h.get("/"); resp.StatusCode != 200 {
		t.Fatalf("got %d", resp.StatusCode)
	}
	if untrusting.Connected() != 0 || p.Stats().Idle+p.Stats().Busy != 1 {
		t.Fatalf("the worker that does not trust the CA got in: %+v", p.Stats())
	}
}

// TestConfigErrorsAtLoad checks the errors that only a whole config can
// show, as JSON users meet them.
func TestConfigErrorsAtLoad(t *testing.T) {
	h := &hub{t: t, site: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), worker: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	t.Cleanup(func() { caddy.Stop() })
	for _, tc := range []struct {
		name, config, want string
	}{
		{"pothead pool sharing its address", `{
	reverse_http {
		pool a {
			listen {workers}
		}
		pool b {
			listen {workers}
			protocol pothead
		}
	}
}`, "a pothead pool needs an address of its own"},
		{"pools on one address with different tls", `{
	local_certs
	reverse_http {
		pool a {
			listen {workers}
		}
		pool b {
			listen {workers}
			tls {
				hostnames localhost
			}
		}
	}
}`, "need the same tls block"},
		{"empty token", `{
	reverse_http {
		pool a {
			listen {workers}
			token {env.REVERSE_HTTP_TEST_UNSET_VARIABLE}
		}
	}
}`, "a token is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := h.tryLoad(tc.config)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("unknown pool in JSON", func(t *testing.T) {
		err := caddy.Load([]byte(`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"reverse_http","pool":"missing"}]}]}}}}}`), true)
		if err == nil || !strings.Contains(err.Error(), `unknown pool "missing"`) {
			t.Fatalf("got %v", err)
		}
	})
}
