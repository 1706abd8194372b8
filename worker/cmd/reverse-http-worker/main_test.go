package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFlags(t *testing.T) {
	base := []string{"--hub", "127.0.0.1:1", "--pool", "p", "--upstream", "http://127.0.0.1:2"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--help"}, 0, "Usage:"},
		{[]string{"--nope"}, 2, "flag provided but not defined"},
		{[]string{"--pool", "p", "--upstream", "http://x"}, 2, "--hub is required"},
		{[]string{"--hub", "h:1", "--upstream", "http://x"}, 2, "--pool is required"},
		{[]string{"--hub", "h", "--pool", "p", "--upstream", "http://x"}, 2, "want HOST:PORT"},
		{[]string{"--hub", "h:1", "--pool", "p", "--upstream", "x:y"}, 2, "want an http://"},
		{append(base, "--slots", "0"), 2, "--slots"},
		{append(base, "--tls", "--cert", "c.pem"), 2, "--cert and --key go together"},
		{append(base, "--key", "k.pem", "--cert", "c.pem"), 2, "need --tls"},
		{append(base, "--protocol", "h2"), 2, "--protocol"},
		{append(base, "extra"), 2, "unexpected argument"},
		{append(base, "--tls", "--ca", "/does/not/exist.pem"), 2, "TLS"},
	} {
		var out bytes.Buffer
		code := run(context.Background(), tc.args, &out)
		if code != tc.code || !strings.Contains(out.String(), tc.msg) {
			t.Errorf("%q: exit %d, want %d; output:\n%s", tc.args, code, tc.code, out.String())
		}
	}
}

func TestTokenFromEnv(t *testing.T) {
	t.Setenv("REVERSE_HTTP_TOKEN", "from-env")
	o, err := parseFlags([]string{"--hub", "h:1", "--pool", "p", "--upstream", "http://x"}, io.Discard)
	if err != nil || o.token != "from-env" {
		t.Fatalf("token %q, %v", o.token, err)
	}
	o, err = parseFlags([]string{"--hub", "h:1", "--pool", "p", "--upstream", "http://x", "--token", "flag"}, io.Discard)
	if err != nil || o.token != "flag" {
		t.Fatalf("token %q, %v", o.token, err)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeHub accepts one worker connection, answering the handshake with
// status; on 101 it sends the connection to conns.
func fakeHub(t *testing.T, status int, reason string) (addr string, conns chan net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		all []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range all {
			c.Close()
		}
	})
	conns = make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
				c.Close()
				continue
			}
			if status != 101 {
				fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
					status, http.StatusText(status), len(reason), reason)
				c.Close()
				continue
			}
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n")
			conns <- c
		}
	}()
	return ln.Addr().String(), conns
}

func TestRejectedExit1(t *testing.T) {
	addr, _ := fakeHub(t, 401, "bad token")
	var out syncBuffer
	code := run(context.Background(), []string{"--hub", addr, "--pool", "p", "--upstream", "http://127.0.0.1:9"}, &out)
	want := "reverse-http-worker: hub rejected the handshake: 401 Unauthorized: bad token"
	if code != 1 || !strings.Contains(out.String(), want) {
		t.Errorf("exit %d, output:\n%s", code, out.String())
	}
}

func TestForwardAndDrain(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream %s %s", r.Host, r.URL.Path)
	}))
	defer up.Close()
	addr, conns := fakeHub(t, 101, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--hub", addr, "--pool", "p", "--upstream", up.URL, "--log-level", "debug"}, &out)
	}()

	var c net.Conn
	select {
	case c = <-conns:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection")
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req, _ := http.NewRequest("GET", "http://app.example/hello", nil)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if want := "upstream app.example /hello"; string(body) != want {
		t.Errorf("body %q, want %q", body, want)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after drain, want 0", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	for _, want := range []string{"msg=starting", "msg=draining", "msg=drained"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, out.String())
		}
	}
}
