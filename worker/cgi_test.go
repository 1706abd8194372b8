//go:build unix

package worker

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cgiScript writes an executable script and returns its path.
func cgiScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "job.cgi")
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// cgiHub starts a worker that runs cfg's script for its jobs, on a test
// hub that agreed on the accept feature.
func cgiHub(t *testing.T, cfg CGIConfig) (*hubSide, *jsonLogs, *runningWorker) {
	t.Helper()
	logger, logs := jsonLogger(t)
	cfg.Logger = logger
	c, err := NewCGI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hub := newAcceptHub(t)
	rw := startWorker(t, hub, Config{Handler: c, Logger: logger})
	return hub.next(t), logs, rw
}

// TestCGIStatusAndHeaders: the script's status and headers are the
// response's; it gets the body on stdin and the request in its
// environment, without the worker's token or unsafe header names.
func TestCGIStatusAndHeaders(t *testing.T) {
	t.Setenv("REVERSE_HTTP_TOKEN", "s3cret")
	s, _, _ := cgiHub(t, CGIConfig{Script: cgiScript(t, `#!/bin/sh
printf 'Status: 201 Created\r\nContent-Type: text/plain\r\nX-Script: yes\r\n\r\n'
echo "method=$REQUEST_METHOD path=$PATH_INFO query=$QUERY_STRING length=$CONTENT_LENGTH"
echo "x_test=$HTTP_X_TEST proxy=${HTTP_PROXY-unset} forged=${HTTP_X_FORWARDED_FOR-unset} token=${REVERSE_HTTP_TOKEN-unset}"
echo "body=$(head -c "$CONTENT_LENGTH")"
`)})
	body := "hello"
	fmt.Fprintf(s.c, "POST /a/b?c=d HTTP/1.1\r\nHost: job.example\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"+
		"X-Test: 1\r\nProxy: http://evil.example\r\nX_Forwarded_For: forged\r\n\r\n", len(body))
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	io.WriteString(s.c, body)
	resp, out := s.read(t, nil)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Script") != "yes" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	want := "method=POST path=/a/b query=c=d length=5\n" +
		"x_test=1 proxy=unset forged=unset token=unset\n" +
		"body=hello\n"
	if out != want {
		t.Errorf("body\n%s\nwant\n%s", out, want)
	}
}

// TestCGIAcceptsBeforeRunning: the worker accepts a job before the script
// runs, not when net/http/cgi first reads the body (it does not for a
// bodiless job), so that no job the script may have run looks unstarted
// to the hub.
func TestCGIAcceptsBeforeRunning(t *testing.T) {
	s, _, _ := cgiHub(t, CGIConfig{Script: cgiScript(t, "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran'\n")})
	fmt.Fprintf(s.c, "GET / HTTP/1.1\r\nHost: job.example\r\nExpect: 100-continue\r\n\r\n")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100 first", resp.StatusCode)
	}
	if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "ran" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestCGIStreaming: the script's output reaches the hub as it writes it:
// the script waits for a file that the test creates only once it has the
// first line.
func TestCGIStreaming(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "go-on")
	t.Setenv("CGI_TEST_FLAG", flag)
	s, _, _ := cgiHub(t, CGIConfig{InheritEnv: []string{"CGI_TEST_FLAG"}, Script: cgiScript(t, `#!/bin/sh
printf 'Content-Type: text/plain\n\n'
echo one
while [ ! -e "$CGI_TEST_FLAG" ]; do sleep 0.02; done
echo two
`)})
	get("/").Write(s.c)
	resp := s.head(t)
	lines := bufio.NewReader(resp.Body)
	if l, err := lines.ReadString('\n'); l != "one\n" || err != nil {
		t.Fatalf("first line %q, %v", l, err)
	}
	os.WriteFile(flag, nil, 0o644)
	if rest, err := io.ReadAll(lines); string(rest) != "two\n" || err != nil {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// ticker is a CGI script that sends its pid and then a line every 50 ms.
const ticker = `#!/bin/sh
printf 'Content-Type: text/plain\n\n'
echo $$
while :; do sleep 0.05; echo tick; done
`

// readPid reads the head of the ticker's response and its pid.
func readPid(t *testing.T, s *hubSide) (*http.Response, int) {
	t.Helper()
	get("/").Write(s.c)
	resp := s.head(t)
	var pid int
	if _, err := fmt.Fscanln(resp.Body, &pid); err != nil || !alive(pid) {
		t.Fatalf("pid %d, %v", pid, err)
	}
	return resp, pid
}

// TestCGICancel: a script whose hub went away is killed at its next write.
func TestCGICancel(t *testing.T) {
	s, logs, _ := cgiHub(t, CGIConfig{Script: cgiScript(t, ticker)})
	_, pid := readPid(t, s)
	s.c.Close()
	eventually(t, "the script to die", func() bool { return !alive(pid) })
	logs.wait(t, "job cancelled")
}

// TestCGITimeout: past the timeout a script that has sent its head is
// killed at its next write and the response cut off; one that has not
// gets 504.
func TestCGITimeout(t *testing.T) {
	s, logs, _ := cgiHub(t, CGIConfig{Script: cgiScript(t, ticker), Timeout: time.Second})
	resp, pid := readPid(t, s)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("the response ended cleanly after the timeout")
	}
	eventually(t, "the script to die", func() bool { return !alive(pid) })
	logs.wait(t, "cgi script timed out")

	s, _, _ = cgiHub(t, CGIConfig{Timeout: 100 * time.Millisecond, Script: cgiScript(t, `#!/bin/sh
sleep 0.5
printf 'Content-Type: text/plain\n\nlate\n'
`)})
	resp, body := s.send(t, get("/"))
	if resp.StatusCode != http.StatusGatewayTimeout || body != "cgi script timed out\n" {
		t.Fatalf("got %d %q, want 504", resp.StatusCode, body)
	}
}

