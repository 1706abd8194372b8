package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario 6: scheduling by class. The eight single-slot workers and the
// heavy-tailed jobs of scenario 2, with two kinds of consumer at once: a
// modest one (tenant B, or interactive requests) and a flood (tenant A, or
// batch requests). What the modest one sees, under FIFO, with fair_by or
// priority, and through HAProxy. Then consumers that obey Retry-After
// against ones that retry after one second.

const (
	// The flood sends at five times a fair share of half the capacity;
	// the generator keeps at most floodInFlight of its requests in flight
	// (a client's connection limit) and drops the rest.
	floodShare    = 5.0
	floodInFlight = 1000
	victimUtil    = 0.2
)

func classes(e *env, o *options) ([]*table, error) {
	capacity := workers * 1000 / meanMS(shortMS, longMS)
	n := o.schedJobs / 2
	victim := makeTrace(o.seed, n, victimUtil*capacity, shortMS, longMS)
	span := victim[len(victim)-1].at
	floodRate := floodShare * capacity / 2
	flood := makeTrace(o.seed+1, int(floodRate*span.Seconds())+1, floodRate, shortMS, longMS)

	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	hub, fifoSite, fairSite, prioSite, haSite, haPrioSite := addr(0), addr(1), addr(2), addr(3), addr(4), addr(5)
	bports, err := freePorts(workers)
	if err != nil {
		return nil, err
	}
	var backends []string
	for _, p := range bports {
		backends = append(backends, fmt.Sprintf("127.0.0.1:%d", p))
	}
	for i, b := range backends {
		p, err := e.serve(fmt.Sprintf("classes-backend%d", i), "--listen", b, "--serial")
		if err != nil {
			return nil, err
		}
		defer p.stop(10 * time.Second)
	}
	caddy, err := e.startCaddy("classes-caddy", fmt.Sprintf(`
	reverse_http {
		pool sched {
			listen %[1]s
			token %[2]s
			max_queue 100000
			queue_timeout 5m
		}
	}
}

http://%[3]s {
	bind 127.0.0.1
	reverse_http sched
}
http://%[4]s {
	bind 127.0.0.1
	reverse_http sched {
		fair_by {http.request.header.X-Tenant}
	}
}
http://%[5]s {
	bind 127.0.0.1
	reverse_http sched {
		priority {http.request.header.X-Priority}
	}
}
`, hub, benchToken, fifoSite, fairSite, prioSite), fifoSite, fairSite, prioSite, hub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)
	for i := range workers {
		p, err := e.serve(fmt.Sprintf("classes-worker%d", i), "--hub", hub, "--pool", "sched",
			"--token", benchToken, "--slots", "1")
		if err != nil {
			return nil, err
		}
		defer p.stop(10 * time.Second)
	}
	haConfig := func(bind, extra string) string {
		c := fmt.Sprintf(`global
	maxconn 8000
defaults
	mode http
	timeout connect 5s
	timeout client 5m
	timeout server 5m
	timeout queue 5m
frontend fe
	bind %s
%s	default_backend workers
backend workers
	balance leastconn
`, bind, extra)
		for i, b := range backends {
			c += fmt.Sprintf("\tserver w%d %s maxconn 1\n", i+1, b)
		}
		return c
	}
	var haNote string
	ha, err := e.startHAProxy(haConfig(haSite, ""), haSite)
	if err != nil {
		haNote = fmt.Sprintf("HAProxy did not run (%v); install the Debian package haproxy.", err)
	} else {
		defer ha.stop(10 * time.Second)
	}
	haPrio, err := e.startHAProxy(haConfig(haPrioSite, "\thttp-request set-priority-class int(-10) if { req.hdr(X-Priority) -m str 10 }\n"), haPrioSite)
	if err == nil {
		defer haPrio.stop(10 * time.Second)
	}
	time.Sleep(500 * time.Millisecond) // the workers' connections

	intro := func(who, flood string) string {
		return fmt.Sprintf("%d workers of one slot; jobs as in scenario 2 (90%% %g ms, 10%% %g ms; capacity about %.0f jobs/s). "+
			"%s: %d jobs, Poisson arrivals at %.0f/s (%.0f%% of capacity, seed %d) over %.1f s. "+
			"%s: Poisson arrivals at %.0f/s (%g× a fair share of half the capacity), open loop, at most %d of its requests in flight (the generator drops the rest). "+
			"Time in system = from the job's scheduled arrival to the end of its response. Throughput = jobs of both completed within the %.1f s, per second.",
			workers, shortMS, longMS, capacity, who, len(victim), victimUtil*capacity, 100*victimUtil, o.seed, span.Seconds(),
			flood, floodRate, floodShare, floodInFlight, span.Seconds())
	}

	// 6a. Fairness.
	fair := &table{
		title:  "6a. Fair queuing: tenant B at 20% of capacity while tenant A floods",
		intro:  intro("Tenant B", "Tenant A"),
		header: []string{"system", "B p50 ms", "B p99 ms", "B p99 vs B alone", "B failed", "throughput jobs/s", "vs FIFO"},
	}
	tenant := func(t string) http.Header { return http.Header{"X-Tenant": {t}} }
	runs := []struct {
		name  string
		base  string
		flood bool
	}{
		{"B alone, `reverse_http` FIFO", fifoSite, false},
		{"`reverse_http` FIFO, A flooding", fifoSite, true},
		{"`reverse_http` `fair_by {http.request.header.X-Tenant}`, A flooding", fairSite, true},
	}
	if ha != nil {
		runs = append(runs, struct {
			name  string
			base  string
			flood bool
		}{"HAProxy `leastconn`, `maxconn 1` per server (FIFO), A flooding", haSite, true})
	}
	var alone, fifoRate float64
	for _, r := range runs {
		var fl []traceJob
		if r.flood {
			fl = flood
		}
		res := floodRun("http://"+r.base, victim, tenant("b"), fl, tenant("a"))
		p99 := percentile(res.victim, 99)
		if !r.flood {
			alone = float64(p99)
		}
		if strings.Contains(r.name, "FIFO, A") && strings.HasPrefix(r.name, "`reverse_http`") {
			fifoRate = res.rate()
		}
		vsFIFO := "–"
		if r.flood && fifoRate > 0 {
			vsFIFO = ratio(res.rate(), fifoRate)
		}
		fair.add(r.name, ms(percentile(res.victim, 50)), ms(p99), ratio(float64(p99), alone), count(res.vErrors),
			fmt.Sprintf("%.0f", res.rate()), vsFIFO)
	}
	if haNote != "" {
		fair.notes = append(fair.notes, haNote)
	}
	fair.notes = append(fair.notes, "HAProxy has no per-tenant fair queuing; its row is the FIFO it offers.")

	// 6b. Priorities.
	prio := &table{
		title:  "6b. Priority classes: interactive requests at 20% of capacity under a batch flood",
		intro:  intro("Interactive requests (`X-Priority: 10`)", "Batch requests (no priority header)"),
		header: []string{"system", "interactive p50 ms", "interactive p99 ms", "p99 vs alone", "failed", "throughput jobs/s"},
	}
	inter := http.Header{"X-Priority": {"10"}}
	pruns := []struct {
		name  string
		base  string
		flood bool
	}{
		{"interactive alone, `reverse_http`", prioSite, false},
		{"`reverse_http` FIFO, batch flooding", fifoSite, true},
		{"`reverse_http` `priority {http.request.header.X-Priority}`, batch flooding", prioSite, true},
	}
	if ha != nil {
		pruns = append(pruns, struct {
			name  string
			base  string
			flood bool
		}{"HAProxy FIFO, batch flooding", haSite, true})
	}
	if haPrio != nil {
		pruns = append(pruns, struct {
			name  string
			base  string
			flood bool
		}{"HAProxy `set-priority-class int(-10)` for interactive, batch flooding", haPrioSite, true})
	}
	alone = 0
	for _, r := range pruns {
		var fl []traceJob
		if r.flood {
			fl = flood
		}
		res := floodRun("http://"+r.base, victim, inter, fl, http.Header{})
		p99 := percentile(res.victim, 99)
		if !r.flood {
			alone = float64(p99)
		}
		prio.add(r.name, ms(percentile(res.victim, 50)), ms(p99), ratio(float64(p99), alone), count(res.vErrors),
			fmt.Sprintf("%.0f", res.rate()))
	}
	return []*table{fair, prio}, nil
}

