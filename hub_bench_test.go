// Micro-benchmarks of a pool's dispatch path: taking an idle connection,
// handing a released connection to a waiting request, a waiting request
// giving up, and one whole exchange through the transport. None of them
// starts Caddy; the connections are real loopback TCP connections taken in
// with Pool.add, as a worker's would be after its handshake.
//
// To compare a change, run the benchmarks before and after it and feed both
// outputs to benchstat (each run takes about two minutes):
//
//	go test -run '^$' -bench 'Pool|RoundTrip' -benchmem -count 10 . > old.txt
//	# ...make the change...
//	go test -run '^$' -bench 'Pool|RoundTrip' -benchmem -count 10 . > new.txt
//	go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt

package reversehttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// checkGoroutines fails the benchmark if it leaves goroutines behind. Call it
// first, so that its cleanup runs after every other one.
func checkGoroutines(tb testing.TB) {
	tb.Helper()
	before := runtime.NumGoroutine()
	tb.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				tb.Errorf("%d goroutines left behind:\n%s",
					runtime.NumGoroutine()-before, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// benchPool returns an empty pool with an unbounded queue and no response
// timeout, drained when the benchmark ends.
func benchPool(tb testing.TB, respTimeout time.Duration) *Pool {
	p := newPool("bench")
	p.configure(poolLimits{queueTimeout: time.Minute, respTimeout: respTimeout, maxResponseHeader: DefaultMaxResponseHeader, maxAttempts: DefaultMaxAttempts}, zap.NewNop())
	tb.Cleanup(p.drain)
	return p
}

// benchWorkers connects n loopback connections to p as workers would and
// returns the workers' ends. The connections close when the benchmark ends,
// which also ends their watchers.
func benchWorkers(tb testing.TB, p *Pool, n int) []net.Conn {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	var workers, hubs []net.Conn
	tb.Cleanup(func() {
		for _, c := range workers {
			c.Close()
		}
		for _, c := range hubs {
			c.Close()
		}
	})
	for range n {
		w, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		workers = append(workers, w)
		h, err := ln.Accept()
		if err != nil {
			tb.Fatal(err)
		}
		hubs = append(hubs, h)
		p.add(h, bufio.NewReader(h), workerInfo{name: "bench"})
	}
	if s := p.Stats(); s.Idle != n {
		tb.Fatalf("after adding %d connections: %+v", n, s)
	}
	return workers
}

// cannedResponse is what the benchmark worker answers to every request.
const cannedResponse = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

// serveCanned answers every bodiless request read from conn with
// cannedResponse, without allocating, so that allocs/op counts the hub's
// side only. The returned channel closes when conn fails or closes.
func serveCanned(conn net.Conn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		br := bufio.NewReader(conn)
		resp := []byte(cannedResponse)
		for {
			// A request without a body ends at its first empty line.
			for {
				line, err := br.ReadSlice('\n')
				if err == bufio.ErrBufferFull {
					continue
				}
				if err != nil {
					return
				}
				if string(line) == "\r\n" || string(line) == "\n" {
					break
				}
			}
			if _, err := conn.Write(resp); err != nil {
				return
			}
		}
	}()
	return done
}

// BenchmarkPoolAcquireRelease measures the uncontended path: a request finds
// an idle connection at once and gives it back for reuse when its job ends.
// With many idle connections the FIFO rotates through all of them.
func BenchmarkPoolAcquireRelease(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("idle=%d", n), func(b *testing.B) {
			checkGoroutines(b)
			p := benchPool(b, 0)
			benchWorkers(b, p, n)
			ctx := context.Background()
			deadline := time.Now().Add(time.Hour)
			b.ReportAllocs()
			for b.Loop() {
				c, err := p.acquire(ctx, deadline, false)
				if err != nil {
					b.Fatal(err)
				}
				p.release(c, true)
			}
			if s := p.Stats(); s.Idle != n || s.Busy != 0 || s.Waiting != 0 {
				b.Fatalf("after the run: %+v", s)
			}
		})
	}
}

// waitCounter is a request context that counts how often acquire waited in
// the queue: acquire asks for Done only when no idle connection is free.
// Each goroutine has its own, so the count costs no synchronisation.
type waitCounter struct {
	context.Context
	waits int64
}

func (c *waitCounter) Done() <-chan struct{} {
	c.waits++
	return c.Context.Done()
}

// BenchmarkPoolHandoff measures the contended path: more requests than
// connections, so that requests wait in the queue and put hands each
// released connection straight to the oldest of them through the waiter's
// channel. An op is one acquire/release pair, whichever goroutine runs it.
// Each goroutine yields while it holds a connection, standing in for the
// job, so that the others run and queue behind it. The waits/op metric is
// the share of acquires that queued and got their connection handed over
// (or found one idle only after queueing); the rest found one idle at once.
func BenchmarkPoolHandoff(b *testing.B) {
	for _, bc := range []struct{ conns, goroutines int }{{1, 2}, {1, 16}, {4, 64}} {
		b.Run(fmt.Sprintf("conns=%d/goroutines=%d", bc.conns, bc.goroutines), func(b *testing.B) {
			checkGoroutines(b)
			p := benchPool(b, 0)
			benchWorkers(b, p, bc.conns)
			deadline := time.Now().Add(time.Hour)
			var left atomic.Int64
			left.Store(int64(b.N))
			start := make(chan struct{})
			errc := make(chan error, bc.goroutines)
			ctxs := make([]*waitCounter, bc.goroutines)
			var wg sync.WaitGroup
			for i := range ctxs {
				ctx := &waitCounter{Context: context.Background()}
				ctxs[i] = ctx
				wg.Go(func() {
					<-start
					for left.Add(-1) >= 0 {
						c, err := p.acquire(ctx, deadline, false)
						if err != nil {
							errc <- err
							return
						}
						runtime.Gosched() // the job
						p.release(c, true)
					}
				})
			}
			b.ReportAllocs()
			b.ResetTimer()
			close(start)
			wg.Wait()
			b.StopTimer()
			close(errc)
			for err := range errc {
				b.Error(err)
			}
			if s := p.Stats(); s.Idle != bc.conns || s.Busy != 0 || s.Waiting != 0 {
				b.Fatalf("after the run: %+v", s)
			}
			var waits int64
			for _, ctx := range ctxs {
				waits += ctx.waits
			}
			b.ReportMetric(float64(waits)/float64(b.N), "waits/op")
		})
	}
}

