//go:build unix

package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/reversehttp/reverse_http/worker"
)

func TestJobFlags(t *testing.T) {
	base := []string{"--hub", "127.0.0.1:1", "--pool", "p"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{base, 2, "--upstream, --exec or --cgi is required"},
		{append(base, "--upstream", "http://x", "--exec", "cat"), 2, "exclude each other"},
		{append(base, "--exec", "cat", "--cgi", "/x.cgi"), 2, "exclude each other"},
		{append(base, "--exec", "ffmpeg -i - | lame -"), 2, `--exec: '|' is shell syntax`},
		{append(base, "--exec", "sh -c 'unterminated"), 2, "--exec: unterminated single quote"},
		{append(base, "--exec", "cat", "--exec-timeout", "-1s"), 2, "--exec-timeout must not be negative"},
		{append(base, "--exec", "no-such-command-here"), 2, "executable file not found"},
		{append(base, "--cgi", "/no/such/script.cgi"), 2, "no such file"},
		{append(base, "--exec", "cat", "--exec-env", "A=B"), 2, "cannot pass on"},
	} {
		var out bytes.Buffer
		code := run(context.Background(), tc.args, &out)
		if code != tc.code || !strings.Contains(out.String(), tc.msg) {
			t.Errorf("%q: exit %d, want %d; output:\n%s", tc.args, code, tc.code, out.String())
		}
	}
	o, err := parseFlags(append(base, "--exec", `sh -c 'echo "$1"' - "a b"`, "--exec-env", "HOME, LANG,"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"sh", "-c", `echo "$1"`, "-", "a b"}; !slices.Equal(o.jobs.command, want) {
		t.Errorf("command %q, want %q", o.jobs.command, want)
	}
	if got := o.jobs.inherit(); !slices.Equal(got, []string{"HOME", "LANG"}) {
		t.Errorf("inherit %q", got)
	}
}

// serveOne runs the binary with args against a fake hub, sends it one job
// and returns the response and the binary's log.
func serveOne(t *testing.T, args []string, req *http.Request) (*http.Response, string, *syncBuffer) {
	t.Helper()
	addr, conns := fakeHub(t, 101, "")
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--hub", addr, "--pool", "p", "--log-level", "debug"}, args...), &out)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit %d:\n%s", code, out.String())
		}
	})
	c := next(t, conns)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	return resp, string(body), &out
}

func TestExecFlag(t *testing.T) {
	req, _ := http.NewRequest("POST", "http://app.example/x?y=1", strings.NewReader("hello"))
	resp, body, out := serveOne(t, []string{
		"--exec", `sh -c 'printf "%s %s %s " "$REQUEST_METHOD" "$REQUEST_URI" "$1"; cat' - "one arg"`,
		"--exec-content-type", "text/plain; charset=utf-8",
	}, req)
	if resp.StatusCode != 200 || body != "POST /x?y=1 one arg hello" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
	waitLog(t, out, `msg=starting`)
	if !strings.Contains(out.String(), `exec="[sh -c`) {
		t.Errorf("start-up log does not name the command:\n%s", out.String())
	}
}

func TestCGIFlag(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.cgi")
	os.WriteFile(script, []byte("#!/bin/sh\nprintf 'Status: 202 Accepted\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s' \"$PATH_INFO\"\n"), 0o755)
	req, _ := http.NewRequest("GET", "http://app.example/some/path", nil)
	resp, body, _ := serveOne(t, []string{"--cgi", script}, req)
	if resp.StatusCode != 202 || body != "/some/path" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestExecDownLogged: a command that cannot be started any more is logged
// as such, and its jobs are declined.
func TestExecDownLogged(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho ok\n"), 0o755)
	addr, conns := fakeHub(t, 101, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--hub", addr, "--pool", "p", "--exec", script}, &out)
	}()
	c := next(t, conns)
	os.Chmod(script, 0o644)
	req, _ := http.NewRequest("GET", "http://app.example/x", nil)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 503 || resp.Header.Get(worker.DeclinedHeader) != "1" {
		t.Errorf("got %d %v, want a decline", resp.StatusCode, resp.Header)
	}
	waitLog(t, &out, `level=WARN msg="command cannot be started: not taking jobs"`)
	os.Chmod(script, 0o755)
	waitLog(t, &out, `level=INFO msg="command back"`)
	next(t, conns)
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d", code)
	}
}
