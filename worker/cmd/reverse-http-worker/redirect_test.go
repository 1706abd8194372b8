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
	"strings"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/internal/testpki"
)

func TestRedirectFlags(t *testing.T) {
	base := []string{"--hub", "127.0.0.1:1", "--pool", "p", "--upstream", "http://127.0.0.1:2"}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{append(base, "--public-url", "http://x/"), "need --redirect-response"},
		{append(base, "--redirect-ttl", "5s"), "need --redirect-response"},
		{append(base, "--redirect-response", "h:1", "--redirect-ttl", "0s"), "--redirect-ttl must be positive"},
		{append(base, "--redirect-response", "h:1", "--redirect-cert", "c.pem"), "go together"},
		{append(base, "--redirect-response", "h:1", "--public-url", "/x"), "want an http://"},
		{append(base, "--redirect-response", "a:b:c"), "want HOST:PORT or PORT"},
		{append(base, "--redirect-response", "h:1", "--redirect-min-size", "lots"), "want a size"},
		{append(base, "--redirect-response", "h:1", "--redirect-cert", "/no/c.pem", "--redirect-key", "/no/k.pem"), "--redirect-cert"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out); code != 2 || !strings.Contains(out.String(), tc.msg) {
			t.Errorf("%q: exit %d, want 2 with %q; output:\n%s", tc.args, code, tc.msg, out.String())
		}
	}
	o, err := parseFlags(append(base, "--redirect-response", "8081", "--redirect-min-size", "64K"), io.Discard)
	if err != nil || o.redirect.addr != ":8081" || o.redirect.minSize != 64<<10 {
		t.Errorf("PORT alone: %+v, %v; want :8081 and 65536", o.redirect, err)
	}
}

// TestRedirectOverTLS: the binary with --redirect-response, --public-url
// and a certificate answers a job 303 to an https URL, and serves the
// body there once.
func TestRedirectOverTLS(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream %s", r.URL.Path)
	}))
	defer up.Close()
	dir := t.TempDir()
	ca := testpki.NewCA(t, "redirect CA")
	certFile, keyFile := testpki.WriteFiles(t, dir, "oob", ca.Issue(t, testpki.Leaf{Names: []string{"127.0.0.1"}}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	oobAddr := ln.Addr().String()
	ln.Close()

	addr, conns := fakeHub(t, 101, "")
	serveHub(t, []string{"--hub", addr, "--pool", "p", "--upstream", up.URL,
		"--redirect-response", oobAddr, "--public-url", "https://" + oobAddr + "/dl/",
		"--redirect-cert", certFile, "--redirect-key", keyFile})
	c := next(t, conns)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req, _ := http.NewRequest("GET", "http://app.example/file", nil)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "https://"+oobAddr+"/dl/") {
		t.Fatalf("job: %d, Location %q; want 303 under https://%s/dl/", resp.StatusCode, loc, oobAddr)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	for i, want := range []int{200, 404} {
		r, err := client.Get(loc)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != want || (want == 200 && string(body) != "upstream /file") {
			t.Errorf("fetch %d: %d %q, want %d", i+1, r.StatusCode, body, want)
		}
	}
}