// BenchmarkPoolQueueGiveUp measures a request that joins the queue and
// leaves it without a connection: its context is already cancelled, or its
// queue deadline has already passed. Either way acquire queues a waiter,
// starts the queue timer, wakes at once and takes the waiter out again. With
// queued=1000 the request leaves from behind a thousand parked requests.
func BenchmarkPoolQueueGiveUp(b *testing.B) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, bc := range []struct {
		name     string
		ctx      context.Context
		deadline func() time.Time
		want     error
		queued   int
	}{
		{"cancel/queued=0", cancelled, func() time.Time { return time.Now().Add(time.Hour) }, context.Canceled, 0},
		{"cancel/queued=1000", cancelled, func() time.Time { return time.Now().Add(time.Hour) }, context.Canceled, 1000},
		{"timeout/queued=0", context.Background(), func() time.Time { return time.Now().Add(-time.Second) }, errQueueTimeout, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			checkGoroutines(b)
			p := benchPool(b, 0)
			if bc.queued > 0 {
				park, unpark := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				defer func() { unpark(); wg.Wait() }()
				for range bc.queued {
					wg.Go(func() { p.acquire(park, time.Now().Add(time.Hour), false) })
				}
				waitFor(b, "parked requests", func() bool { return p.Stats().Waiting == bc.queued })
			}
			deadline := bc.deadline()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.acquire(bc.ctx, deadline, false); !errors.Is(err, bc.want) {
					b.Fatalf("got %v, want %v", err, bc.want)
				}
			}
			if s := p.Stats(); s.Waiting != bc.queued {
				b.Fatalf("after the run: %+v", s)
			}
		})
	}
}

// BenchmarkRoundTripLoopback measures one whole job through the transport,
// without Caddy: take the idle connection, write a small GET, wait for the
// watcher to see the response, read the head, read the body to its end and
// so give the connection back. The worker is a goroutine answering a canned
// response over loopback TCP. The response timeout, when set, adds a timer
// per job. net_http runs the same exchange through net/http's own
// Transport against the same canned worker, for scale.
func BenchmarkRoundTripLoopback(b *testing.B) {
	run := func(b *testing.B, rt http.RoundTripper, req *http.Request) {
		b.ReportAllocs()
		for b.Loop() {
			resp, err := rt.RoundTrip(req)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != 2 || resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d, %d body bytes, error %v", resp.StatusCode, n, err)
			}
		}
	}

	for _, respTimeout := range []time.Duration{0, time.Minute} {
		b.Run(fmt.Sprintf("hub/resp_timeout=%v", respTimeout), func(b *testing.B) {
			checkGoroutines(b)
			p := benchPool(b, respTimeout)
			w := benchWorkers(b, p, 1)[0]
			done := serveCanned(w)
			b.Cleanup(func() { w.Close(); <-done })
			// As in the handler: the job rides on the request's own
			// cancellable context.
			reqCtx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ctx := context.WithValue(reqCtx, jobCtxKey{}, &job{pool: p, deadline: time.Now().Add(time.Hour)})
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://worker/ping", nil)
			if err != nil {
				b.Fatal(err)
			}
			run(b, transport{}, req)
			if s := p.Stats(); s.Idle != 1 || s.Busy != 0 {
				b.Fatalf("the connection should be idle again: %+v", s)
			}
		})
	}

	b.Run("net_http", func(b *testing.B) {
		checkGoroutines(b)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var conns []net.Conn
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				done := serveCanned(c)
				wg.Go(func() { <-done })
			}
		})
		tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1}
		b.Cleanup(func() {
			tr.CloseIdleConnections()
			ln.Close()
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
		reqCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, "http://"+ln.Addr().String()+"/ping", nil)
		if err != nil {
			b.Fatal(err)
		}
		run(b, tr, req)
	})
}

// BenchmarkRoundTripParallel runs whole jobs as BenchmarkRoundTripLoopback
// does, from eight goroutines at once over eight worker connections, so
// that the CPU the hub spends per job, not the latency of one exchange,
// sets the pace: work that runs beside the job (another goroutine or
// thread woken per job) shows here.
func BenchmarkRoundTripParallel(b *testing.B) {
	checkGoroutines(b)
	p := benchPool(b, 0)
	workers := benchWorkers(b, p, 8)
	for _, w := range workers {
		done := serveCanned(w)
		b.Cleanup(func() { w.Close(); <-done })
	}
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		reqCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ctx := context.WithValue(reqCtx, jobCtxKey{}, &job{pool: p, deadline: time.Now().Add(time.Hour)})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://worker/ping", nil)
		if err != nil {
			b.Error(err) // not Fatal: this is not the benchmark's goroutine
			return
		}
		for pb.Next() {
			resp, err := transport{}.RoundTrip(req)
			if err != nil {
				b.Error(err)
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != 2 || resp.StatusCode != http.StatusOK {
				b.Errorf("status %d, %d body bytes, error %v", resp.StatusCode, n, err)
				return
			}
		}
	})
}
