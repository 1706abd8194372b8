//go:build unix

package worker

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ---- helpers ----------------------------------------------------------------

// jsonLogs keeps a worker's log records, decoded, and passes them to t.Log.
type jsonLogs struct {
	testLogWriter
	rmu     sync.Mutex
	records []map[string]any
}

func (l *jsonLogs) Write(p []byte) (int, error) {
	var rec map[string]any
	if err := json.Unmarshal(p, &rec); err == nil {
		l.rmu.Lock()
		l.records = append(l.records, rec)
		l.rmu.Unlock()
	}
	return l.testLogWriter.Write(p)
}

// find returns the first record with that message, or nil.
func (l *jsonLogs) find(msg string) map[string]any {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	for _, r := range l.records {
		if r["msg"] == msg {
			return r
		}
	}
	return nil
}

// wait waits for a record with that message.
func (l *jsonLogs) wait(t *testing.T, msg string) map[string]any {
	t.Helper()
	var rec map[string]any
	eventually(t, "log message "+strconv.Quote(msg), func() bool { rec = l.find(msg); return rec != nil })
	return rec
}

func jsonLogger(t *testing.T) (*slog.Logger, *jsonLogs) {
	l := &jsonLogs{testLogWriter: testLogWriter{t: t}}
	t.Cleanup(func() { l.mu.Lock(); l.done = true; l.mu.Unlock() })
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

// execHub starts a worker that runs cfg's command for its jobs, on a test
// hub that agreed on the accept feature, and returns the hub's side of
// its connection.
func execHub(t *testing.T, cfg ExecConfig) (*hubSide, *jsonLogs) {
	t.Helper()
	logger, logs := jsonLogger(t)
	cfg.Logger = logger
	e, err := NewExec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hub := newAcceptHub(t)
	startWorker(t, hub, Config{Handler: e, Logger: logger})
	return hub.next(t), logs
}

// sh is a command that runs script with /bin/sh.
func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

// post sends a job with body, waits for the worker's 100 Continue, sends
// the body and returns the response.
func (s *hubSide) post(t *testing.T, path, body string) (*http.Response, string) {
	t.Helper()
	fmt.Fprintf(s.c, "POST %s HTTP/1.1\r\nHost: job.example\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", path, len(body))
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100 Continue", resp.StatusCode)
	}
	io.WriteString(s.c, body)
	return s.read(t, nil)
}

// head reads a response head and leaves its body to the caller.
func (s *hubSide) head(t *testing.T) *http.Response {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(waitLimit))
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	return resp
}

// alive reports whether process pid exists and is not a zombie (in a
// container nobody may reap an orphan, and a zombie has finished).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil && runtime.GOOS != "linux"
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// ---- tests ------------------------------------------------------------------

