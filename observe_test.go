package reversehttp

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observedPool is a pool whose log lines the test reads.
func observedPool(t *testing.T) (*Pool, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	p := testPool(10)
	p.configure(p.getLimits(), zap.New(core).With(zap.String("pool", "test")))
	return p, logs
}

// lines returns the pool's log lines with this message.
func lines(logs *observer.ObservedLogs, msg string) []observer.LoggedEntry {
	return logs.FilterMessage(msg).AllUntimed()
}

func field(e observer.LoggedEntry, key string) any {
	return e.ContextMap()[key]
}

// TestWorkerConnectLogs checks the lines a worker connection's arrival and
// departure log, for each way it can leave: who, from where, how many
// connections its worker holds, why, and the pool only once.
func TestWorkerConnectLogs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leave  func(t *testing.T, p *Pool, w io.Writer, close func())
		reason string
		level  zapcore.Level
	}{
		{"hung up", func(t *testing.T, p *Pool, w io.Writer, close func()) { close() }, "hung_up", zapcore.InfoLevel},
		{"out of turn", func(t *testing.T, p *Pool, w io.Writer, close func()) { io.WriteString(w, "x") }, "out_of_turn", zapcore.InfoLevel},
		{"drained", func(t *testing.T, p *Pool, w io.Writer, close func()) { p.drainWorker("test") }, "drained", zapcore.InfoLevel},
		{"pool closed", func(t *testing.T, p *Pool, w io.Writer, close func()) { p.drain() }, "pool_closed", zapcore.InfoLevel},
		{"retired by a reload", func(t *testing.T, p *Pool, w io.Writer, close func()) {
			p.retireIf(func(c *workerConn) bool { c.leaving(errRetired); return true })
		}, "retired", zapcore.InfoLevel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, logs := observedPool(t)
			w := workerSide(t, p)
			joined := lines(logs, "worker connected")
			if len(joined) != 1 || joined[0].Level != zapcore.InfoLevel {
				t.Fatalf("connect lines: %+v", joined)
			}
			j := joined[0]
			if field(j, "worker") != "test" || field(j, "connections") != int64(1) ||
				!strings.HasPrefix(field(j, "remote").(string), "127.0.0.1:") {
				t.Errorf("connect line: %v", j.ContextMap())
			}
			tc.leave(t, p, w, func() { w.Close() })
			waitFor(t, "the disconnect line", func() bool { return len(lines(logs, "worker disconnected")) == 1 })
			left := lines(logs, "worker disconnected")[0]
			if left.Level != tc.level || field(left, "reason") != tc.reason || field(left, "connections") != int64(0) ||
				field(left, "worker") != "test" || field(left, "remote") != field(j, "remote") {
				t.Errorf("disconnect line: %s %v", left.Level, left.ContextMap())
			}
			for _, e := range append(joined, left) {
				n := 0
				for _, f := range e.Context {
					if f.Key == "pool" {
						n++
					}
				}
				if n != 1 {
					t.Errorf("%q has %d pool fields", e.Message, n)
				}
			}
			if got := p.obs.leaves[leaveReasonByName(t, tc.reason)].Load(); got != 1 {
				t.Errorf("disconnects counted under %s: %d", tc.reason, got)
			}
		})
	}
}

func leaveReasonByName(t *testing.T, name string) leaveReason {
	for i, n := range leaveNames {
		if n == name {
			return leaveReason(i)
		}
	}
	t.Fatalf("no leave reason %q", name)
	return 0
}

