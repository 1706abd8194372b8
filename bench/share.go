package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sharing is scenario 6: coalescing identical jobs and caching results,
// against the same route without them, in one Caddy with one app.
func sharing(e *env, o *options) ([]*table, error) {
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	app := fmt.Sprintf("127.0.0.1:%d", ports[0])
	hub := fmt.Sprintf("127.0.0.1:%d", ports[1])
	plain := fmt.Sprintf("127.0.0.1:%d", ports[2])
	coal := fmt.Sprintf("127.0.0.1:%d", ports[3])
	cached := fmt.Sprintf("127.0.0.1:%d", ports[4])
	caddy, err := e.startCaddy("share-caddy", fmt.Sprintf(`
	reverse_http {
		pool share {
			listen %[1]s
			token %[2]s
			max_queue 10000
		}
	}
}

http://%[3]s {
	bind 127.0.0.1
	reverse_http share
}
http://%[4]s {
	bind 127.0.0.1
	reverse_http share {
		coalesce
	}
}
http://%[5]s {
	bind 127.0.0.1
	reverse_http share {
		cache 1h
		coalesce
	}
}
`, hub, benchToken, plain, coal, cached), plain, coal, cached, hub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)
	const slots = 8
	appProc, err := e.serve("share-app", "--listen", app, "--hub", hub, "--pool", "share", "--token", benchToken,
		"--slots", strconv.Itoa(slots))
	if err != nil {
		return nil, err
	}
	defer appProc.stop(10 * time.Second)
	for _, site := range []string{plain, coal, cached} {
		if err := warm("http://" + site + "/tiny"); err != nil {
			return nil, err
		}
	}
	jobs := func() (int, error) {
		resp, err := http.Get("http://" + app + "/jobs")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strconv.Atoi(strings.TrimSpace(string(b)))
	}
	// Each run's keys are its own, so that no run finds another's results.
	nonce := time.Now().UnixNano()

	// (a) A burst of identical requests.
	const burst, jobMS = 100, 200
	rounds := 3
	if o.quick {
		rounds = 1
	}
	ta := &table{
		title: "6a. Coalescing: a burst of identical requests",
		intro: fmt.Sprintf("%d identical GETs of a %d ms job sent at once, %d slots; the median of %d rounds, each with a URI of its own.",
			burst, jobMS, slots, rounds),
		header: []string{"route", "jobs run", "time to the last response ms", "vs without"},
	}
	var base time.Duration
	for _, s := range []struct{ name, site string }{
		{"`reverse_http` without coalescing", plain},
		{"`reverse_http` with `coalesce`", coal},
	} {
		var lasts []time.Duration
		ran := 0
		for round := range rounds {
			before, err := jobs()
			if err != nil {
				return nil, err
			}
			url := fmt.Sprintf("http://%s/job?ms=%d&burst=%d-%d", s.site, jobMS, nonce, round)
			last, err := burstOf(url, burst)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", s.name, err)
			}
			after, err := jobs()
			if err != nil {
				return nil, err
			}
			ran += after - before
			lasts = append(lasts, last)
		}
		last := percentile(sorted(lasts), 50)
		if base == 0 {
			base = last
		}
		ta.add(s.name, fmt.Sprintf("%.0f", float64(ran)/float64(rounds)), ms(last), ratio(float64(last), float64(base)))
	}

	// (b) Hits against jobs: the 1 KiB response of scenario 1.
	tb := &table{
		title: "6b. Cache: a hit against a job",
		intro: fmt.Sprintf("GET of the 1 KiB response of scenario 1, %d clients in a closed loop for %v, after a %v warm-up; with `cache` every request but the first is a hit from the file system storage.",
			o.conc, o.tinyRun, o.tinyWarm),
		header: []string{"route", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs a job", "p50 vs a job"},
	}
	var job closedResult
	for i, s := range []struct{ name, url string }{
		{"`reverse_http`, a job each", "http://" + plain + "/tiny"},
		{"`reverse_http` with `cache`, a hit each", "http://" + cached + fmt.Sprintf("/tiny?n=%d", nonce)},
	} {
		closedLoop(s.url, o.conc, o.tinyWarm)
		r := closedLoop(s.url, o.conc, o.tinyRun)
		if i == 0 {
			job = r
		}
		l, jl := sorted(r.lat), sorted(job.lat)
		tb.add(s.name, fmt.Sprintf("%.0f", r.rate()), ms(percentile(l, 50)), ms(percentile(l, 99)), count(r.errors),
			ratio(r.rate(), job.rate()), ratio(float64(percentile(l, 50)), float64(percentile(jl, 50))))
		if r.firstErr != nil {
			tb.notes = append(tb.notes, fmt.Sprintf("%s: first error: %v", s.name, r.firstErr))
		}
	}

	// (c) A trace with repeats.
	n, keys, traceMS, clients := 3000, 600, 10, 16
	if o.quick {
		n, keys = 600, 120
	}
	trace := zipfTrace(o.seed, n, keys)
	distinct := map[int]bool{}
	for _, k := range trace {
		distinct[k] = true
	}
	tc := &table{
		title: "6c. Cache: hit rate on a trace with repeats",
		intro: fmt.Sprintf("%d GETs of %d ms jobs over %d keys drawn from a Zipf distribution (s = 1.1; %d distinct keys drawn), %d clients in a closed loop, %d slots. "+
			"The best hit rate is 1 − distinct/requests = %.1f%%.",
			n, traceMS, keys, len(distinct), clients, slots, 100*(1-float64(len(distinct))/float64(n))),
		header: []string{"route", "jobs run", "hits", "hit rate", "time for the trace s", "vs without"},
	}
	var plainTime time.Duration
	for i, s := range []struct{ name, site string }{
		{"`reverse_http` without a cache", plain},
		{"`reverse_http` with `cache` and `coalesce`", cached},
	} {
		before, err := jobs()
		if err != nil {
			return nil, err
		}
		hits, took, err := replayKeys(fmt.Sprintf("http://%s/job?ms=%d&n=%d&k=", s.site, traceMS, nonce), trace, clients)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", s.name, err)
		}
		after, err := jobs()
		if err != nil {
			return nil, err
		}
		if i == 0 {
			plainTime = took
		}
		tc.add(s.name, fmt.Sprint(after-before), fmt.Sprint(hits), fmt.Sprintf("%.1f%%", 100*float64(hits)/float64(n)),
			fmt.Sprintf("%.2f", took.Seconds()), ratio(took.Seconds(), plainTime.Seconds()))
	}
	return []*table{ta, tb, tc}, nil
}

