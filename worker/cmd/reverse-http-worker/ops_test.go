package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/reversehttp/reverse_http/worker"
)

// TestHelpAndVersion: --help and --version write to standard output and
// exit 0; a flag error writes to standard error and exits 2.
func TestHelpAndVersion(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string // a regular expression
		stderrWant string
	}{
		{[]string{"--help"}, 0, `(?s)^Usage: reverse-http-worker --hub .*-metrics ADDR.*-version`, ""},
		{[]string{"-h"}, 0, `^Usage:`, ""},
		{[]string{"--version"}, 0, `^reverse-http-worker (\(devel\)|v\S+)( commit [0-9a-f]+(\+modified)?)? go1\.\d+\S*\n$`, ""},
		{[]string{"--version", "--slots", "0"}, 0, `^reverse-http-worker `, ""},
		{[]string{"--nope"}, 2, `^$`, "flag provided but not defined: -nope\nUsage:"},
		{[]string{"--slots", "x"}, 2, `^$`, `invalid value "x" for flag -slots`},
	} {
		var stdout, stderr bytes.Buffer
		code := runWith(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !regexp.MustCompile(tc.stdout).MatchString(stdout.String()) ||
			!strings.Contains(stderr.String(), tc.stderrWant) || (tc.stderrWant == "") != (stderr.Len() == 0) {
			t.Errorf("%q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", tc.args, code, tc.code, stdout.String(), stderr.String())
		}
	}
}

// TestIgnoredFlagWarnings: every flag given that the others make
// pointless is named in a warning, and flags that take effect are not.
func TestIgnoredFlagWarnings(t *testing.T) {
	t.Setenv("REVERSE_HTTP_TOKEN", "")
	up := []string{"--hub", "127.0.0.1:1", "--pool", "p", "--upstream", "http://127.0.0.1:2"}
	pothead := []string{"--hub", "127.0.0.1:1", "--protocol", "pothead", "--upstream", "http://127.0.0.1:2"}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{up, nil},
		{append(up, "--token", "t", "--name", "n", "--exec-content-type", "a/b"), []string{"--exec-content-type"}},
		{append(pothead, "--pool", "p", "--token", "t", "--name", "n"), []string{"--pool", "--token", "--name"}},
		{append(pothead, "--max-cpu", "80", "--tls"), nil},
		{append(up, "--exec-timeout", "1s", "--exec-env", "HOME"), []string{"--exec-timeout", "--exec-env"}},
		{[]string{"--hub", "127.0.0.1:1", "--pool", "p", "--exec", "cat", "--exec-timeout", "1s", "--exec-content-type", "a/b"}, nil},
		{[]string{"--hub", "127.0.0.1:1", "--pool", "p", "--cgi", "x.cgi", "--exec-content-type", "a/b"}, []string{"--exec-content-type"}},
		{append(up, "--gate-timeout", "2s", "--gate-interval", "1s"), []string{"--gate-timeout", "--gate-interval"}},
		{append(up, "--gate-url", "http://127.0.0.1:3/ok", "--gate-timeout", "2s", "--gate-interval", "1s"), nil},
		{append(up, "--min-free-memory", "1G", "--gate-interval", "1s"), nil},
		{append(up, "--resolve-interval", "1s"), []string{"--resolve-interval"}},
		{[]string{"--hub", "localhost:1", "--pool", "p", "--upstream", "http://x", "--resolve-interval", "1s"}, nil},
		{append(up, "--metrics", ":9464"), []string{"--metrics"}},
		{append(up, "--metrics", "0.0.0.0:9464"), []string{"--metrics"}},
		{append(up, "--metrics", "127.0.0.1:9464"), nil},
	} {
		o, err := parseFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		var got []string
		for _, w := range o.warnings() {
			got = append(got, w.flag)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%q: warnings for %q, want %q", tc.args, got, tc.want)
		}
	}
	t.Setenv("REVERSE_HTTP_TOKEN", "from-env")
	o, _ := parseFlags(pothead, io.Discard)
	if ws := o.warnings(); len(ws) != 1 || ws[0].flag != "$REVERSE_HTTP_TOKEN" {
		t.Errorf("pothead with $REVERSE_HTTP_TOKEN: %+v", ws)
	}

	// The binary logs them at start-up.
	_, out := serveHub(t, append(pothead[:len(pothead):len(pothead)], "--name", "w1"))
	want := `level=WARN msg="flag has no effect" flag=--name why="with --protocol pothead the worker sends no handshake to carry a name"`
	waitLog(t, out, want)
}

