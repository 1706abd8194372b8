package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// scale is scenario 4: many idle worker connections and many waiting
// requests held at once, then the rate at which 1,000 slots work through
// the backlog and through a closed loop of tiny jobs.
func scale(e *env, o *options) ([]*table, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	hub := fmt.Sprintf("127.0.0.1:%d", ports[0])
	idleSite := fmt.Sprintf("127.0.0.1:%d", ports[1])
	waitSite := fmt.Sprintf("127.0.0.1:%d", ports[2])
	// Consumers speak HTTP/2 without TLS (h2c), so that the waiting
	// requests share a few connections: one process may hold only
	// fileLimit() descriptors.
	caddy, err := e.startCaddy("scale-caddy", fmt.Sprintf(`
	servers {
		protocols h1 h2c
	}
	reverse_http {
		pool idle {
			listen %[1]s
			token %[2]s
		}
		pool wait {
			listen %[1]s
			token %[2]s
			max_queue %[3]d
			queue_timeout 10m
		}
	}
}

http://%[4]s {
	bind 127.0.0.1
	reverse_http idle
}
http://%[5]s {
	bind 127.0.0.1
	reverse_http wait
}
`, hub, benchToken, o.scaleWaiting, idleSite, waitSite), idleSite, waitSite, hub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)
	t := &table{
		title: "4. Scale",
		intro: fmt.Sprintf("%s idle worker connections (one worker process with that many slots) and %s requests waiting in another pool (HTTP/2 without TLS from the generator), held at once; "+
			"then %s slots join the waiting pool and work through the backlog, then serve tiny jobs to %d clients in a closed loop. Open-file limit: %d.",
			count(o.scaleIdle), count(o.scaleWaiting), count(o.scaleSlots), o.scaleSlots, fileLimit()),
		header: []string{"measure", "value"},
	}
	time.Sleep(500 * time.Millisecond)
	rss0, _, err := memory(caddy.pid())
	if err != nil {
		return nil, err
	}
	t.add("Caddy RSS at start", mib(rss0)+" MiB")

	idle, err := e.serve("scale-idle-workers", "--hub", hub, "--pool", "idle", "--token", benchToken, "--slots", fmt.Sprint(o.scaleIdle))
	if err != nil {
		return nil, err
	}
	defer idle.stop(30 * time.Second)
	rss1 := settledRSS(caddy.pid())
	t.add(fmt.Sprintf("Caddy RSS with %s idle worker connections", count(o.scaleIdle)), fmt.Sprintf("%s MiB (%.1f KiB per connection)",
		mib(rss1), float64(rss1-rss0)/1024/float64(o.scaleIdle)))
	if m, err := e.caddyMemory(); err == nil {
		t.add("of which Go heap in use / goroutine stacks", fmt.Sprintf("%s / %s MiB", mib(int64(m.HeapInuse)), mib(int64(m.StackInuse))))
	}

	// The waiting requests.
	ctx, cancel := context.WithCancel(context.Background())
	held := holdRequests(ctx, o.scaleWaiting, func(i int) string {
		return fmt.Sprintf("http://%s/tiny?n=%d", waitSite, i)
	})
	defer func() { cancel(); held.close() }()
	rss2 := settledRSS(caddy.pid())
	// One more request must find the queue full: all of them are waiting.
	probe, _ := http.NewRequest("GET", "http://"+waitSite+"/tiny", nil)
	status, _ := fetch(held.client, probe)
	queued := "yes (one more request got 503: the queue holds its limit)"
	if status != http.StatusServiceUnavailable {
		queued = fmt.Sprintf("NO: one more request got status %d, not 503", status)
	}
	_, hwm, _ := memory(caddy.pid())
	t.add(fmt.Sprintf("Caddy RSS with %s idle connections and %s waiting requests", count(o.scaleIdle), count(o.scaleWaiting)),
		fmt.Sprintf("**%s MiB** (%.1f KiB per waiting request); peak so far %s MiB", mib(rss2), float64(rss2-rss1)/1024/float64(o.scaleWaiting), mib(hwm)))
	t.add("all requests waiting at once", queued)
	if m, err := e.caddyMemory(); err == nil {
		t.add("of which Go heap in use / goroutine stacks", fmt.Sprintf("%s / %s MiB", mib(int64(m.HeapInuse)), mib(int64(m.StackInuse))))
	}
	if err := e.saveProfile("heap?gc=1", filepath.Join(o.out, "scale-heap.pprof")); err != nil {
		t.notes = append(t.notes, "heap profile: "+err.Error())
	}
	e.saveProfile("goroutine", filepath.Join(o.out, "scale-goroutine.pprof"))

	// Work through the backlog with the slots.
	t0 := time.Now()
	slots, err := e.serve("scale-slots", "--hub", hub, "--pool", "wait", "--token", benchToken, "--slots", fmt.Sprint(o.scaleSlots))
	if err != nil {
		return nil, err
	}
	defer slots.stop(30 * time.Second)
	connected := time.Since(t0)
	held.wg.Wait()
	drain := time.Duration(held.lastDone.Load() - held.firstDone.Load())
	t.add(fmt.Sprintf("%s slots connected", count(o.scaleSlots)), fmt.Sprintf("in %v", connected.Round(time.Millisecond)))
	t.add(fmt.Sprintf("backlog of %s served", count(o.scaleWaiting)), fmt.Sprintf("%s ok, %s failed; first to last response %v: **%.0f jobs/s**",
		count(int(held.ok.Load())), count(int(held.failed.Load())), drain.Round(time.Millisecond), float64(held.ok.Load())/drain.Seconds()))
	if v := held.firstErr.Load(); v != nil {
		t.notes = append(t.notes, fmt.Sprintf("first failure: %v", v))
	}

	d := 5 * time.Second
	if o.quick {
		d = time.Second
	}
	r := closedLoop("http://"+waitSite+"/tiny", o.scaleSlots, d)
	l := sorted(r.lat)
	t.add(fmt.Sprintf("tiny jobs, %d clients (HTTP/1.1) on %s slots, %v", o.scaleSlots, count(o.scaleSlots), d),
		fmt.Sprintf("**%.0f req/s**, p50 %s ms, p99 %s ms, %s errors", r.rate(), ms(percentile(l, 50)), ms(percentile(l, 99)), count(r.errors)))
	if r.firstErr != nil {
		t.notes = append(t.notes, fmt.Sprintf("closed loop: first error: %v", r.firstErr))
	}
	_, hwm, _ = memory(caddy.pid())
	t.add("Caddy peak RSS over the scenario", mib(hwm)+" MiB")
	caddy.stop(10 * time.Second)
	idle.stop(30 * time.Second)
	slots.stop(30 * time.Second)

	// For scale: what reverse_proxy needs to hold as many requests open,
	// each waiting on a backend that takes its time.
	perWaiting := float64(rss2-rss1) / float64(o.scaleWaiting)
	rpRSS0, rpRSS, err := proxyHolding(e, o)
	if err != nil {
		t.notes = append(t.notes, "reverse_proxy comparison: "+err.Error())
	} else {
		perProxied := float64(rpRSS-rpRSS0) / float64(o.scaleWaiting)
		t.add(fmt.Sprintf("for scale: Caddy `reverse_proxy` holding %s requests open to a slow backend", count(o.scaleWaiting)),
			fmt.Sprintf("%s MiB (%.1f KiB per request); a waiting request in `reverse_http` costs %s of that",
				mib(rpRSS), perProxied/1024, ratio(perWaiting, perProxied)))
	}
	return []*table{t}, nil
}

