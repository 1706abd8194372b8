package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/internal/testpki"
	"github.com/reversehttp/reverse_http/worker"
)

func TestFlags(t *testing.T) {
	base := []string{"--hub", "127.0.0.1:1", "--pool", "p", "--upstream", "http://127.0.0.1:2"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--nope"}, 2, "flag provided but not defined"},
		{append(base, "--metrics", "9464"), 2, "--metrics \"9464\": want HOST:PORT"},
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

// tlsHub accepts TLS connections with cfg and answers handshakes with 101.
func tlsHub(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveHandshakes(t, ln, func(c net.Conn, err error) {
		if err != nil {
			c.Close()
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n")
	})
}

// rejectingHub answers every connection, handshake or not, with status and
// reason, as the hub does to what it cannot admit.
func rejectingHub(t *testing.T, status int, reason string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveHandshakes(t, ln, func(c net.Conn, _ error) {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			status, http.StatusText(status), len(reason), reason)
		c.Close()
	})
}

// serveHandshakes reads one handshake per connection on ln and lets answer
// reply; connections are closed when the test ends.
func serveHandshakes(t *testing.T, ln net.Listener, answer func(c net.Conn, err error)) string {
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
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			go func() {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err := http.ReadRequest(bufio.NewReader(c))
				answer(c, err)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSetupMistakesExit1: a TLS setting that does not fit the hub's ends
// the worker at start-up with exit status 1, the reason and a hint.
func TestSetupMistakesExit1(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "hub CA")
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, ca.PEM(), 0o600)
	otherCA := filepath.Join(dir, "other.pem")
	os.WriteFile(otherCA, testpki.NewCA(t, "other").PEM(), 0o600)
	serverCert := ca.Issue(t, testpki.Leaf{Names: []string{"localhost", "127.0.0.1"}})
	expired := ca.Issue(t, testpki.Leaf{Names: []string{"localhost", "127.0.0.1"}, Expired: true})
	clientCA := testpki.NewCA(t, "client CA")
	strangerCert, strangerKey := testpki.WriteFiles(t, dir, "stranger",
		testpki.NewCA(t, "stranger").Issue(t, testpki.Leaf{Names: []string{"w"}, Client: true}))

	good := tlsHub(t, &tls.Config{Certificates: []tls.Certificate{serverCert}})
	mtls := tlsHub(t, &tls.Config{Certificates: []tls.Certificate{serverCert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.Pool()})
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no CA", []string{"--hub", good, "--tls"},
			[]string{"not signed by a trusted CA", "hint: pass --ca FILE", "pki/authorities/local/root.crt"}},
		{"another CA", []string{"--hub", good, "--tls", "--ca", otherCA},
			[]string{"not signed by a trusted CA", "hint: no CA in --ca " + otherCA}},
		{"wrong name", []string{"--hub", good, "--tls", "--ca", caFile, "--server-name", "hub.example"},
			[]string{"for another name", "hint: the certificate is for localhost, 127.0.0.1, not hub.example: use --server-name localhost"}},
		{"expired", []string{"--hub", tlsHub(t, &tls.Config{Certificates: []tls.Certificate{expired}}), "--tls", "--ca", caFile},
			[]string{"not valid", "hint: the hub's certificate has expired"}},
		{"client certificate required", []string{"--hub", mtls, "--tls", "--ca", caFile},
			[]string{"requires a client certificate", "hint: the pool requires a client certificate: pass --cert FILE --key FILE"}},
		{"client certificate refused", []string{"--hub", mtls, "--tls", "--ca", caFile, "--cert", strangerCert, "--key", strangerKey},
			[]string{"refused the client certificate", "hint: the hub did not accept the certificate in --cert"}},
		{"TLS to a plain hub", []string{"--hub", rejectingHub(t, 400, "malformed handshake"), "--tls", "--ca", caFile},
			[]string{"does not use TLS", "hint: the hub does not use TLS on this port: drop --tls"}},
		{"plain to a TLS hub", []string{"--hub", rejectingHub(t, 400, "this address requires TLS")},
			[]string{"requires TLS", "hint: the hub requires TLS: add --tls"}},
		{"bad token", []string{"--hub", rejectingHub(t, 403, "wrong token")},
			[]string{"403 Forbidden: wrong token", "hint: the pool does not accept this token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out syncBuffer
			args := append([]string{"--pool", "p", "--upstream", "http://127.0.0.1:9", "--slots", "2"}, tc.args...)
			code := run(ctx, args, &out)
			if ctx.Err() != nil {
				t.Fatalf("still retrying after 10 s; output:\n%s", out.String())
			}
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			t.Log(strings.Join(lines[max(0, len(lines)-2):], "\n"))
			for _, want := range tc.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// TestHealableKeepsRetrying: a hub that refuses connections may come up:
// the worker retries until it is stopped, and exits 0.
func TestHealableKeepsRetrying(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--hub", addr, "--pool", "p", "--upstream", "http://127.0.0.1:9"}, &out)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "cannot connect to hub") < 3 {
		select {
		case code := <-done:
			t.Fatalf("exited %d while the hub refused connections:\n%s", code, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no retries:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d after stop, want 0:\n%s", code, out.String())
	}
}

// TestUpstreamDownLogged: the binary says when it stops taking jobs because
// its upstream is down, and when it is back.
func TestUpstreamDownLogged(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upAddr := ln.Addr().String()
	ln.Close()
	addr, conns := fakeHub(t, 101, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--hub", addr, "--pool", "p", "--upstream", "http://" + upAddr}, &out)
	}()
	c := next(t, conns)
	req, _ := http.NewRequest("GET", "http://app.example/x", nil)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 503 || resp.Header.Get(worker.DeclinedHeader) != "1" {
		t.Errorf("got %d %v, want a decline", resp.StatusCode, resp.Header)
	}
	waitLog(t, &out, `level=WARN msg="upstream unreachable: not taking jobs"`)

	ln, err = net.Listen("tcp", upAddr)
	if err != nil {
		t.Fatalf("listening on %s again: %v", upAddr, err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	up.Listener = ln
	up.Start()
	defer up.Close()
	waitLog(t, &out, `level=INFO msg="upstream back"`)
	next(t, conns)
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d", code)
	}
}

func next(t *testing.T, conns chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-conns:
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection")
		return nil
	}
}

func waitLog(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestValidUpstream(t *testing.T) {
	for s, want := range map[string]bool{
		"http://127.0.0.1:8080":     true,
		"https://app.internal/base": true,
		"unix:/run/app.sock":        true,
		"unix:app.sock":             true,
		"unix:":                     false,
		"unix://host/run/app.sock":  false,
		"ftp://127.0.0.1":           false,
		"http://":                   false,
		"x:y":                       false,
		"127.0.0.1:8080":            false,
	} {
		if got := validUpstream(s); got != want {
			t.Errorf("validUpstream(%q) = %v, want %v", s, got, want)
		}
	}
}

// --upstream unix:/PATH forwards to a real app on a unix socket, and
// --cpuprofile leaves a profile when the worker exits.
func TestForwardUnixSocketAndProfile(t *testing.T) {
	dir := t.TempDir()
	sock, profile := filepath.Join(dir, "app.sock"), filepath.Join(dir, "cpu.pprof")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "unix app %s %s", r.Host, r.URL.Path)
	})}
	go up.Serve(ln)
	defer up.Close()
	addr, conns := fakeHub(t, 101, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--hub", addr, "--pool", "p", "--upstream", "unix:" + sock, "--cpuprofile", profile}, &out)
	}()
	c := next(t, conns)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://app.example/%d", i), nil)
		req.Write(c)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("unix app app.example /%d", i); string(body) != want {
			t.Errorf("body %q, want %q", body, want)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d, want 0:\n%s", code, out.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if st, err := os.Stat(profile); err != nil || st.Size() == 0 {
		t.Errorf("no CPU profile: %v", err)
	}
}
