package reversehttp

// End-to-end tests: the hub is Caddy in this process (see harness_test.go),
// while the worker binary and the sample app run as real processes talking
// over loopback sockets.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// e2eBins holds the binaries built once per run of the test binary.
var e2eBins struct {
	once          sync.Once
	worker, app   string
	err           error
	buildDuration time.Duration
}

// e2eBinaries builds the worker binary and the sample app once and returns
// their paths.
func e2eBinaries(t *testing.T) (workerBin, appBin string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test builds and runs binaries; skipped with -short")
	}
	e2eBins.once.Do(func() {
		start := time.Now()
		defer func() { e2eBins.buildDuration = time.Since(start) }()
		// TestMain removes the parent of XDG_CONFIG_HOME when the run ends,
		// so binaries built below it are cleaned up with it.
		parent := ""
		if cfg := os.Getenv("XDG_CONFIG_HOME"); cfg != "" {
			parent = filepath.Dir(cfg)
		}
		dir, err := os.MkdirTemp(parent, "e2e-bin-")
		if err != nil {
			e2eBins.err = err
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			e2eBins.err = fmt.Errorf("finding the go command: %w", err)
			return
		}
		build := func(out, pkg string) (string, error) {
			path := filepath.Join(dir, out)
			cmd := exec.Command(goTool, "build", "-o", path, pkg)
			if output, err := cmd.CombinedOutput(); err != nil {
				return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, output)
			}
			return path, nil
		}
		if e2eBins.worker, e2eBins.err = build("reverse-http-worker", "./worker/cmd/reverse-http-worker"); e2eBins.err != nil {
			return
		}
		e2eBins.app, e2eBins.err = build("sample-app", "./cmd/sample-app")
	})
	if e2eBins.err != nil {
		t.Fatalf("building binaries: %v", e2eBins.err)
	}
	return e2eBins.worker, e2eBins.app
}

// lockedBuffer collects a process's output; it is written by the goroutine
// exec starts and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a child process started by a test.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed once the process has exited and Wait returned
}

// startProc starts bin with args and extra environment variables. The
// process is killed when the test ends, and its output is logged if the
// test failed.
func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: new(lockedBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Errorf("%s did not exit after SIGKILL", name)
			}
		}
		if t.Failed() {
			t.Logf("output of %s (%s):\n%s", name, strings.Join(p.cmd.Args, " "), p.out.String())
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("sending %v to %s: %v", sig, p.name, err)
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code; -1 means it was ended by a signal.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v", p.name, timeout)
		return 0
	}
}

// sampleApp is a running sample app.
type sampleApp struct {
	*proc
	url string // http://127.0.0.1:PORT
}