// proxyHolding starts a Caddy whose reverse_proxy sends o.scaleWaiting
// requests (HTTP/2 without TLS, as above) to a backend that sits on them,
// and returns Caddy's RSS before and with all of them open.
func proxyHolding(e *env, o *options) (before, holding int64, err error) {
	ports, err := freePorts(2)
	if err != nil {
		return 0, 0, err
	}
	backend := fmt.Sprintf("127.0.0.1:%d", ports[0])
	site := fmt.Sprintf("127.0.0.1:%d", ports[1])
	be, err := e.serve("scale-slow-backend", "--listen", backend)
	if err != nil {
		return 0, 0, err
	}
	defer be.stop(30 * time.Second)
	caddy, err := e.startCaddy("scale-rp-caddy", fmt.Sprintf(`
	servers {
		protocols h1 h2c
	}
}

http://%s {
	bind 127.0.0.1
	reverse_proxy %s
}
`, site, backend), site)
	if err != nil {
		return 0, 0, err
	}
	defer caddy.stop(10 * time.Second)
	time.Sleep(500 * time.Millisecond)
	before, _, err = memory(caddy.pid())
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	held := holdRequests(ctx, o.scaleWaiting, func(i int) string {
		return fmt.Sprintf("http://%s/job?ms=600000&n=%d", site, i)
	})
	defer func() { cancel(); held.close() }()
	if n := held.failed.Load(); n > 0 {
		return 0, 0, fmt.Errorf("%d requests failed: %v", n, held.firstErr.Load())
	}
	holding = settledRSS(caddy.pid())
	return before, holding, nil
}

// settledRSS waits until a process's RSS stops growing (two readings 300 ms
// apart within 1%), for up to 30 s, and returns it.
func settledRSS(pid int) int64 {
	prev, _, _ := memory(pid)
	for range 100 {
		time.Sleep(300 * time.Millisecond)
		cur, _, _ := memory(pid)
		if cur <= prev+prev/100 {
			return cur
		}
		prev = cur
	}
	return prev
}

// heldRequests are many GETs sent at once over HTTP/2 without TLS (h2c),
// so that they share a few connections: one process may hold only
// fileLimit() descriptors.
type heldRequests struct {
	client              *http.Client
	wg                  sync.WaitGroup
	written, ok, failed atomic.Int64
	firstErr            atomic.Value // string
	// When the first and the last response ended, in Unix nanoseconds.
	firstDone, lastDone atomic.Int64
}

// holdRequests sends n requests to url(i) and returns once all of them
// are written (or one failed, or two minutes passed); they go on waiting
// for their responses. A request that fails after ctx is done does not
// count as failed.
func holdRequests(ctx context.Context, n int, url func(i int) string) *heldRequests {
	h2c := &http.Transport{Protocols: new(http.Protocols), MaxIdleConnsPerHost: 1000}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	h := &heldRequests{client: &http.Client{Transport: h2c}}
	trace := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { h.written.Add(1) },
	})
	for i := range n {
		// Send them in steps, so that the client fills its connections
		// instead of dialling a new one for every request while the
		// first ones are still being set up.
		if i%100 == 0 {
			for h.written.Load() < int64(i) && h.failed.Load() == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			req, _ := http.NewRequestWithContext(trace, "GET", url(i), nil)
			_, err := fetch(h.client, req)
			now := time.Now().UnixNano()
			h.firstDone.CompareAndSwap(0, now)
			h.lastDone.Store(now)
			switch {
			case err == nil:
				h.ok.Add(1)
			case ctx.Err() == nil:
				h.failed.Add(1)
				h.firstErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Minute)
	for h.written.Load() < int64(n) && h.failed.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return h
}

// close waits for the requests to end and closes the connections.
func (h *heldRequests) close() {
	h.wg.Wait()
	h.client.CloseIdleConnections()
}
