package reversehttp

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// metricsConfig has two pools on one address: jobs (two waiting requests
// at most, series per worker) and rt (a short response timeout), and a
// site that serves Caddy's metrics handler, a route with a short queue
// timeout, and the pools.
const metricsConfig = `{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			max_queue 2
			metrics per_worker
		}
		pool rt {
			listen {workers}
			token secret
			response_timeout 300ms
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	metrics /metrics
	handle /short/* {
		reverse_http jobs {
			queue_timeout 200ms
		}
	}
	handle /rt/* {
		reverse_http rt
	}
	reverse_http jobs
}`

// metricSet is one scrape: each series' value by its name and sorted labels.
type metricSet struct {
	values map[string]float64
	dups   []string
	text   string
}

// scrape reads the site's /metrics.
func scrape(t *testing.T, h *hub) metricSet {
	t.Helper()
	resp, body := h.get("/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
	m := metricSet{values: make(map[string]float64), text: body}
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		key := line[:i]
		if _, dup := m.values[key]; dup {
			m.dups = append(m.dups, key)
		}
		m.values[key] = v
	}
	return m
}

// series returns the key of a series: name{k="v",...}, labels sorted by
// name as Prometheus writes them.
func series(name string, labels ...string) string {
	var pairs []string
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	slices.Sort(pairs)
	if len(pairs) == 0 {
		return name
	}
	return name + "{" + strings.Join(pairs, ",") + "}"
}

func (m metricSet) get(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	key := series(name, labels...)
	v, ok := m.values[key]
	if !ok {
		t.Fatalf("no series %s in\n%s", key, m.grep(name))
	}
	return v
}

func (m metricSet) has(name string, labels ...string) bool {
	_, ok := m.values[series(name, labels...)]
	return ok
}