// floodResult is what one run of a modest consumer beside a flood measured.
type floodResult struct {
	victim  []time.Duration // the modest consumer's times in system, sorted
	vErrors int
	done    int // jobs of both completed within the window
	window  time.Duration
}

func (r floodResult) rate() float64 { return float64(r.done) / r.window.Seconds() }

// floodRun sends the victim's trace with vh and, at once, the flood's with
// fh (none if flood is empty), both open loop. The flood stops at the end
// of the victim's trace; its requests still in flight once the victim's
// have all ended are cancelled.
func floodRun(base string, victim []traceJob, vh http.Header, flood []traceJob, fh http.Header) floodResult {
	c := newClient(floodInFlight + 2048)
	defer c.CloseIdleConnections()
	window := victim[len(victim)-1].at
	res := floodResult{window: window}
	var done atomic.Int64
	floodCtx, cancelFlood := context.WithCancel(context.Background())
	start := time.Now()
	end := start.Add(window)
	send := func(ctx context.Context, j traceJob, h http.Header, due time.Time) (time.Duration, bool) {
		req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/job?ms=%g", base, j.ms), nil)
		for k, v := range h {
			req.Header[k] = v
		}
		_, err := fetch(c, req)
		if err != nil {
			return 0, false
		}
		if time.Now().Before(end) {
			done.Add(1)
		}
		return time.Since(due), true
	}
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		var inFlight atomic.Int64
		for _, j := range flood {
			due := start.Add(j.at)
			if due.After(end) {
				return
			}
			time.Sleep(time.Until(due))
			if inFlight.Load() >= floodInFlight {
				continue
			}
			inFlight.Add(1)
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				defer inFlight.Add(-1)
				send(floodCtx, j, fh, due)
			}()
		}
	}()
	soj := make([]time.Duration, len(victim))
	ok := make([]bool, len(victim))
	var vwg sync.WaitGroup
	for i, j := range victim {
		due := start.Add(j.at)
		time.Sleep(time.Until(due))
		vwg.Add(1)
		go func() {
			defer vwg.Done()
			soj[i], ok[i] = send(context.Background(), j, vh, due)
		}()
	}
	vwg.Wait()
	cancelFlood()
	fwg.Wait()
	for i := range victim {
		if ok[i] {
			res.victim = append(res.victim, soj[i])
		} else {
			res.vErrors++
		}
	}
	res.victim = sorted(res.victim)
	res.done = int(done.Load())
	return res
}