// startSampleApp runs the sample app on a free port and waits until it
// answers.
func startSampleApp(t *testing.T) *sampleApp {
	t.Helper()
	_, appBin := e2eBinaries(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := &sampleApp{proc: startProc(t, "sample-app", appBin, nil, "--listen", addr), url: "http://" + addr}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := testClient.Get(a.url + "/hello")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a
			}
		}
		if a.exited() {
			t.Fatalf("sample app exited before answering (last error %v)", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("sample app not answering on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stats returns the sample app's /stats.
func (a *sampleApp) stats(t *testing.T) (running, peak, total int64) {
	t.Helper()
	resp, err := testClient.Get(a.url + "/stats")
	if err != nil {
		t.Fatalf("sample app /stats: %v", err)
	}
	defer resp.Body.Close()
	var st struct{ Running, Peak, Total int64 }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("sample app /stats: %v", err)
	}
	return st.Running, st.Peak, st.Total
}

func (a *sampleApp) running(t *testing.T) int64 {
	t.Helper()
	n, _, _ := a.stats(t)
	return n
}

// startWorkerProc runs the worker binary against the hub's "jobs" pool and
// upstream. It waits until the pool holds wantConns connections in all
// (this worker's and those already there).
func startWorkerProc(t *testing.T, h *hub, name, upstream string, slots, wantConns int, env []string, args ...string) *proc {
	t.Helper()
	workerBin, _ := e2eBinaries(t)
	args = append([]string{
		"--hub", h.worker, "--pool", "jobs", "--upstream", upstream,
		"--slots", fmt.Sprint(slots), "--name", name, "--log-level", "debug",
	}, args...)
	w := startProc(t, name, workerBin, env, args...)
	waitPoolConns(t, w, wantConns, 10*time.Second)
	return w
}

// waitPoolConns polls until the "jobs" pool holds want connections, idle or
// busy, failing if w exits first or the timeout passes.
func waitPoolConns(t *testing.T, w *proc, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := livePool(t, "jobs").Stats()
		if s.Idle+s.Busy == want {
			return
		}
		if w.exited() {
			t.Fatalf("%s exited with %v; pool %+v", w.name, w.cmd.ProcessState, s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool holds %+v after %v, want %d connections", s, timeout, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// e2eResult is how a request sent in the background ended.
type e2eResult struct {
	status int
	body   string
	err    error
}

func (r e2eResult) String() string {
	if r.err != nil {
		return "error: " + r.err.Error()
	}
	return fmt.Sprintf("%d %q", r.status, r.body)
}

// goDo sends req in the background.
func goDo(req *http.Request) <-chan e2eResult {
	ch := make(chan e2eResult, 1)
	go func() {
		resp, err := testClient.Do(req)
		if err != nil {
			ch <- e2eResult{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		ch <- e2eResult{status: resp.StatusCode, body: string(body), err: err}
	}()
	return ch
}

func goGet(t *testing.T, url string) <-chan e2eResult {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return goDo(req)
}

func receive(t *testing.T, what string, ch <-chan e2eResult, timeout time.Duration) e2eResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(timeout):
		t.Fatalf("%s: no answer within %v", what, timeout)
		return e2eResult{}
	}
}

// TestE2ELargeUpload sends 20 MB through hub, worker binary and sample app
// and checks that every byte arrived.
func TestE2ELargeUpload(t *testing.T) {
	app := startSampleApp(t)
	h := newHub(t, basicConfig)
	startWorkerProc(t, h, "w-upload", app.url, 2, 2, nil, "--token", "secret")

	data := make([]byte, 20<<20)
	rand.New(rand.NewSource(20)).Read(data)
	want := sha256.Sum256(data)

	start := time.Now()
	resp, body := h.do(mustRequest(t, http.MethodPost, h.site+"/sha256", bytes.NewReader(data)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got struct {
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	if got.Bytes != int64(len(data)) || got.SHA256 != hex.EncodeToString(want[:]) {
		t.Fatalf("sample app got %d bytes with SHA-256 %s; sent %d bytes with %x", got.Bytes, got.SHA256, len(data), want)
	}
	t.Logf("20 MB upload took %v", time.Since(start))
}

func mustRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestE2EWorkerKilledMidJob SIGKILLs a worker process while it runs jobs:
// the job that cannot be replayed gets 502, and requests sent meanwhile are
// all served by the surviving worker.
func TestE2EWorkerKilledMidJob(t *testing.T) {
	app := startSampleApp(t)
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	a := startWorkerProc(t, h, "w-a", app.url, 2, 2, []string{"REVERSE_HTTP_TOKEN=secret"})

	// A non-idempotent job whose body has reached worker A: an upload that
	// goes on until it is answered. The hub must not replay it elsewhere.
	pr, pw := io.Pipe()
	defer pr.CloseWithError(errors.New("test over"))
	upload := goDo(mustRequest(t, http.MethodPost, h.site+"/sha256", pr))
	// A long GET that A runs too.
	sleep := goGet(t, h.site+"/sleep?ms=60000") // ends only when worker A is killed
	waitFor(t, "worker A running both long jobs", func() bool {
		s := p.Stats()
		return s.Busy == 2 && s.Idle == 0 && app.running(t) == 2
	})
	// The upload's body is held back until worker A asks for it (100
	// Continue). 16 MB is more than the socket buffers between consumer
	// and hub hold, so once it is written the hub has sent body bytes on.
	// Then the upload trickles on, as a real one would.
	primed := make(chan error, 2)
	go func() {
		chunk := make([]byte, 64<<10)
		for n := 0; ; n += len(chunk) {
			if n == 16<<20 {
				primed <- nil
			}
			if n >= 16<<20 {
				time.Sleep(2 * time.Millisecond)
			}
			if _, err := pw.Write(chunk); err != nil {
				primed <- err
				return
			}
		}
	}()
	select {
	case err := <-primed:
		if err != nil {
			t.Fatalf("uploading: %v", err)
		}
	case r := <-upload:
		t.Fatalf("upload ended early: %v", r)
	case <-time.After(20 * time.Second):
		t.Fatal("upload body not consumed")
	}

	startWorkerProc(t, h, "w-b", app.url, 2, 4, nil, "--token", "secret")
	if s := p.Stats(); s.Idle != 2 || s.Busy != 2 {
		t.Fatalf("pool %+v; want A's 2 busy and B's 2 idle", s)
	}

	const shorts = 10
	var short []<-chan e2eResult
	for range shorts {
		short = append(short, goGet(t, h.site+"/sleep?ms=50"))
	}
	a.signal(t, syscall.SIGKILL)
	killed := time.Now()

	if r := receive(t, "upload on the killed worker", upload, 15*time.Second); r.err == nil && r.status != http.StatusBadGateway {
		t.Errorf("upload on the killed worker: got %v, want 502 (or a failed body)", r)
	} else {
		t.Logf("upload on the killed worker: %v after %v", r, time.Since(killed).Round(time.Millisecond))
	}
	for i, ch := range short {
		if r := receive(t, "short request", ch, 15*time.Second); r.err != nil || r.status != http.StatusOK || r.body != "slept 50 ms\n" {
			t.Errorf("short request %d: got %v, want 200 \"slept 50 ms\"", i, r)
		}
	}
	// The GET got no response byte from A, but A was running it: the hub
	// must not run it again on B.
	if r := receive(t, "sleep on the killed worker", sleep, 15*time.Second); r.err == nil && r.status != http.StatusBadGateway {
		t.Errorf("GET /sleep?ms=3000 on the killed worker: got %v, want 502", r)
	}
	if code := a.wait(t, 5*time.Second); code != -1 {
		t.Errorf("worker A exit code %d after SIGKILL", code)
	}
	waitFor(t, "the pool to hold only B's connections", func() bool {
		s := p.Stats()
		return s.Idle == 2 && s.Busy == 0 && s.Waiting == 0
	})
}

// TestE2EHubRestart stops Caddy under a connected worker binary and loads
// the config again: the worker redials with backoff and serves again.
func TestE2EHubRestart(t *testing.T) {
	app := startSampleApp(t)
	h := newHub(t, basicConfig)
	w := startWorkerProc(t, h, "w-restart", app.url, 2, 2, nil, "--token", "secret")
	if resp, body := h.get("/hello"); resp.StatusCode != http.StatusOK || body != "hello from the sample app\n" {
		t.Fatalf("before the restart: %d %q", resp.StatusCode, body)
	}

	if err := caddy.Stop(); err != nil {
		t.Fatalf("stopping caddy: %v", err)
	}
	// Let the worker fail to dial a few times, so that it is backing off.
	waitFor(t, "the worker to retry dialling the stopped hub", func() bool {
		return strings.Count(w.out.String(), "cannot connect to hub") >= 4
	})
	if w.exited() {
		t.Fatalf("worker exited while the hub was down: %v", w.cmd.ProcessState)
	}
	stopped := time.Now()
	h.load(basicConfig)
	waitPoolConns(t, w, 2, 20*time.Second)
	t.Logf("worker back in the pool %v after the reload", time.Since(stopped).Round(time.Millisecond))
	// The worker said once that it was back, after how many attempts.
	back := regexp.MustCompile(`level=INFO msg="reconnected to hub" hub=` + regexp.QuoteMeta(h.worker) + ` address=\S+ pool=jobs attempts=\d+ down_for=\S+\n`)
	waitFor(t, "the reconnected line", func() bool { return back.MatchString(w.out.String()) })
	if n := strings.Count(w.out.String(), `msg="reconnected to hub"`); n != 1 {
		t.Errorf("%d reconnected lines, want 1:\n%s", n, w.out.String())
	}
	if resp, body := h.get("/hello"); resp.StatusCode != http.StatusOK || body != "hello from the sample app\n" {
		t.Fatalf("after the restart: %d %q", resp.StatusCode, body)
	}
}

// drainConfig is basicConfig with a short route queue timeout, so that a
// request no worker takes gets its 503 quickly.
var drainConfig = strings.Replace(basicConfig, "\treverse_http jobs\n", "\treverse_http jobs {\n\t\tqueue_timeout 1s\n\t}\n", 1)

// TestE2EDrainOnSIGTERM checks that a worker binary given SIGTERM gives its
// idle connection back at once, finishes its running job, takes no new
// one, and exits 0.
func TestE2EDrainOnSIGTERM(t *testing.T) {
	app := startSampleApp(t)
	h := newHub(t, drainConfig)
	p := livePool(t, "jobs")
	w := startWorkerProc(t, h, "w-drain", app.url, 2, 2, []string{"REVERSE_HTTP_TOKEN=secret"}, "--drain-timeout", "10s")

	job := goGet(t, h.site+"/sleep?ms=1500")
	waitFor(t, "the job to run", func() bool { return app.running(t) == 1 })
	w.signal(t, syscall.SIGTERM)
	termed := time.Now()

	deadline := termed.Add(2 * time.Second)
	for {
		s := p.Stats()
		if s.Idle == 0 && s.Busy == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %+v 2s after SIGTERM; want the idle connection closed and the job still busy", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case r := <-job:
		t.Fatalf("job ended before the idle connection left the pool: %v", r)
	default:
	}
	if n := app.running(t); n != 1 {
		t.Fatalf("sample app runs %d jobs after SIGTERM, want the 1 running job", n)
	}
	t.Logf("idle connection left the pool %v after SIGTERM", time.Since(termed).Round(time.Millisecond))

	// A request sent now waits for a worker; the draining one takes none.
	start := time.Now()
	resp, body := h.get("/hello")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("request after SIGTERM: got %d %q, want 503 after the queue timeout", resp.StatusCode, body)
	} else if waited := time.Since(start); waited < time.Second {
		t.Errorf("request after SIGTERM: 503 after %v, before the 1s queue timeout", waited)
	}

	if r := receive(t, "running job", job, 10*time.Second); r.err != nil || r.status != http.StatusOK || r.body != "slept 1500 ms\n" {
		t.Errorf("running job: got %v, want 200 \"slept 1500 ms\"", r)
	}
	if code := w.wait(t, 10*time.Second); code != 0 {
		t.Errorf("worker exit code %d after SIGTERM, want 0", code)
	}
	if _, _, total := app.stats(t); total != 2 {
		t.Errorf("sample app served %d requests, want 2 (the readiness check and the job)", total)
	}
	waitFor(t, "an empty pool", func() bool { s := p.Stats(); return s.Idle+s.Busy+s.Waiting == 0 })
}

// TestE2EStartupRejection checks that the worker binary exits 1 at once when
// the hub rejects its first handshake.
func TestE2EStartupRejection(t *testing.T) {
	app := startSampleApp(t)
	h := newHub(t, basicConfig)
	workerBin, _ := e2eBinaries(t)
	w := startProc(t, "w-rejected", workerBin, []string{"REVERSE_HTTP_TOKEN=secret"},
		"--hub", h.worker, "--pool", "jobs", "--upstream", app.url, "--token", "wrong")
	start := time.Now()
	if code := w.wait(t, 10*time.Second); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to give up", d)
	}
	out := w.out.String()
	if !strings.Contains(out, "403") && !strings.Contains(out, "rejected") {
		t.Errorf("output does not mention the rejection:\n%s", out)
	}
	if s := livePool(t, "jobs").Stats(); s.Idle+s.Busy != 0 {
		t.Errorf("rejected worker entered the pool: %+v", s)
	}
}