// grep returns the lines of the scrape that mention s.
func (m metricSet) grep(s string) string {
	var out []string
	for line := range strings.SplitSeq(m.text, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// expect checks series of the scrape against want (key: series(...)).
// scrapeFor scrapes until the series in want have their values, or 10 s
// have passed: a request's outcome is counted when its handler returns,
// which may be just after its consumer has the response. The caller checks
// the returned set with expect.
func scrapeFor(t *testing.T, h *hub, want map[string]float64) metricSet {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := scrape(t, h)
		if m.matches(want) || time.Now().After(deadline) {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (m metricSet) matches(want map[string]float64) bool {
	for key, v := range want {
		if got, ok := m.values[key]; !ok || got != v {
			return false
		}
	}
	return true
}

func (m metricSet) expect(t *testing.T, want map[string]float64) {
	t.Helper()
	for key, v := range want {
		got, ok := m.values[key]
		if !ok {
			t.Errorf("no series %s", key)
			continue
		}
		if got != v {
			t.Errorf("%s = %v, want %v", key, got, v)
		}
	}
}

// blockingHandler holds /block requests until release, fails /fail by
// dropping the connection, and answers anything else at once.
type blockingHandler struct {
	started chan string
	release chan struct{}
}

func newBlockingHandler() *blockingHandler {
	return &blockingHandler{started: make(chan string, 16), release: make(chan struct{}, 16)}
}

func (b *blockingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/block"):
		b.started <- r.URL.Path
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
	case strings.HasSuffix(r.URL.Path, "/fail"):
		panic(http.ErrAbortHandler)
	}
	io.WriteString(w, "done")
}

// send sends GET path in a goroutine and returns its status on the channel.
func send(h *hub, ctx context.Context, path string) <-chan int {
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.site+path, nil)
		resp, err := testClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	return done
}

func wantStatus(t *testing.T, what string, ch <-chan int, want int) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Fatalf("%s: status %d, want %d", what, got, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
}

func wantStarted(t *testing.T, b *blockingHandler, path string) {
	t.Helper()
	select {
	case got := <-b.started:
		if got != path {
			t.Fatalf("worker started %s, want %s", got, path)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("worker never started %s", path)
	}
}

// handshakeWith dials the worker listener with a handshake for pool and
// token and returns the status the hub answered.
func handshakeWith(t *testing.T, h *hub, pool, token string) int {
	t.Helper()
	conn, err := net.Dial("tcp", h.worker)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authz := ""
	if token != "" {
		authz = "Authorization: Bearer " + token + "\r\n"
	}
	fmt.Fprintf(conn, "GET /%s HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: PTTH/1.0\r\n%s\r\n", pool, authz)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var status int
	if _, err := fmt.Fscanf(conn, "HTTP/1.1 %d", &status); err != nil {
		t.Fatalf("reading the handshake's answer: %v", err)
	}
	return status
}

// TestMetricsKnownSequence runs a known sequence of jobs through two pools
// and checks every pool metric against it: queue depth and workers while
// requests wait, then the outcome of each request, the histograms' counts,
// handshakes by result and the per-worker series.
func TestMetricsKnownSequence(t *testing.T) {
	h := newHub(t, metricsConfig)
	b := newBlockingHandler()
	startWorker(t, h, "jobs", "secret", 1, b)
	jobs := livePool(t, "jobs")
	idle := func() { waitFor(t, "the worker's slot idle", func() bool { return jobs.Stats().Idle == 1 }) }
	ctx := context.Background()

	// A runs; B and C wait; D finds the queue full.
	a := send(h, ctx, "/a/block")
	wantStarted(t, b, "/a/block")
	bReq := send(h, ctx, "/b/block")
	waitFor(t, "B waiting", func() bool { return jobs.Stats().Waiting == 1 })
	cReq := send(h, ctx, "/c/block")
	waitFor(t, "two requests waiting", func() bool { return jobs.Stats().Waiting == 2 })
	m := scrape(t, h)
	m.expect(t, map[string]float64{
		series(metricPrefix+"queue_depth", "pool", "jobs"):                                                            2,
		series(metricPrefix+"queue_depth", "pool", "rt"):                                                              0,
		series(metricPrefix+"max_queue", "pool", "jobs"):                                                              2,
		series(metricPrefix+"workers", "pool", "jobs", "state", "busy"):                                               1,
		series(metricPrefix+"workers", "pool", "jobs", "state", "idle"):                                               0,
		series(metricPrefix+"worker_connections", "pool", "jobs", "worker", "test-worker@127.0.0.1", "state", "busy"): 1,
	})
	if v := m.get(t, metricPrefix+"queue_oldest_wait_seconds", "pool", "jobs"); v <= 0 {
		t.Errorf("oldest wait %v while two requests wait", v)
	}
	wantStatus(t, "D with the queue full", send(h, ctx, "/d"), http.StatusServiceUnavailable)
	for _, path := range []string{"/a/block", "/b/block", "/c/block"} {
		if path != "/a/block" {
			wantStarted(t, b, path)
		}
		b.release <- struct{}{}
	}
	wantStatus(t, "A", a, http.StatusOK)
	wantStatus(t, "B", bReq, http.StatusOK)
	wantStatus(t, "C", cReq, http.StatusOK)
	idle()

	// E times out in the queue while F runs.
	f := send(h, ctx, "/f/block")
	wantStarted(t, b, "/f/block")
	wantStatus(t, "E past its queue timeout", send(h, ctx, "/short/e"), http.StatusServiceUnavailable)

	// G leaves while it waits behind F.
	gctx, gcancel := context.WithCancel(ctx)
	g := send(h, gctx, "/g")
	waitFor(t, "G waiting", func() bool { return jobs.Stats().Waiting == 1 })
	gcancel()
	<-g
	waitFor(t, "G out of the queue", func() bool { return jobs.Stats().Waiting == 0 })
	b.release <- struct{}{}
	wantStatus(t, "F", f, http.StatusOK)
	idle()

	// H leaves while the worker runs it; the hub closes its connection.
	hctx, hcancel := context.WithCancel(ctx)
	hReq := send(h, hctx, "/h/block")
	wantStarted(t, b, "/h/block")
	hcancel()
	<-hReq
	waitFor(t, "H counted", func() bool { return jobs.obs.requests[outcomeCancelledRunning].Load() == 1 })
	idle()

	// I fails on the worker; J misses rt's response timeout.
	wantStatus(t, "I", send(h, ctx, "/fail"), http.StatusBadGateway)
	idle()
	rtWorker := newBlockingHandler()
	startWorker(t, h, "rt", "secret", 1, rtWorker)
	wantStatus(t, "J", send(h, ctx, "/rt/block"), http.StatusGatewayTimeout)

	// Handshakes refused: no token, a wrong one, a pool nobody defined
	// (counted under the address's first pool, jobs).
	for _, tc := range []struct {
		pool, token string
		status      int
	}{{"jobs", "", 401}, {"rt", "wrong", 403}, {"nosuchpool", "secret", 404}} {
		if got := handshakeWith(t, h, tc.pool, tc.token); got != tc.status {
			t.Fatalf("handshake for %s with token %q: %d, want %d", tc.pool, tc.token, got, tc.status)
		}
	}

	waitFor(t, "the rt worker's connection back", func() bool { return livePool(t, "rt").Stats().Idle == 1 })
	want := map[string]float64{
		series(metricPrefix+"queue_depth", "pool", "jobs"):                                              0,
		series(metricPrefix+"workers", "pool", "jobs", "state", "idle"):                                 1,
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "ok"):                          4, // A B C F
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "queue_full"):                  1, // D
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "queue_timeout"):               1, // E
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "cancelled_queued"):            1, // G
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "cancelled_running"):           1, // H
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "worker_failed"):               1, // I
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "response_timeout"):            0,
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "pool_closed"):                 0,
		series(metricPrefix+"requests_total", "pool", "rt", "outcome", "response_timeout"):              1, // J
		series(metricPrefix+"requests_total", "pool", "rt", "outcome", "ok"):                            0,
		series(metricPrefix+"queue_wait_seconds_count", "pool", "jobs"):                                 6, // A B C F H I
		series(metricPrefix+"job_duration_seconds_count", "pool", "jobs"):                               6,
		series(metricPrefix+"queue_wait_seconds_count", "pool", "rt"):                                   1,
		series(metricPrefix+"handshakes_total", "pool", "jobs", "result", "unauthorized"):               1,
		series(metricPrefix+"handshakes_total", "pool", "rt", "result", "forbidden"):                    1,
		series(metricPrefix+"handshakes_total", "pool", "jobs", "result", "not_found"):                  1,
		series(metricPrefix+"handshakes_total", "pool", "rt", "result", "not_found"):                    0,
		series(metricPrefix+"worker_disconnects_total", "pool", "jobs", "reason", "cancelled"):          1, // H
		series(metricPrefix+"worker_disconnects_total", "pool", "jobs", "reason", "failed_job"):         1, // I
		series(metricPrefix+"worker_disconnects_total", "pool", "rt", "reason", "response_timeout"):     1,
		series(metricPrefix+"worker_jobs_total", "pool", "jobs", "worker", "test-worker@127.0.0.1"):     4,
		series(metricPrefix+"worker_failures_total", "pool", "jobs", "worker", "test-worker@127.0.0.1"): 1,
		series(metricPrefix+"requeues_total", "pool", "jobs", "reason", "declined"):                     0,
	}
	m = scrapeFor(t, h, want)
	m.expect(t, want)
	// The first connection of each pool, and the redials after H, I and J.
	if v := m.get(t, metricPrefix+"handshakes_total", "pool", "jobs", "result", "ok"); v < 3 {
		t.Errorf("jobs handshakes ok = %v, want at least 3", v)
	}
	if m.has(metricPrefix+"worker_connections", "pool", "rt", "worker", "test-worker@127.0.0.1", "state", "idle") {
		t.Error("per-worker series for pool rt, which did not turn them on")
	}
	if len(m.dups) > 0 {
		t.Errorf("series given twice: %v", m.dups)
	}
	for _, name := range []string{"queue_depth", "workers", "queue_wait_seconds", "job_duration_seconds", "requests_total", "requeues_total", "handshakes_total"} {
		if !strings.Contains(m.text, "# HELP "+metricPrefix+name+" ") {
			t.Errorf("no help for %s", metricPrefix+name)
		}
	}
}

