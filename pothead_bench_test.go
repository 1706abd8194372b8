package reversehttp

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// BenchmarkPotheadJob measures one job on a pothead pool with a
// connection per job, as POTHEAD's workers work: a worker goroutine dials
// the worker listener, the hub accepts the connection and admits it to the
// pool, a small GET goes out on it through the transport, the answer says
// Connection: close, the hub closes the connection, and the worker dials
// again for the next job. Both ends are in this process; compare runs with
// benchstat (see hub_bench_test.go).
func BenchmarkPotheadJob(b *testing.B) {
	checkGoroutines(b)
	tl := startTestListener(b, listenerOptions{
		pools:        map[string]*PoolConfig{"jobs": {Protocol: worker.ProtocolPothead}},
		listenConfig: true,
	})
	p := tl.pools["jobs"]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { potheadCanned(tl.addr(), stop) })
	b.Cleanup(func() {
		close(stop)
		p.drain() // closes the idle connection its worker waits on
		wg.Wait()
	})
	waitFor(b, "the worker's connection", func() bool { return p.Stats().Idle == 1 })

	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background())
		ctx = context.WithValue(ctx, jobCtxKey{}, &job{pool: p, limits: p.getLimits(), deadline: time.Now().Add(time.Minute)})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://worker/ping", nil)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := transport{}.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil || n != 2 || resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d, %d body bytes, error %v", resp.StatusCode, n, err)
		}
	}
	b.StopTimer()
	if s := p.Stats(); s.Joined < uint64(b.N) {
		b.Fatalf("%d connections joined for %d jobs: not one per job", s.Joined, b.N)
	}
}

// potheadCanned is a POTHEAD worker with one slot until stop: it dials
// addr, reads a bodiless request, answers "ok" with Connection: close,
// closes and dials again.
func potheadCanned(addr string, stop <-chan struct{}) {
	const resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
	for {
		select {
		case <-stop:
			return
		default:
		}
		conn, err := net.Dial("tcp4", addr)
		if err != nil {
			return
		}
		br := bufio.NewReader(conn)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				break
			}
			if string(line) == "\r\n" {
				io.WriteString(conn, resp)
				break
			}
		}
		conn.Close()
	}
}