// serveHub runs the binary with args until the test ends; it returns the
// metrics address ("" without --metrics 127.0.0.1:0 in args) and the log.
func serveHub(t *testing.T, args []string) (string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, &out) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit %d:\n%s", code, out.String())
		}
	})
	if !slices.Contains(args, "--metrics") {
		return "", &out
	}
	re := regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m[1], &out
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics listener:\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrapeText returns /metrics of the listener at addr.
func scrapeText(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, body)
	}
	return string(body)
}

// metricValue finds the value of one series, written as in the
// exposition format (labels sorted by name); -1 if absent.
func metricValue(text, series string) float64 {
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// waitMetric scrapes until series has the value want, and returns the
// scrape.
func waitMetric(t *testing.T, addr, series string, want float64) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := scrapeText(t, addr)
		if metricValue(m, series) == want {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not %v:\n%s", series, want, m)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// getJobs returns /jobs of the listener at addr.
func getJobs(t *testing.T, addr string) jobsPage {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/jobs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p jobsPage
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/jobs: %v %v", err, resp.Header)
	}
	return p
}

// TestMetricsWhileAJobRuns runs the binary with --metrics against a hub
// (the test's own end of the wire) and checks /metrics and /jobs against a
// known sequence of jobs, one of them held running while they are read.
func TestMetricsWhileAJobRuns(t *testing.T) {
	release := make(chan struct{})
	up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/slow" {
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, "started ")
			http.NewResponseController(w).Flush()
			<-release
		}
		fmt.Fprintf(w, "got %d", len(body))
	}))
	hubAddr, conns := fakeHub(t, 101, "")
	addr, out := serveHub(t, []string{"--hub", hubAddr, "--pool", "p", "--upstream", up, "--metrics", "127.0.0.1:0"})
	c := next(t, conns)
	br := bufio.NewReader(c)
	send := func(req *http.Request) (*http.Response, string) {
		t.Helper()
		req.Write(c)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	for i := range 3 {
		req, _ := http.NewRequest("POST", "http://app.example/echo", strings.NewReader(strings.Repeat("x", 100*(i+1))))
		if resp, body := send(req); resp.StatusCode != 200 || body != fmt.Sprintf("got %d", 100*(i+1)) {
			t.Fatalf("job %d: %d %q", i, resp.StatusCode, body)
		}
	}
	waitLog(t, out, `level=INFO msg="connected to hub" hub=`+hubAddr)

	slow, _ := http.NewRequest("GET", "http://app.example/slow?token=secret", nil)
	slow.Header.Set("X-Request-Id", "req-slow")
	slow.Write(c)
	resp, err := http.ReadResponse(br, slow)
	if err != nil || resp.StatusCode != 202 {
		t.Fatalf("slow job: %v %v", resp, err)
	}
	// The head may reach the hub before the body's first bytes are
	// written.
	var p jobsPage
	deadline := time.Now().Add(5 * time.Second)
	for p = getJobs(t, addr); len(p.Jobs) == 1 && p.Jobs[0].BytesOut == 0 && time.Now().Before(deadline); p = getJobs(t, addr) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(p.Jobs) != 1 || p.Slots != 1 || p.Busy != 1 {
		t.Fatalf("/jobs while one runs: %+v", p)
	}
	j := p.Jobs[0]
	if j.RequestID != "req-slow" || j.Method != "GET" || j.Path != "/slow" || j.Hub != hubAddr || j.Status != 202 ||
		j.BytesIn != 0 || j.BytesOut != int64(len("started ")) || time.Since(j.StartedAt) > time.Minute || j.Seconds < 0 {
		t.Errorf("/jobs: %+v", j)
	}
	// A job is counted once its handler has returned, which may be just
	// after the hub has its whole response.
	m := waitMetric(t, addr, `reverse_http_worker_jobs_total{outcome="ok"}`, 3)
	for series, want := range map[string]float64{
		`reverse_http_worker_jobs_total{outcome="ok"}`:                                             3,
		`reverse_http_worker_jobs_total{outcome="failed"}`:                                         0,
		`reverse_http_worker_slots`:                                                                1,
		`reverse_http_worker_slots_busy`:                                                           1,
		`reverse_http_worker_healthy`:                                                              1,
		`reverse_http_worker_job_duration_seconds_count`:                                           3,
		`reverse_http_worker_job_body_bytes_total{direction="in"}`:                                 600,
		`reverse_http_worker_job_body_bytes_total{direction="out"}`:                                21,
		fmt.Sprintf(`reverse_http_worker_hub_connections{hub=%q}`, hubAddr):                        1,
		fmt.Sprintf(`reverse_http_worker_hub_connect_attempts_total{hub=%q,result="ok"}`, hubAddr): 1,
		fmt.Sprintf(`reverse_http_worker_hub_reconnects_total{hub=%q}`, hubAddr):                   0,
	} {
		if got := metricValue(m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, help := range []string{"# HELP reverse_http_worker_jobs_total ", "# HELP go_goroutines ", "# HELP go_build_info "} {
		if !strings.Contains(m, help) {
			t.Errorf("scrape lacks %q", help)
		}
	}

	close(release)
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "started got 0" {
		t.Errorf("slow job: %q", body)
	}
	waitMetric(t, addr, `reverse_http_worker_jobs_total{outcome="ok"}`, 4)
	// The slot is freed just after the job is counted.
	waitMetric(t, addr, "reverse_http_worker_slots_busy", 0)
	if p := getJobs(t, addr); len(p.Jobs) != 0 || p.Busy != 0 {
		t.Errorf("/jobs after the jobs: %+v", p)
	}
}

// httptestServer is an upstream on loopback until the test ends.
func httptestServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// blockingCollector holds every scrape until released.
type blockingCollector struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingCollector) Describe(chan<- *prometheus.Desc) {}

func (b *blockingCollector) Collect(chan<- prometheus.Metric) {
	b.entered <- struct{}{}
	<-b.release
}

// TestMetricsListenerLimits crosses each limit of the metrics listener: a
// head too large, a head too slow, and more scrapes at once than allowed.
func TestMetricsListenerLimits(t *testing.T) {
	defer func(d time.Duration) { metricsHeaderTimeout = d }(metricsHeaderTimeout)
	metricsHeaderTimeout = 300 * time.Millisecond
	w, err := worker.New(worker.Config{Hub: "127.0.0.1:1", Pool: "p", Handler: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	o := newObserver([]string{"127.0.0.1:1"})
	o.w = w
	ms, err := serveMetrics("127.0.0.1:0", o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer ms.stop()
	addr := ms.ln.Addr().String()
	get := func(path string, hdr http.Header) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		// A fresh connection each: on a kept-alive one net/http lets a
		// head pass the bound by what its reader had buffered.
		req.Close = true
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}

	// A head just within the bound passes; one beyond it gets 431.
	if resp, _ := get("/metrics", http.Header{"X-Big": {strings.Repeat("a", metricsMaxHeader)}}); resp.StatusCode != 200 {
		t.Errorf("head of %d bytes: %d", metricsMaxHeader, resp.StatusCode)
	}
	if resp, _ := get("/metrics", http.Header{"X-Big": {strings.Repeat("a", metricsMaxHeader+5<<10)}}); resp.StatusCode != 431 {
		t.Errorf("head of %d bytes: %d, want 431", metricsMaxHeader+5<<10, resp.StatusCode)
	}
	for path, want := range map[string]int{"/": 200, "/jobs": 200, "/nope": 404} {
		if resp, _ := get(path, nil); resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if resp, err := http.Post("http://"+addr+"/metrics", "text/plain", nil); err != nil || resp.StatusCode != 405 {
		t.Errorf("POST /metrics: %v %v", resp, err)
	}

	// A head that never ends: the listener hangs up.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("slow head: read %d, %v; want EOF once the header timeout passed", n, err)
	}

	// maxScrapes scrapes at once; one more gets 503.
	b := &blockingCollector{entered: make(chan struct{}), release: make(chan struct{})}
	o.reg.MustRegister(b)
	var wg sync.WaitGroup
	for range maxScrapes {
		wg.Go(func() {
			if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
		<-b.entered
	}
	// (The scrape timeout would answer 503 too, later and saying so.)
	if resp, body := get("/metrics", nil); resp.StatusCode != 503 || !strings.Contains(body, "Limit of concurrent requests reached") {
		t.Errorf("scrape beyond %d at once: %d %q, want 503 for the limit", maxScrapes, resp.StatusCode, body)
	}
	close(b.release)
	wg.Wait()
}

// TestMetricsListenerTimeouts crosses the listener's time bounds: a scrape
// that takes too long gets 503, a response that cannot be written in time
// is cut off, and an idle connection is closed.
func TestMetricsListenerTimeouts(t *testing.T) {
	defer func(s, w, i, h time.Duration) {
		scrapeTimeout, metricsWriteTimeout, metricsIdleTimeout, metricsHeaderTimeout = s, w, i, h
	}(scrapeTimeout, metricsWriteTimeout, metricsIdleTimeout, metricsHeaderTimeout)
	// The header timeout, which net/http also applies to idle connections
	// without an idle timeout, longer than the test waits.
	scrapeTimeout, metricsWriteTimeout, metricsIdleTimeout, metricsHeaderTimeout =
		200*time.Millisecond, 5*time.Second, 300*time.Millisecond, time.Minute
	w, err := worker.New(worker.Config{Hub: "127.0.0.1:1", Pool: "p", Handler: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	start := func() (*observer, string) {
		o := newObserver([]string{"127.0.0.1:1"})
		o.w = w
		ms, err := serveMetrics("127.0.0.1:0", o, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ms.stop)
		return o, ms.ln.Addr().String()
	}

	// An idle kept-alive connection is closed.
	_, addr := start()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /jobs: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: %v, want EOF once the idle timeout passed", err)
	}

	// A scrape whose collection takes too long: 503.
	o, addr := start()
	b := &blockingCollector{entered: make(chan struct{}, 1), release: make(chan struct{})}
	o.reg.MustRegister(b)
	resp, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "Exceeded configured timeout") {
		t.Errorf("slow scrape: %d %q, want 503 for the timeout", resp.StatusCode, body)
	}
	close(b.release)

	// A response not written within the write timeout is cut off.
	scrapeTimeout, metricsWriteTimeout = 5*time.Second, 200*time.Millisecond
	o, addr = start()
	b = &blockingCollector{entered: make(chan struct{}, 1), release: make(chan struct{})}
	o.reg.MustRegister(b)
	go func() {
		<-b.entered
		time.Sleep(500 * time.Millisecond) // past the write timeout
		close(b.release)
	}()
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("a response written past the write timeout arrived whole: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
}

// TestJobsFieldsBounded: /jobs cuts what the consumer chose (request id,
// method, path) to maxJobField bytes, in valid UTF-8.
func TestJobsFieldsBounded(t *testing.T) {
	w, err := worker.New(worker.Config{Hub: "127.0.0.1:1", Pool: "p", Handler: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	o := newObserver([]string{"127.0.0.1:1"})
	o.w = w
	long := strings.Repeat("é", maxJobField) // two bytes each
	o.JobStarted(&worker.Job{RequestID: long, Method: long, Path: "/" + long, Hub: "127.0.0.1:1", Started: time.Now()})
	o.JobStarted(&worker.Job{RequestID: "short", Method: "GET", Path: "/x", Hub: "127.0.0.1:1", Started: time.Now()})
	p := o.page()
	if len(p.Jobs) != 2 {
		t.Fatalf("jobs: %+v", p.Jobs)
	}
	j := p.Jobs[0]
	for _, f := range []string{j.RequestID, j.Method, j.Path} {
		if len(f) > maxJobField+len("…") || !utf8.ValidString(f) || !strings.HasSuffix(f, "…") {
			t.Errorf("field of %d bytes (valid UTF-8 %v): %.20q...", len(f), utf8.ValidString(f), f)
		}
	}
	if k := p.Jobs[1]; k.RequestID != "short" || k.Path != "/x" {
		t.Errorf("short fields changed: %+v", k)
	}
}

// TestReadmeJobsExample: the /jobs example in the README has the fields
// /jobs has.
func TestReadmeJobsExample(t *testing.T) {
	raw, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "\n```json\n{\n  \"slots\"")
	if !ok {
		t.Fatal("README has no /jobs example")
	}
	example, _, _ := strings.Cut("{\n  \"slots\""+rest, "\n```")
	dec := json.NewDecoder(strings.NewReader(example))
	dec.DisallowUnknownFields()
	var p jobsPage
	if err := dec.Decode(&p); err != nil || len(p.Jobs) == 0 {
		t.Fatalf("README's /jobs example: %v\n%s", err, example)
	}
	want, _ := json.MarshalIndent(p, "", "  ")
	if strings.TrimSpace(example) != string(want) {
		t.Errorf("README's /jobs example is not as /jobs writes it; that would be:\n%s", want)
	}
}
