// Micro-benchmarks of the worker's forwarding path: one job at a time from
// a hub's end of a real loopback connection, through a Worker, to an
// upstream HTTP server on loopback, answering 1 KiB. "direct" is a job
// without a body (the Forwarder's direct exchange), "proxied" one with a
// small body (through httputil.ReverseProxy), "unix" the direct exchange
// to an upstream on a unix socket, and "package" the same handler served
// by the Worker itself, for what forwarding adds. ns/op is the whole round
// trip on both sides, allocs/op counts both sides and the upstream.
//
// As for the hub's (hub_bench_test.go), compare a change with benchstat:
//
//	go test -run '^$' -bench Forward -benchmem -count 10 ./worker > old.txt
//	# ...make the change...
//	go test -run '^$' -bench Forward -benchmem -count 10 ./worker > new.txt
//	go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt

package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchHub accepts one worker connection, answers its handshake with the
// accept and ready features, and returns the hub's end of it.
func benchHub(b *testing.B, cfg Config) (net.Conn, *bufio.Reader) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cfg.Hub, cfg.Pool, cfg.Slots = ln.Addr().String(), "bench", 1
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	c, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); cancel(); <-done })
	br := bufio.NewReader(c)
	if _, err := http.ReadRequest(br); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n%s: %s, %s\r\n\r\n",
		FeaturesHeader, FeatureAccept, FeatureReady)
	return c, br
}

// benchUpstream serves 1 KiB for every request (after reading its body) on
// ln until the benchmark ends.
func benchUpstream(b *testing.B, ln net.Listener) {
	body := strings.Repeat("x", 1024)
	srv := &http.Server{Handler: benchApp(body)}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
}

func benchApp(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, body)
	})
}

// skipFrames reads the readiness frames that come before a response.
func skipFrames(br *bufio.Reader) error {
	for {
		p, err := br.Peek(1)
		if err != nil {
			return err
		}
		if p[0] != FrameReady && p[0] != FrameNotReady {
			return nil
		}
		br.Discard(1)
	}
}

// runJobs sends b.N jobs on c, one at a time, and reads each response.
func runJobs(b *testing.B, c net.Conn, br *bufio.Reader, withBody bool) {
	get := "GET /tiny HTTP/1.1\r\nHost: app.example\r\nUser-Agent: bench\r\n\r\n"
	post := "POST /tiny HTTP/1.1\r\nHost: app.example\r\nUser-Agent: bench\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if withBody {
			io.WriteString(c, post)
			if err := skipFrames(br); err != nil {
				b.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusContinue {
				b.Fatalf("want 100 Continue: %v %v", resp, err)
			}
			io.WriteString(c, "hello")
		} else {
			io.WriteString(c, get)
		}
		if err := skipFrames(br); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || resp.StatusCode != 200 || n != 1024 {
			b.Fatalf("status %d, %d bytes, %v", resp.StatusCode, n, err)
		}
	}
}

func BenchmarkForward(b *testing.B) {
	tcpUpstream := func(b *testing.B) *url.URL {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		benchUpstream(b, ln)
		return &url.URL{Scheme: "http", Host: ln.Addr().String()}
	}
	forwarder := func(u *url.URL) Config {
		return Config{Handler: NewForwarder(u, slog.New(slog.NewTextHandler(io.Discard, nil)))}
	}
	b.Run("direct", func(b *testing.B) {
		c, br := benchHub(b, forwarder(tcpUpstream(b)))
		runJobs(b, c, br, false)
	})
	b.Run("proxied", func(b *testing.B) {
		c, br := benchHub(b, forwarder(tcpUpstream(b)))
		runJobs(b, c, br, true)
	})
	b.Run("unix", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "app.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		benchUpstream(b, ln)
		c, br := benchHub(b, forwarder(&url.URL{Scheme: "unix", Path: path}))
		runJobs(b, c, br, false)
	})
	b.Run("package", func(b *testing.B) {
		c, br := benchHub(b, Config{Handler: benchApp(strings.Repeat("x", 1024))})
		runJobs(b, c, br, false)
	})
}