// TestMetricsAcrossReloads reloads the config: the counters go on, no
// series is given twice, and a pool the new config drops has no series.
func TestMetricsAcrossReloads(t *testing.T) {
	h := newHub(t, metricsConfig)
	startWorker(t, h, "jobs", "secret", 2, newBlockingHandler())
	for range 3 {
		if resp, _ := h.get("/x"); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	ok := series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "ok")
	reloaded := strings.Replace(metricsConfig, "max_queue 2", "max_queue 5", 1)
	for i, cfg := range []string{reloaded, metricsConfig} {
		h.load(cfg)
		m := scrape(t, h)
		if len(m.dups) > 0 {
			t.Fatalf("reload %d: series given twice: %v", i, m.dups)
		}
		m.expect(t, map[string]float64{
			ok: 3,
			series(metricPrefix+"workers", "pool", "jobs", "state", "idle"):                             2,
			series(metricPrefix+"queue_wait_seconds_count", "pool", "jobs"):                             3,
			series(metricPrefix+"max_queue", "pool", "jobs"):                                            []float64{5, 2}[i],
			series(metricPrefix+"worker_jobs_total", "pool", "jobs", "worker", "test-worker@127.0.0.1"): 3,
		})
		if got := strings.Count(m.text, "# HELP "+metricPrefix+"requests_total "); got != 1 {
			t.Fatalf("reload %d: requests_total described %d times", i, got)
		}
	}

	withoutRT := strings.Replace(strings.Replace(metricsConfig, `		pool rt {
			listen {workers}
			token secret
			response_timeout 300ms
		}
`, "", 1), `	handle /rt/* {
		reverse_http rt
	}
`, "", 1)
	h.load(withoutRT)
	m := scrape(t, h)
	if got := m.grep(`pool="rt"`); got != "" {
		t.Fatalf("pool rt is gone, but its series are not:\n%s", got)
	}
	m.expect(t, map[string]float64{ok: 3})
}