// TestRoutineRedialLogsAtDebug: a worker that closes its connection after
// each job, as POTHEAD's do, and dials again at once, logs its comings and
// goings at debug level, not two info lines per job.
func TestRoutineRedialLogsAtDebug(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "hub.log")
	h := newHub(t, strings.Replace(potheadConfig, "{\n\treverse_http", "{\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n\treverse_http", 1))
	potheadWorker(t, h, 1, werkzeugOK)
	for range 3 {
		if resp, _ := h.get("/x"); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	p := livePool(t, "jobs")
	waitFor(t, "three routine closes", func() bool { return p.obs.leaves[leaveClosedAfterJob].Load() == 3 })
	waitFor(t, "the fourth connection", func() bool { return p.Stats().Idle == 1 })
	counts := map[string]int{}
	for _, e := range jsonLines(t, logFile) {
		if msg, _ := e["msg"].(string); strings.HasPrefix(msg, "worker ") && strings.HasSuffix(msg, "connected") {
			counts[e["level"].(string)+" "+msg]++
		}
	}
	want := map[string]int{"info worker connected": 1, "debug worker disconnected": 3, "debug worker connected": 3}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("%q lines: %d, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
	if n := p.obs.leaves[leaveOther].Load(); n != 0 {
		t.Errorf("%d connections left for no known reason", n)
	}
}

// TestRoutineCloseThenGone: a worker whose last connection closed after
// its job and that does not dial again is news after redialQuiet.
func TestRoutineCloseThenGone(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "hub.log")
	h := newHub(t, strings.Replace(potheadConfig, "{\n\treverse_http", "{\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t}\n\treverse_http", 1))
	conn, err := net.Dial("tcp", h.worker)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p := livePool(t, "jobs")
	waitFor(t, "the connection idle", func() bool { return p.Stats().Idle == 1 })
	answered := send(h, context.Background(), "/x")
	if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
		t.Fatal(err)
	}
	// Timed from before the response: the hub may read it, and start its
	// wait, before this goroutine gets back from Close.
	closed := time.Now()
	io.WriteString(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
	conn.Close()
	wantStatus(t, "the job", answered, http.StatusOK)
	var gone map[string]any
	waitFor(t, "the worker gone", func() bool {
		for _, e := range jsonLines(t, logFile) {
			if e["msg"] == "worker disconnected" {
				gone = e
			}
		}
		return gone != nil
	})
	if gone["level"] != "info" || gone["reason"] != "closed_after_job" || gone["connections"] != 0.0 {
		t.Errorf("the line: %v", gone)
	}
	if waited := time.Since(closed); waited < redialQuiet {
		t.Errorf("announced %v after the close, before the worker had %v to dial again", waited, redialQuiet)
	}
}

// TestEvents subscribes a handler to the pool's events through Caddy's
// events app: a connection's arrival and departure, and a full queue, one
// event per interval however many requests it refuses.
func TestEvents(t *testing.T) {
	recorded.reset()
	h := newHub(t, `{
	events {
		on reverse_http_worker_connected reverse_http_test_recorder
		on reverse_http_worker_disconnected reverse_http_test_recorder
		on reverse_http_queue_full reverse_http_test_recorder
	}
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			max_queue 1
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`)
	b := newBlockingHandler()
	stop := startWorker(t, h, "jobs", "secret", 1, b)
	waitFor(t, "the connected event", func() bool { return len(recorded.named("reverse_http_worker_connected")) == 1 })
	e := recorded.named("reverse_http_worker_connected")[0]
	if e["pool"] != "jobs" || e["worker"] != "test-worker" || e["connections"] != 1 || !strings.HasPrefix(e["remote"].(string), "127.0.0.1:") {
		t.Errorf("connected event: %v", e)
	}

	p := livePool(t, "jobs")
	running := send(h, context.Background(), "/1/block")
	<-b.started
	waiting := send(h, context.Background(), "/2/block")
	waitFor(t, "a request waiting", func() bool { return p.Stats().Waiting == 1 })
	wantStatus(t, "the first refused", send(h, context.Background(), "/3"), http.StatusServiceUnavailable)
	waitFor(t, "the queue_full event", func() bool { return len(recorded.named("reverse_http_queue_full")) == 1 })
	if e := recorded.named("reverse_http_queue_full")[0]; e["pool"] != "jobs" || e["max_queue"] != 1 || e["refused"] != int64(1) {
		t.Errorf("queue_full event: %v", e)
	}
	wantStatus(t, "the second refused", send(h, context.Background(), "/4"), http.StatusServiceUnavailable)
	waitFor(t, "the second refusal counted", func() bool { return p.obs.fullRefused.Load() == 1 })

	b.release <- struct{}{}
	b.release <- struct{}{}
	wantStatus(t, "running", running, http.StatusOK)
	wantStatus(t, "waiting", waiting, http.StatusOK)
	stop()
	waitFor(t, "the disconnected event", func() bool { return len(recorded.named("reverse_http_worker_disconnected")) == 1 })
	if e := recorded.named("reverse_http_worker_disconnected")[0]; e["pool"] != "jobs" || e["worker"] != "test-worker" ||
		e["connections"] != 0 || e["reason"] != "hung_up" {
		t.Errorf("disconnected event: %v", e)
	}
	if n := len(recorded.named("reverse_http_queue_full")); n != 1 {
		t.Errorf("%d queue_full events within one interval, want 1", n)
	}
}

// recorded holds the events the test handler saw.
var recorded eventLog

type eventLog struct {
	mu     sync.Mutex
	events []caddy.Event
}

func (l *eventLog) reset() {
	l.mu.Lock()
	l.events = nil
	l.mu.Unlock()
}

func (l *eventLog) named(name string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, e := range l.events {
		if e.Name() == name {
			out = append(out, e.Data)
		}
	}
	return out
}