// TestCGIBadHead: a script without a valid head gets an error status, never
// an empty 200.
func TestCGIBadHead(t *testing.T) {
	for script, status := range map[string]int{
		"echo no head": http.StatusInternalServerError,
		`printf 'Status: abc\r\nContent-Type: x/y\r\n\r\n'`: http.StatusBadGateway,
		"exit 1": http.StatusInternalServerError,
	} {
		t.Run(script, func(t *testing.T) {
			s, logs, _ := cgiHub(t, CGIConfig{Script: cgiScript(t, "#!/bin/sh\n"+script+"\n")})
			if resp, body := s.send(t, get("/")); resp.StatusCode != status {
				t.Fatalf("got %d %q, want %d", resp.StatusCode, body, status)
			}
			rec := logs.wait(t, "cgi script failed")
			if note, _ := rec["cgi"].(string); note == "" {
				t.Errorf("no note from net/http/cgi in %v", rec)
			}
		})
	}
}

// TestCGIChunked: CGI needs the body's length.
func TestCGIChunked(t *testing.T) {
	s, _, _ := cgiHub(t, CGIConfig{Script: cgiScript(t, "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran'\n")})
	fmt.Fprintf(s.c, "POST / HTTP/1.1\r\nHost: job.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	if resp, body := s.read(t, nil); resp.StatusCode != http.StatusLengthRequired {
		t.Fatalf("got %d %q, want 411", resp.StatusCode, body)
	}
}

// TestCGILimits: the header bounds of Exec hold for CGI.
func TestCGILimits(t *testing.T) {
	s, _, _ := cgiHub(t, CGIConfig{MaxHeaders: 2, Script: cgiScript(t, "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran'\n")})
	req := get("/")
	req.Header = http.Header{"A": {"1"}, "B": {"2"}, "C": {"3"}, "User-Agent": {""}}
	if resp, body := s.send(t, req); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("got %d %q, want 431", resp.StatusCode, body)
	}
}

// TestCGICannotRun: a script that cannot be executed, or whose interpreter
// is gone, is declined before any 100 Continue; the worker leaves the hub
// until it can run again.
func TestCGICannotRun(t *testing.T) {
	script := cgiScript(t, "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran'\n")
	logger, logs := jsonLogger(t)
	c, err := NewCGI(CGIConfig{Script: script, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	hub := newAcceptHub(t)
	rw := startWorker(t, hub, Config{Handler: c, Logger: logger})
	s := hub.next(t)
	for i, breakIt := range []func(){
		func() { os.Chmod(script, 0o644) },
		func() { os.WriteFile(script, []byte("#!/no/such/interpreter\n"), 0o755) },
	} {
		breakIt()
		postExpect(s, "/")
		resp, _ := s.read(t, nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(DeclinedHeader) != "1" {
			t.Fatalf("case %d: got %d %v, want a decline", i, resp.StatusCode, resp.Header)
		}
		logs.wait(t, "cgi script cannot be run: declining the job")
		eventually(t, "the worker to leave the hub", func() bool { return rw.Connected() == 0 })
		os.WriteFile(script, []byte("#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran'\n"), 0o755)
		os.Chmod(script, 0o755)
		s = hub.next(t)
		if resp, body := s.send(t, get("/")); resp.StatusCode != 200 || body != "ran" {
			t.Fatalf("case %d: got %d %q", i, resp.StatusCode, body)
		}
	}
}

// TestCGIWrappedCannotRun: a CGI inside another Handler has its jobs
// accepted by the Worker before it runs, so it must not decline them.
func TestCGIWrappedCannotRun(t *testing.T) {
	script := cgiScript(t, "#!/bin/sh\n")
	c, err := NewCGI(CGIConfig{Script: script, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(script, 0o644)
	hub := newAcceptHub(t)
	startWorker(t, hub, Config{Handler: http.StripPrefix("/x", c)})
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

func TestNewCGIErrors(t *testing.T) {
	notExec := cgiScript(t, "#!/bin/sh\n")
	os.Chmod(notExec, 0o644)
	for _, tc := range []struct {
		cfg CGIConfig
		msg string
	}{
		{CGIConfig{}, "no CGI script"},
		{CGIConfig{Script: "/no/such/script"}, "no such file"},
		{CGIConfig{Script: notExec}, "permission denied"},
		{CGIConfig{Script: cgiScript(t, "#!/no/such/sh\n")}, "interpreter"},
		{CGIConfig{Script: cgiScript(t, "#!/bin/sh\n"), Timeout: -1}, "negative"},
	} {
		if _, err := NewCGI(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %v, want an error with %q", tc.cfg, err, tc.msg)
		}
	}
}
