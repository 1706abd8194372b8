package reversehttp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// workerJobs is what the worker binary's /jobs answers.
type workerJobs struct {
	Slots, Busy int
	Jobs        []struct {
		RequestID string `json:"request_id"`
		Method    string
		Path      string
		Hub       string
		StartedAt time.Time `json:"started_at"`
		Status    int
		BytesIn   int64 `json:"bytes_in"`
		BytesOut  int64 `json:"bytes_out"`
	}
}

// workerScrape reads the worker binary's /metrics at addr.
func workerScrape(t *testing.T, addr string) metricSet {
	t.Helper()
	resp, err := testClient.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("worker /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("worker /metrics: %v", err)
	}
	m := metricSet{values: make(map[string]float64), text: string(body)}
	for line := range strings.SplitSeq(m.text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m.values[line[:i]] = v
	}
	return m
}

// waitWorkerMetric scrapes until the series has the value.
func waitWorkerMetric(t *testing.T, addr string, want float64, name string, labels ...string) metricSet {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := workerScrape(t, addr)
		if v, ok := m.values[series(name, labels...)]; ok && v == want {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not %v:\n%s", series(name, labels...), want, m.grep(name))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestE2EWorkerMetrics runs the worker binary with --metrics against Caddy
// and the sample app, sends a known sequence of jobs, and reads /jobs and
// /metrics while a slow one runs and after each kind of ending: answered
// (an app's own 502 among them), cancelled by the consumer, declined while
// the app is down, and failed when it dies mid-job.
func TestE2EWorkerMetrics(t *testing.T) {
	app := startSampleApp(t)
	h := newHub(t, drainConfig)
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w := startWorkerProc(t, h, "w-metrics", app.url, 2, 2, nil, "--token", "secret", "--metrics", maddr)
	connected := regexp.MustCompile(`level=INFO msg="connected to hub" hub=` + regexp.QuoteMeta(h.worker) + ` address=\S+ pool=jobs attempts=1\n`)
	waitFor(t, "the connected line", func() bool { return connected.MatchString(w.out.String()) })
	if n := strings.Count(w.out.String(), "connected to hub"); n != 1 {
		t.Errorf("%d connected lines for one hub, want 1:\n%s", n, w.out.String())
	}
	hub := []string{"hub", h.worker}

	for range 3 {
		if resp, body := h.get("/hello"); resp.StatusCode != 200 {
			t.Fatalf("/hello: %d %q", resp.StatusCode, body)
		}
	}
	upload := strings.Repeat("u", 1000)
	if resp, body := h.do(mustRequest(t, "POST", h.site+"/sha256", strings.NewReader(upload))); resp.StatusCode != 200 ||
		!strings.Contains(body, `"bytes":1000`) {
		t.Fatalf("/sha256: %d %q", resp.StatusCode, body)
	}
	if resp, _ := h.get("/status?code=502"); resp.StatusCode != 502 {
		t.Fatalf("/status?code=502: %d", resp.StatusCode)
	}

	slowReq := mustRequest(t, "GET", h.site+"/sleep?ms=1500", nil)
	slowReq.Header.Set("X-Request-Id", "e2e-slow")
	slow := goDo(slowReq)
	waitFor(t, "the slow job to run", func() bool { return app.running(t) == 1 })
	resp, err := testClient.Get("http://" + maddr + "/jobs")
	if err != nil {
		t.Fatal(err)
	}
	var jobs workerJobs
	err = json.NewDecoder(resp.Body).Decode(&jobs)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if jobs.Slots != 2 || jobs.Busy != 1 || len(jobs.Jobs) != 1 {
		t.Fatalf("/jobs while one runs: %+v", jobs)
	}
	if j := jobs.Jobs[0]; j.RequestID != "e2e-slow" || j.Method != "GET" || j.Path != "/sleep" || j.Hub != h.worker ||
		j.Status != 0 || j.BytesIn != 0 || j.BytesOut != 0 || time.Since(j.StartedAt) > time.Minute {
		t.Errorf("/jobs: %+v", j)
	}
	// A job is counted once its handler has returned, which may be just
	// after the hub has its whole response.
	m := waitWorkerMetric(t, maddr, 5, "reverse_http_worker_jobs_total", "outcome", "ok")
	expectWorker := func(m metricSet, want map[string]float64) {
		t.Helper()
		for key, v := range want {
			if got, ok := m.values[key]; !ok || got != v {
				t.Errorf("%s = %v (present %v), want %v", key, got, ok, v)
			}
		}
	}
	expectWorker(m, map[string]float64{
		series("reverse_http_worker_jobs_total", "outcome", "ok"):             5,
		series("reverse_http_worker_jobs_total", "outcome", "cancelled"):      0,
		series("reverse_http_worker_slots"):                                   2,
		series("reverse_http_worker_slots_busy"):                              1,
		series("reverse_http_worker_healthy"):                                 1,
		series("reverse_http_worker_hub_reconnects_total", hub...):            0,
		series("reverse_http_worker_job_body_bytes_total", "direction", "in"): 1000,
		series("reverse_http_worker_job_duration_seconds_count"):              5,
	})
	// Both slots are connected; a connection may have been redialled.
	m = waitWorkerMetric(t, maddr, 2, "reverse_http_worker_hub_connections", hub...)
	if n := m.values[series("reverse_http_worker_hub_connect_attempts_total", append(hub, "result", "ok")...)]; n < 2 {
		t.Errorf("%v successful connect attempts, want at least the 2 slots", n)
	}

	// The consumer leaves a running job: the hub closes its connection.
	ctx, cancel := context.WithCancel(context.Background())
	leaving := goDo(mustRequest(t, "GET", h.site+"/sleep?ms=20000", nil).WithContext(ctx))
	waitFor(t, "the second job to run", func() bool { return app.running(t) == 2 })
	cancel()
	<-leaving
	waitWorkerMetric(t, maddr, 1, "reverse_http_worker_jobs_total", "outcome", "cancelled")
	if r := receive(t, "slow job", slow, 10*time.Second); r.status != 200 {
		t.Errorf("slow job: %v", r)
	}
	m = waitWorkerMetric(t, maddr, 6, "reverse_http_worker_jobs_total", "outcome", "ok")
	if sum := m.values[series("reverse_http_worker_job_duration_seconds_sum")]; sum < 1.5 {
		t.Errorf("job durations sum to %vs, less than the slow job's 1.5 s", sum)
	}
	expectWorker(m, map[string]float64{series("reverse_http_worker_job_duration_seconds_count"): 7})

	// The app dies while the worker is idle: the next job finds it gone
	// before anything was sent, and is declined; the worker leaves the hub.
	_, appBin := e2eBinaries(t)
	appAddr := strings.TrimPrefix(app.url, "http://")
	app.cmd.Process.Kill()
	app.wait(t, 10*time.Second)
	if resp, _ := h.get("/hello"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/hello with the app down: %d, want 503 after the queue timeout", resp.StatusCode)
	}
	m = waitWorkerMetric(t, maddr, 0, "reverse_http_worker_healthy")
	if d := m.values[series("reverse_http_worker_jobs_total", "outcome", "declined")]; d < 1 || d > 2 {
		t.Errorf("%v jobs declined, want 1 (or 2: the request requeued to the other slot before the worker left)", d)
	}
	waitWorkerMetric(t, maddr, 0, "reverse_http_worker_hub_connections", hub...)

	// The app comes back, and dies mid-job: failed.
	app2 := startProc(t, "sample-app-2", appBin, nil, "--listen", appAddr)
	waitWorkerMetric(t, maddr, 1, "reverse_http_worker_healthy")
	waitPoolConns(t, w, 2, 10*time.Second)
	dying := goGet(t, h.site+"/sleep?ms=20000")
	waitWorkerMetric(t, maddr, 1, "reverse_http_worker_slots_busy")
	app2.cmd.Process.Kill()
	if r := receive(t, "job on the dying app", dying, 10*time.Second); r.status != http.StatusBadGateway {
		t.Errorf("job on the dying app: %v, want 502", r)
	}
	waitWorkerMetric(t, maddr, 1, "reverse_http_worker_jobs_total", "outcome", "failed")
	waitWorkerMetric(t, maddr, 0, "reverse_http_worker_slots_busy") // freed just after the job is counted
	expectWorker(workerScrape(t, maddr), map[string]float64{
		series("reverse_http_worker_jobs_total", "outcome", "ok"):        6,
		series("reverse_http_worker_jobs_total", "outcome", "cancelled"): 1,
		series("reverse_http_worker_jobs_total", "outcome", "no_slot"):   0,
	})
}

// TestE2EWorkerRuntime: the worker binary collects garbage at GOGC=400 and
// runs Go code on a thread per 8 slots (at most as many as Go would use),
// unless the environment sets GOGC or GOMAXPROCS, which win.
func TestE2EWorkerRuntime(t *testing.T) {
	workerBin, _ := e2eBinaries(t)
	for _, name := range []string{"GOGC", "GOMAXPROCS"} {
		t.Setenv(name, "")
		os.Unsetenv(name) // t.Setenv puts the old value back at the end
	}
	cpus := float64(runtime.GOMAXPROCS(0))
	for _, tc := range []struct {
		env              []string
		slots            int
		gogc, gomaxprocs float64
	}{
		{nil, 8, 400, 1},
		{nil, 9, 400, min(cpus, 2)},
		{[]string{"GOGC=150", "GOMAXPROCS=3"}, 1, 150, 3},
	} {
		maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		// No hub answers at this address: the worker keeps trying, and
		// serves its metrics meanwhile.
		startProc(t, "w-runtime", workerBin, tc.env, "--hub", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--pool", "jobs",
			"--upstream", "http://127.0.0.1:9", "--slots", fmt.Sprint(tc.slots), "--metrics", maddr)
		var m metricSet
		waitFor(t, "the worker's metrics", func() bool {
			resp, err := testClient.Get("http://" + maddr + "/metrics")
			if err != nil {
				return false
			}
			resp.Body.Close()
			m = workerScrape(t, maddr)
			return true
		})
		if got := m.get(t, "go_gc_gogc_percent"); got != tc.gogc {
			t.Errorf("env %q, %d slots: GOGC %v, want %v", tc.env, tc.slots, got, tc.gogc)
		}
		if got := m.get(t, "go_sched_gomaxprocs_threads"); got != tc.gomaxprocs {
			t.Errorf("env %q, %d slots: GOMAXPROCS %v, want %v", tc.env, tc.slots, got, tc.gomaxprocs)
		}
	}
}