func init() { caddy.RegisterModule(eventRecorder{}) }

// eventRecorder is an events handler that records what it is given.
type eventRecorder struct{}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.reverse_http_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recorded.mu.Lock()
	recorded.events = append(recorded.events, e)
	recorded.mu.Unlock()
	return nil
}

func (*eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

// TestPlaceholdersAndLogFields reads the placeholders in a deferred header
// in log_append and in handle_errors, and the access log's reverse_http
// fields; a 502 and a 504 each log one line naming the pool, the worker and
// the cause.
func TestPlaceholdersAndLogFields(t *testing.T) {
	dir := t.TempDir()
	access, errs := filepath.Join(dir, "access.log"), filepath.Join(dir, "hub.log")
	h := newHub(t, `{
	log {
		output file `+errs+`
		format json
		level INFO
	}
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			response_timeout 300ms
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	log {
		output file `+access+`
		format json
	}
	header {
		defer
		X-Pool {http.reverse_http.pool}
		X-Worker {http.reverse_http.worker}
		X-Attempts {http.reverse_http.attempts}
		X-Queue-Wait {http.reverse_http.queue_wait}
	}
	log_append rh_worker {http.reverse_http.worker}
	log_append rh_attempts {http.reverse_http.attempts}
	reverse_http jobs
	handle_errors {
		respond "{http.reverse_http.pool} {http.reverse_http.worker} {http.reverse_http.attempts}" {err.status_code}
	}
}`)
	b := newBlockingHandler()
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bad":
			w.WriteHeader(http.StatusBadGateway)
		default:
			b.ServeHTTP(w, r)
		}
	}))
	p := livePool(t, "jobs")

	resp, _ := h.get("/ok")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, want := range map[string]string{"X-Pool": "jobs", "X-Worker": "test-worker", "X-Attempts": "1"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if d, err := time.ParseDuration(resp.Header.Get("X-Queue-Wait")); err != nil || d <= 0 || d > 10*time.Second {
		t.Errorf("X-Queue-Wait %q", resp.Header.Get("X-Queue-Wait"))
	}

	if resp, _ := h.get("/bad"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("worker's 502: %d", resp.StatusCode)
	}
	if resp, body := h.get("/fail"); resp.StatusCode != http.StatusBadGateway || body != "jobs test-worker 1" {
		t.Fatalf("failed job, as handle_errors answers it: %d %q", resp.StatusCode, body)
	}
	waitFor(t, "the worker back", func() bool { return p.Stats().Idle == 1 })
	if resp, _ := h.get("/slow/block"); resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("response timeout: %d", resp.StatusCode)
	}

	var entries []map[string]any
	waitFor(t, "four access log entries", func() bool { entries = jsonLines(t, access); return len(entries) == 4 })
	for i, e := range entries {
		rh, _ := e["reverse_http"].(map[string]any)
		if rh["pool"] != "jobs" || rh["worker"] != "test-worker" || rh["attempts"] != 1.0 || e["rh_worker"] != "test-worker" || e["rh_attempts"] != 1.0 {
			t.Errorf("access log entry %d: %v", i, e)
		}
		if wait, ok := rh["queue_wait"].(float64); !ok || wait < 0 || wait > 10 {
			t.Errorf("access log entry %d: queue_wait %v", i, rh["queue_wait"])
		}
		want := []string{"ok", "ok", "worker_failed", "response_timeout"}[i]
		if rh["outcome"] != want {
			t.Errorf("access log entry %d: outcome %v, want %s", i, rh["outcome"], want)
		}
	}

	var failed []map[string]any
	waitFor(t, "three job failed lines", func() bool {
		failed = nil
		for _, e := range jsonLines(t, errs) {
			if e["msg"] == "job failed" {
				failed = append(failed, e)
			}
		}
		return len(failed) == 3
	})
	for i, want := range []struct {
		status float64
		cause  string
	}{
		{502, "the worker answered Bad Gateway"},
		{502, "worker connection closed before a response"},
		{504, "worker did not answer within the response timeout"},
	} {
		e := failed[i]
		if e["pool"] != "jobs" || e["worker"] != "test-worker" || !strings.HasPrefix(e["remote"].(string), "127.0.0.1:") ||
			e["status"] != want.status || !strings.Contains(e["cause"].(string), want.cause) || e["level"] != "error" || e["request_id"] == "" {
			t.Errorf("job failed line %d: %v", i, e)
		}
	}
}

// jsonLines reads a file of JSON log lines; a missing file has none.
func jsonLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return out // a line still being written
		}
		out = append(out, m)
	}
	return out
}