// Scenario 6c: Retry-After. A burst of consumers, each wanting one job
// done, finds a short queue full; those refused retry after the
// Retry-After the 503 gives, or after one second whatever it says.
const (
	retryShortMS  = 200.0
	retryLongMS   = 2000.0
	retryMaxQueue = 40
)

func retryAfterScenario(e *env, o *options) (*table, error) {
	consumers := 400
	if o.quick {
		consumers = 100
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	hub, site := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	caddy, err := e.startCaddy("retry-caddy", fmt.Sprintf(`
	reverse_http {
		pool retry {
			listen %[1]s
			token %[2]s
			max_queue %[4]d
			queue_timeout 5m
		}
	}
}

http://%[3]s {
	bind 127.0.0.1
	reverse_http retry
}
`, hub, benchToken, site, retryMaxQueue), site, hub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)
	for i := range workers {
		p, err := e.serve(fmt.Sprintf("retry-worker%d", i), "--hub", hub, "--pool", "retry",
			"--token", benchToken, "--slots", "1")
		if err != nil {
			return nil, err
		}
		defer p.stop(10 * time.Second)
	}
	time.Sleep(500 * time.Millisecond)
	rng := rand.New(rand.NewPCG(o.seed, 7))
	jobs := make([]float64, consumers)
	for i := range jobs {
		jobs[i] = retryShortMS
		if rng.Float64() < 0.1 {
			jobs[i] = retryLongMS
		}
	}
	// A few jobs first, so that the pool has observed service times.
	c := newClient(consumers + 16)
	defer c.CloseIdleConnections()
	for range 2 * workers {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/job?ms=%g", site, retryShortMS), nil)
		fetch(c, req)
	}
	t := &table{
		title: "6c. Retry-After: consumers that obey it against ones that retry after 1 s",
		intro: fmt.Sprintf("%d consumers arrive within 100 ms, each wanting one job done (90%% %g ms, 10%% %g ms; seed %d); %d workers of one slot; `max_queue %d`. "+
			"A consumer refused with 503 retries after the Retry-After it was given, or after 1 s; time to success = from its first attempt to the end of its response.",
			consumers, retryShortMS, retryLongMS, o.seed, workers, retryMaxQueue),
		header: []string{"consumers", "503s (retries refused again)", "503s per consumer, max", "Retry-After given, median s", "time to success p50 s", "p99 s", "last done s"},
	}
	for _, obey := range []bool{true, false} {
		var refused, maxRefused atomic.Int64
		var mu sync.Mutex
		var times []time.Duration
		var advised []int
		var wg sync.WaitGroup
		start := time.Now()
		for i, ms := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(i) * 100 * time.Millisecond / time.Duration(consumers))
				t0 := time.Now()
				n := int64(0)
				for {
					req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/job?ms=%g", site, ms), nil)
					status, h, _ := fetchHeader(c, req)
					if status == http.StatusOK {
						break
					}
					n++
					wait := time.Second
					ra, _ := strconv.Atoi(h.Get("Retry-After"))
					mu.Lock()
					advised = append(advised, ra)
					mu.Unlock()
					if obey && ra > 0 {
						wait = time.Duration(ra) * time.Second
					}
					time.Sleep(wait)
				}
				refused.Add(n)
				for m := maxRefused.Load(); n > m && !maxRefused.CompareAndSwap(m, n); m = maxRefused.Load() {
				}
				mu.Lock()
				times = append(times, time.Since(t0))
				mu.Unlock()
			}()
		}
		wg.Wait()
		last := time.Since(start)
		times = sorted(times)
		slices.Sort(advised)
		med := "–"
		if len(advised) > 0 {
			med = fmt.Sprint(advised[len(advised)/2])
		}
		who := "obey Retry-After"
		if !obey {
			who = "retry after 1 s"
		}
		t.add(who, count(int(refused.Load())), fmt.Sprint(maxRefused.Load()), med,
			fmt.Sprintf("%.1f", percentile(times, 50).Seconds()), fmt.Sprintf("%.1f", percentile(times, 99).Seconds()),
			fmt.Sprintf("%.1f", last.Seconds()))
	}
	t.notes = append(t.notes, "The first attempts' 503s count too: each consumer refused at first has one 503 before any retry.")
	return t, nil
}