// TestExecEcho: the body is the command's stdin, its stdout the response,
// after the worker accepted the job; the connection carries job after job.
func TestExecEcho(t *testing.T) {
	s, _ := execHub(t, ExecConfig{Command: []string{"cat"}})
	for i := range 2 {
		resp, body := s.post(t, "/echo", fmt.Sprintf("hello %d", i))
		if resp.StatusCode != 200 || body != fmt.Sprintf("hello %d", i) || resp.Close {
			t.Fatalf("round %d: got %d %q close=%v", i, resp.StatusCode, body, resp.Close)
		}
		if ct := resp.Header.Get("Content-Type"); ct != DefaultExecContentType {
			t.Errorf("Content-Type %q, want %q", ct, DefaultExecContentType)
		}
	}
	// A bodiless job: empty stdin, empty output.
	if resp, body := s.send(t, get("/")); resp.StatusCode != 200 || body != "" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestExecContentType: the configured type, and an empty answer.
func TestExecContentType(t *testing.T) {
	s, _ := execHub(t, ExecConfig{Command: []string{"true"}, ContentType: "audio/mpeg"})
	resp, body := s.send(t, get("/"))
	if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Type") != "audio/mpeg" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

// TestExecEnv checks the command's whole environment: the worker's PATH and
// the variables passed on by name, then the request's, and nothing else
// (no token); header names that could pass for others are dropped.
func TestExecEnv(t *testing.T) {
	t.Setenv("REVERSE_HTTP_TOKEN", "s3cret")
	t.Setenv("EXEC_TEST_PASSED", "yes")
	t.Setenv("EXEC_TEST_KEPT_BACK", "no")
	s, _ := execHub(t, ExecConfig{Command: []string{"env"}, InheritEnv: []string{"EXEC_TEST_PASSED", "EXEC_TEST_UNSET"}})
	body := "a=1"
	fmt.Fprintf(s.c, "POST /a%%20b/c?x=1&y=%%2F HTTP/1.1\r\nHost: app.example:8443\r\n"+
		"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"+
		"X-Forwarded-For: 203.0.113.9\r\nX-Request-Id: r-1\r\nAccept: text/plain\r\nAccept: audio/*\r\n"+
		"Cookie: a=1\r\nCookie: b=2\r\nProxy: http://evil.example\r\nX_Forwarded_For: forged\r\n"+
		"X.Id: dotted\r\nUser-Agent: test\r\n\r\n", len(body))
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	io.WriteString(s.c, body)
	resp, out := s.read(t, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("got %d %q", resp.StatusCode, out)
	}
	got := strings.Split(strings.TrimSpace(out), "\n")
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	want := []string{
		"PATH=" + path,
		"EXEC_TEST_PASSED=yes",
		"REQUEST_METHOD=POST",
		"REQUEST_URI=/a%20b/c?x=1&y=%2F",
		"PATH_INFO=/a b/c",
		"QUERY_STRING=x=1&y=%2F",
		"SERVER_PROTOCOL=HTTP/1.1",
		"HTTP_HOST=app.example:8443",
		"CONTENT_TYPE=application/x-www-form-urlencoded",
		"CONTENT_LENGTH=3",
		"HTTP_X_FORWARDED_FOR=203.0.113.9",
		"HTTP_X_REQUEST_ID=r-1",
		"HTTP_ACCEPT=text/plain, audio/*",
		"HTTP_COOKIE=a=1; b=2",
		"HTTP_USER_AGENT=test",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("environment\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestExecExitCodes: a command that fails before writing gets 502 (the
// status in the body, stderr in the log); one that succeeds silently 200.
func TestExecExitCodes(t *testing.T) {
	for _, tc := range []struct {
		script string
		status int
		exit   string
		stderr string
	}{
		{"exit 0", 200, "", ""},
		{"echo oops >&2; exit 3", 502, "exit status 3", "oops\n"},
		{"cat >/dev/null; echo 'no such input' >&2; exit 1", 502, "exit status 1", "no such input\n"},
		{"kill -9 $$", 502, "signal: killed", ""},
	} {
		t.Run(tc.script, func(t *testing.T) {
			s, logs := execHub(t, ExecConfig{Command: sh(tc.script)})
			resp, body := s.post(t, "/job", "input")
			if resp.StatusCode != tc.status {
				t.Fatalf("got %d %q, want %d", resp.StatusCode, body, tc.status)
			}
			if tc.status == 200 {
				return
			}
			if !strings.Contains(body, tc.exit) || strings.Contains(body, "oops") {
				t.Errorf("body %q: want the exit status and not stderr", body)
			}
			rec := logs.wait(t, "command failed")
			if rec["level"] != "WARN" || rec["exit"] != tc.exit || rec["uri"] != "/job" {
				t.Errorf("log record %v", rec)
			}
			if got, _ := rec["stderr"].(string); got != tc.stderr {
				t.Errorf("logged stderr %q, want %q", got, tc.stderr)
			}
		})
	}
}

// TestExecStderrTail: of a long stderr only the last 4 KiB are logged.
func TestExecStderrTail(t *testing.T) {
	s, logs := execHub(t, ExecConfig{Command: sh(`head -c 300000 /dev/zero | tr '\0' x >&2; echo END >&2; exit 1`)})
	if resp, body := s.send(t, get("/")); resp.StatusCode != 502 {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	tail, _ := logs.wait(t, "command failed")["stderr"].(string)
	want := "…" + strings.Repeat("x", stderrTail-4) + "END\n"
	if tail != want {
		t.Errorf("logged stderr of %d bytes, %q...%q; want the last %d bytes", len(tail), tail[:min(10, len(tail))], tail[max(0, len(tail)-10):], stderrTail)
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(8)
	io.WriteString(b, "abc")
	if got := b.String(); got != "abc" {
		t.Fatalf("%q", got)
	}
	for _, s := range []string{"defgh", "ijklmnop", "qrstuvwxyz0123456789", "A", "BC"} {
		io.WriteString(b, s)
	}
	if got := b.String(); got != "…56789ABC" {
		t.Fatalf("%q, want the last 8 bytes", got)
	}
	if len(b.buf) > 16 || cap(b.buf) > 32 {
		t.Fatalf("buffer holds %d bytes (cap %d)", len(b.buf), cap(b.buf))
	}
}

// TestExecFailsAfterOutput: a command that fails once it has written cuts
// the response off: the hub never sees a clean end of the body.
func TestExecFailsAfterOutput(t *testing.T) {
	for _, script := range []string{"echo partial; exit 1", "echo partial; kill -9 $$"} {
		t.Run(script, func(t *testing.T) {
			s, logs := execHub(t, ExecConfig{Command: sh(script)})
			get("/").Write(s.c)
			resp := s.head(t)
			if resp.StatusCode != 200 {
				t.Fatalf("got %d", resp.StatusCode)
			}
			body, err := io.ReadAll(resp.Body)
			if err == nil || string(body) != "partial\n" {
				t.Fatalf("body %q, err %v: want the output and then an error", body, err)
			}
			s.expectEOF(t, waitLimit)
			logs.wait(t, "command failed")
		})
	}
}

// TestExecStreaming: the response flows while the request still does. The
// command answers each line of its input; the hub sends the next line only
// after it has read the answer to the previous one, so every answer came
// before the command could end. With and without acceptance (net/http
// treats a body held back for 100-continue differently).
func TestExecStreaming(t *testing.T) {
	for _, expect := range []bool{true, false} {
		t.Run(fmt.Sprintf("expect=%v", expect), func(t *testing.T) {
			s, _ := execHub(t, ExecConfig{Command: sh(`while read l; do echo "got $l"; sleep 0.2; done; echo bye`)})
			if expect {
				fmt.Fprintf(s.c, "POST /stream HTTP/1.1\r\nHost: job.example\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
				if resp := s.head(t); resp.StatusCode != http.StatusContinue {
					t.Fatalf("got %d, want 100", resp.StatusCode)
				}
			} else {
				fmt.Fprintf(s.c, "POST /stream HTTP/1.1\r\nHost: job.example\r\nTransfer-Encoding: chunked\r\n\r\n")
			}
			var lines *bufio.Reader
			for i, l := range []string{"one", "two", "three"} {
				fmt.Fprintf(s.c, "%x\r\n%s\n\r\n", len(l)+1, l)
				if i == 0 {
					resp := s.head(t)
					if resp.StatusCode != 200 {
						t.Fatalf("got %d", resp.StatusCode)
					}
					lines = bufio.NewReader(resp.Body)
				}
				got, err := lines.ReadString('\n')
				if err != nil || got != "got "+l+"\n" {
					t.Fatalf("line %d: %q, %v", i, got, err)
				}
			}
			io.WriteString(s.c, "0\r\n\r\n")
			rest, err := io.ReadAll(lines)
			if err != nil || string(rest) != "bye\n" {
				t.Fatalf("rest %q, %v", rest, err)
			}
		})
	}
}

// TestExecLargeUpload streams 64 MiB to a command's stdin; the worker
// allocates a small fraction of that in all.
func TestExecLargeUpload(t *testing.T) {
	s, _ := execHub(t, ExecConfig{Command: []string{"sha256sum"}})
	const size = 64 << 20
	seed := rand.NewChaCha8([32]byte{64})
	digest := sha256.New()
	body := io.TeeReader(io.LimitReader(seed, size), digest)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fmt.Fprintf(s.c, "POST /sum HTTP/1.1\r\nHost: job.example\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", size)
	if resp := s.head(t); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	s.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyBuffer(s.c, body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	resp, out := s.read(t, nil)
	runtime.ReadMemStats(&after)
	want := hex.EncodeToString(digest.Sum(nil))
	if resp.StatusCode != 200 || !strings.HasPrefix(out, want+" ") {
		t.Fatalf("got %d %q, want the digest %s", resp.StatusCode, out, want)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("64 MiB upload: %.1f MiB allocated in all (worker and test hub), heap in use %.1f MiB after",
		float64(alloc)/(1<<20), float64(after.HeapInuse)/(1<<20))
	if alloc > 8<<20 {
		t.Errorf("allocated %d bytes for a 64 MiB upload: the body was buffered", alloc)
	}
}

// TestExecKillsGroupOnCancel: when the hub closes the connection (its
// consumer left), the command and the child it started are killed.
func TestExecKillsGroupOnCancel(t *testing.T) {
	s, logs := execHub(t, ExecConfig{Command: sh(`sleep 300 & echo "$$ $!"; wait`)})
	get("/").Write(s.c)
	resp := s.head(t)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var shell, child int
	if _, err := fmt.Sscan(line, &shell, &child); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	if !alive(shell) || !alive(child) {
		t.Fatalf("processes %d and %d should be running", shell, child)
	}
	s.c.Close()
	eventually(t, "the command and its child to die", func() bool { return !alive(shell) && !alive(child) })
	logs.wait(t, "job cancelled: killed its command's process group")
}

// TestExecKillsLeftovers: what a command leaves running when it exits is
// killed with the job.
func TestExecKillsLeftovers(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	s, _ := execHub(t, ExecConfig{Command: sh(`sleep 300 </dev/null >/dev/null 2>&1 & echo $! > ` + pidFile + `; echo done`)})
	if resp, body := s.send(t, get("/")); resp.StatusCode != 200 || body != "done\n" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	eventually(t, "the leftover child to die", func() bool { return !alive(pid) })
}

// TestExecTimeout: past the timeout the group is killed: 504 before any
// output, a cut response after it.
func TestExecTimeout(t *testing.T) {
	s, logs := execHub(t, ExecConfig{Command: sh(`if [ "$PATH_INFO" = /talk ]; then echo early; fi; exec sleep 300`), Timeout: time.Second})
	start := time.Now()
	resp, body := s.send(t, get("/quiet"))
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "timed out") {
		t.Fatalf("got %d %q, want 504", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("504 after %v", d)
	}
	logs.wait(t, "command timed out: killed its process group")

	get("/talk").Write(s.c)
	resp = s.head(t)
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "early\n" || err == nil {
		t.Fatalf("got %d %q, err %v: want the output cut off", resp.StatusCode, b, err)
	}
}

// TestExecBodyBroken: a request body that breaks off (bad chunking) kills
// the command rather than letting it take the part for the whole.
func TestExecBodyBroken(t *testing.T) {
	s, logs := execHub(t, ExecConfig{Command: sh(`cat >/dev/null; echo finished`)})
	fmt.Fprintf(s.c, "POST / HTTP/1.1\r\nHost: job.example\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
	if resp := s.head(t); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	io.WriteString(s.c, "5\r\nhello\r\nzz\r\n")
	s.expectEOF(t, waitLimit)
	rec := logs.wait(t, "job cancelled: killed its command's process group")
	if r, _ := rec["reason"].(string); !strings.Contains(r, "request body broke off") {
		t.Errorf("reason %q", r)
	}
}

// TestExecLimits: a request whose headers would not fit the environment
// gets 431, and the command does not run.
func TestExecLimits(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	s, _ := execHub(t, ExecConfig{Command: sh("touch " + marker), MaxHeaders: 4, MaxEnvBytes: 2048})
	for _, tc := range []struct {
		name   string
		header http.Header
		status int
	}{
		{"4 fields", http.Header{"A": {"1", "2"}, "B": {"3"}, "C": {"4"}}, 200},
		{"5 fields", http.Header{"A": {"1", "2"}, "B": {"3"}, "C": {"4"}, "D": {"5"}}, 431},
		{"big value", http.Header{"A": {strings.Repeat("v", 2048)}}, 431},
	} {
		req := get("/")
		req.Header = tc.header
		req.Header.Set("User-Agent", "") // so that Write adds none
		os.Remove(marker)
		resp, body := s.send(t, req)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: got %d %q, want %d", tc.name, resp.StatusCode, body, tc.status)
		}
		_, err := os.Stat(marker)
		if ran := err == nil; ran != (tc.status == 200) {
			t.Errorf("%s: command ran: %v", tc.name, ran)
		}
	}
}

// TestExecDefaultHeaderLimit: the default bound on header fields.
func TestExecDefaultHeaderLimit(t *testing.T) {
	s, _ := execHub(t, ExecConfig{Command: []string{"true"}})
	for n, status := range map[int]int{DefaultMaxHeaders: 200, DefaultMaxHeaders + 1: 431} {
		req := get("/")
		req.Header.Set("User-Agent", "")
		for i := range n {
			req.Header.Set(fmt.Sprintf("X-H%d", i), "v")
		}
		if resp, body := s.send(t, req); resp.StatusCode != status {
			t.Errorf("%d fields: got %d %q, want %d", n, resp.StatusCode, body, status)
		}
	}
}

// TestExecCannotStart: a command that has become impossible to run is
// declined (before any 100 Continue), and the worker leaves the hub until
// it can run again.
func TestExecCannotStart(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	logger, logs := jsonLogger(t)
	e, err := NewExec(ExecConfig{Command: []string{script}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	hub := newAcceptHub(t)
	rw := startWorker(t, hub, Config{Handler: e, Logger: logger})
	s := hub.next(t)
	if err := os.Chmod(script, 0o644); err != nil {
		t.Fatal(err)
	}
	postExpect(s, "/")
	resp, _ := s.read(t, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(DeclinedHeader) != "1" {
		t.Fatalf("got %d %v, want a decline", resp.StatusCode, resp.Header)
	}
	logs.wait(t, "command cannot be started: declining the job")
	if e.Health().Err() == nil {
		t.Fatal("health still up")
	}
	eventually(t, "the worker to leave the hub", func() bool { return rw.Connected() == 0 })
	os.Chmod(script, 0o755)
	s = hub.next(t)
	if resp, body := s.send(t, get("/")); resp.StatusCode != 200 || body != "ran\n" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestExecWrappedCannotStart: an Exec inside another Handler has its jobs
// accepted by the Worker before it runs, so it must not decline them.
func TestExecWrappedCannotStart(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	e, err := NewExec(ExecConfig{Command: []string{script}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(script, 0o644)
	hub := newAcceptHub(t)
	startWorker(t, hub, Config{Handler: http.StripPrefix("/x", e)})
	s := hub.next(t)
	postExpect(s, "/x/job")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want the Worker's 100", resp.StatusCode)
	}
	io.WriteString(s.c, "hello")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusBadGateway || resp.Header.Get(DeclinedHeader) != "" {
		t.Fatalf("got %d %v, want 502 and no decline", resp.StatusCode, resp.Header)
	}
}

func TestNewExecErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg ExecConfig
		msg string
	}{
		{ExecConfig{}, "no command"},
		{ExecConfig{Command: []string{""}}, "no command"},
		{ExecConfig{Command: []string{"no-such-command-here"}}, "executable file not found"},
		{ExecConfig{Command: []string{"/no/such/file"}}, "no such file"},
		{ExecConfig{Command: []string{"true"}, Timeout: -1}, "negative"},
		{ExecConfig{Command: []string{"true"}, MaxEnvBytes: -1}, "negative"},
		{ExecConfig{Command: []string{"true"}, InheritEnv: []string{"A=B"}}, "cannot pass on"},
	} {
		if _, err := NewExec(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %v, want an error with %q", tc.cfg, err, tc.msg)
		}
	}
}