// burstOf sends n GETs of url at once and returns the time until the last
// response has been read.
func burstOf(url string, n int) (time.Duration, error) {
	c := newClient(n)
	defer c.CloseIdleConnections()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", url, nil)
			if _, err := fetch(c, req); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	return took, <-errs
}

// zipfTrace draws n keys in [0, keys) with a Zipf distribution.
func zipfTrace(seed uint64, n, keys int) []int {
	rng := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	z := rand.NewZipf(rng, 1.1, 1, uint64(keys-1))
	out := make([]int, n)
	for i := range out {
		out[i] = int(z.Uint64())
	}
	return out
}

// replayKeys sends a GET of prefix+key for each key of trace with clients
// in a closed loop, and counts the responses the cache answered.
func replayKeys(prefix string, trace []int, clients int) (int, time.Duration, error) {
	c := newClient(clients)
	defer c.CloseIdleConnections()
	var mu sync.Mutex
	next, hits := 0, 0
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == len(trace) {
					mu.Unlock()
					return
				}
				k := trace[next]
				next++
				mu.Unlock()
				req, _ := http.NewRequest("GET", prefix+strconv.Itoa(k), nil)
				_, h, err := fetchHeader(c, req)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil && strings.Contains(h.Get("Cache-Status"), "; hit") {
					hits++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return hits, time.Since(start), firstErr
}