// TestMetricsConcurrentScrapes scrapes while requests run, under -race:
// each request counts once, with the outcome its consumer saw (a 503 is a
// full queue: four consumers share two slots and a queue of two).
func TestMetricsConcurrentScrapes(t *testing.T) {
	h := newHub(t, metricsConfig)
	startWorker(t, h, "jobs", "secret", 2, newBlockingHandler())
	var wg sync.WaitGroup
	var ok, full atomic.Int32
	for range 4 {
		wg.Go(func() {
			for range 20 {
				switch resp, _ := h.get("/x"); resp.StatusCode {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusServiceUnavailable:
					full.Add(1)
				}
			}
		})
	}
	for range 10 {
		scrape(t, h)
	}
	wg.Wait()
	if ok.Load()+full.Load() != 80 {
		t.Fatalf("%d answered 200 and %d 503 of 80", ok.Load(), full.Load())
	}
	want := map[string]float64{
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "ok"):         float64(ok.Load()),
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "queue_full"): float64(full.Load()),
	}
	scrapeFor(t, h, want).expect(t, want)
}

// TestMetricsDeclines: a request every worker declines gets 503 after
// max_attempts; it counts as worker_failed with its requeues as declined,
// and as no failure of the worker, which failed nothing.
func TestMetricsDeclines(t *testing.T) {
	h := newHub(t, strings.Replace(metricsConfig, "max_queue 2", "max_queue 2\n\t\t\tmax_attempts 3", 1))
	startWorker(t, h, "jobs", "secret", 1, worker.AcceptLater(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		worker.Decline(w)
	})))
	if resp, _ := h.get("/x"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	want := map[string]float64{
		series(metricPrefix+"requests_total", "pool", "jobs", "outcome", "worker_failed"):               1,
		series(metricPrefix+"requeues_total", "pool", "jobs", "reason", "declined"):                     3,
		series(metricPrefix+"worker_failures_total", "pool", "jobs", "worker", "test-worker@127.0.0.1"): 0,
		series(metricPrefix+"worker_jobs_total", "pool", "jobs", "worker", "test-worker@127.0.0.1"):     0,
	}
	scrapeFor(t, h, want).expect(t, want)
}
