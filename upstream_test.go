package reversehttp

// A worker whose upstream is down, through the real hub: it declines what
// it is sent, leaves the pool, and comes back once its upstream does.

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// upstreamApp answers "<name> <method> <body>", and holds requests to /hold
// until release is closed.
func upstreamApp(name string, held chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			held <- struct{}{}
			<-release
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", name, r.Method, body)
	})
}

func forwarderTo(t *testing.T, rawURL string) *worker.Forwarder {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return worker.NewForwarder(u, slog.New(slog.DiscardHandler))
}

// TestUpstreamDownDeclines: one healthy and one broken (upstream port
// closed) 1-slot worker; 20 requests, GETs and POSTs at once: none fails.
// Then the broken worker's upstream comes up, and the worker is back in the
// pool within a bound and serves.
func TestUpstreamDownDeclines(t *testing.T) {
	h := newHub(t, basicConfig)
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	good := httptest.NewServer(upstreamApp("healthy", held, release))
	defer good.Close()
	defer close(release)
	brokenAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	broken := forwarderTo(t, "http://"+brokenAddr)
	startWorker(t, h, "jobs", "secret", 1, forwarderTo(t, good.URL))
	startWorker(t, h, "jobs", "secret", 1, broken)
	p := livePool(t, "jobs")

	const n = 20
	var results []<-chan e2eResult
	for i := range n {
		var req *http.Request
		if i%2 == 0 {
			req, _ = http.NewRequest("GET", fmt.Sprintf("%s/job/%d", h.site, i), nil)
		} else {
			req, _ = http.NewRequest("POST", fmt.Sprintf("%s/job/%d", h.site, i), strings.NewReader(fmt.Sprint("body-", i)))
		}
		results = append(results, goDo(req))
	}
	failed := 0
	for i, ch := range results {
		r := receive(t, fmt.Sprint("request ", i), ch, 30*time.Second)
		want := "healthy GET "
		if i%2 == 1 {
			want = fmt.Sprint("healthy POST body-", i)
		}
		if r.err != nil || r.status != 200 || r.body != want {
			failed++
			t.Errorf("request %d: %v, want 200 %q", i, r, want)
		}
	}
	t.Logf("%d of %d requests failed", failed, n)
	if broken.Health().Err() == nil {
		t.Fatal("the broken worker never got a job: the test proved nothing")
	}
	waitFor(t, "the broken worker to leave the pool", func() bool { s := p.Stats(); return s.Idle+s.Busy == 1 })

	// The upstream stays down long enough for the probes to back off to
	// their longest interval (2 s), then comes up: the worker is back
	// within about that.
	downSince := time.Now()
	waitFor(t, "3 s of downtime", func() bool { return time.Since(downSince) > 3*time.Second })
	ln, err := net.Listen("tcp", brokenAddr)
	if err != nil {
		t.Fatalf("listening on %s again: %v", brokenAddr, err)
	}
	revived := httptest.NewUnstartedServer(upstreamApp("revived", nil, nil))
	revived.Listener = ln
	began := time.Now()
	revived.Start()
	defer revived.Close()
	waitFor(t, "the revived worker in the pool", func() bool { s := p.Stats(); return s.Idle+s.Busy == 2 })
	back := time.Since(began)
	t.Logf("back in the pool %v after its upstream came up", back.Round(time.Millisecond))
	if back > 4*time.Second {
		t.Errorf("took %v to come back, want at most 4 s", back)
	}

	// With the healthy worker held busy, the next job goes to the revived one.
	hold := goGet(t, h.site+"/hold")
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the held job did not reach the healthy upstream")
	}
	if resp, body := h.get("/x"); resp.StatusCode != 200 || body != "revived GET " {
		t.Errorf("got %d %q from the revived worker", resp.StatusCode, body)
	}
	release <- struct{}{} // not closed yet: the deferred close ends the test's other holds
	if r := receive(t, "the held job", hold, 10*time.Second); r.status != 200 {
		t.Errorf("held job: %v", r)
	}
}
