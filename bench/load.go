package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// newClient is the load generator's HTTP client: keep-alive, enough idle
// connections for every concurrent request, no compression.
func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
	}}
}

// fetch runs one request and reads the body to its end.
func fetch(c *http.Client, req *http.Request) (int, error) {
	status, _, err := fetchHeader(c, req)
	return status, err
}

// fetchHeader is fetch that also returns the response's header.
func fetchHeader(c *http.Client, req *http.Request) (int, http.Header, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return resp.StatusCode, resp.Header, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, resp.Header, fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.StatusCode, resp.Header, nil
}

// closedResult is what a closed-loop run measured.
type closedResult struct {
	requests int
	errors   int
	firstErr error
	elapsed  time.Duration
	lat      []time.Duration
}

func (r closedResult) rate() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// closedLoop keeps conc requests in flight for d: each client sends its
// next request when the previous one is answered.
func closedLoop(url string, conc int, d time.Duration) closedResult {
	return pacedLoop(url, conc, 0, d)
}

// pacedLoop is closedLoop with the requests spread out at rate per second
// (0: as fast as answered): the k-th request goes no sooner than k/rate
// after the start, with at most conc in flight.
func pacedLoop(url string, conc int, rate float64, d time.Duration) closedResult {
	c := newClient(conc)
	defer c.CloseIdleConnections()
	var mu sync.Mutex
	var res closedResult
	start := time.Now()
	end := start.Add(d)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			errs := 0
			var firstErr error
			for {
				if rate > 0 {
					due := start.Add(time.Duration(float64(next.Add(1)-1) / rate * float64(time.Second)))
					if due.After(end) {
						break
					}
					time.Sleep(time.Until(due))
				}
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				req, _ := http.NewRequest("GET", url, nil)
				_, err := fetch(c, req)
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.errors += errs
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.requests = len(res.lat)
	return res
}

// traceJob is one job of an open-loop trace: when it arrives (from the
// start of the run) and how long it takes on a worker of speed 1.
type traceJob struct {
	at time.Duration
	ms float64
	// overrun is how much longer than ms × speed the job took when it
	// ran: zero in a drawn trace, measured in a replayed one.
	overrun time.Duration
}

// makeTrace draws n jobs with Poisson arrivals at rate per second; 90% of
// jobs take shortMS and 10% longMS. The seed fixes the trace.
func makeTrace(seed uint64, n int, rate, shortMS, longMS float64) []traceJob {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	jobs := make([]traceJob, n)
	var t float64 // seconds
	for i := range jobs {
		t += rng.ExpFloat64() / rate
		ms := shortMS
		if rng.Float64() < 0.1 {
			ms = longMS
		}
		jobs[i] = traceJob{at: time.Duration(t * float64(time.Second)), ms: ms}
	}
	return jobs
}

// meanMS is the mean job duration of the 90/10 mix.
func meanMS(shortMS, longMS float64) float64 { return 0.9*shortMS + 0.1*longMS }

// openResult is what an open-loop run measured: each job's time in system,
// from its scheduled arrival to the end of its response.
type openResult struct {
	sojourn []time.Duration // of the jobs that succeeded, in trace order
	overrun []time.Duration // per job of the trace, as its worker measured it
	errors  int
	status  map[int]int // failed jobs by status (0: transport error)
	late    time.Duration
}

// openLoop sends each job of the trace at its time, whatever happened to
// the ones before it, so a slow system cannot slow the arrivals down.
// events run at their offsets from the start, for workers joining and
// leaving.
func openLoop(base string, jobs []traceJob, events []timedEvent) openResult {
	c := newClient(2048)
	defer c.CloseIdleConnections()
	res := openResult{status: map[int]int{}}
	soj := make([]time.Duration, len(jobs))
	ok := make([]bool, len(jobs))
	res.overrun = make([]time.Duration, len(jobs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	var maxLate time.Duration // only this loop writes it
	start := time.Now()
	for _, ev := range events {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(start.Add(ev.at)))
			ev.do()
		}()
	}
	for i, j := range jobs {
		due := start.Add(j.at)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		maxLate = max(maxLate, time.Since(due))
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", fmt.Sprintf("%s/job?ms=%g&n=%d", base, j.ms, i), nil)
			status, h, err := fetchHeader(c, req)
			if us, perr := strconv.ParseInt(h.Get(overrunHeader), 10, 64); perr == nil {
				res.overrun[i] = time.Duration(us) * time.Microsecond
			}
			if err != nil {
				mu.Lock()
				res.errors++
				res.status[status]++
				mu.Unlock()
				return
			}
			soj[i] = time.Since(due)
			ok[i] = true
		}()
	}
	wg.Wait()
	for i := range jobs {
		if ok[i] {
			res.sojourn = append(res.sojourn, soj[i])
		}
	}
	res.late = maxLate
	return res
}

// timedEvent is something done at an offset into an open-loop run.
type timedEvent struct {
	at time.Duration
	do func()
}

// percentile returns the p-th percentile (0..100) of sorted durations,
// nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func sorted(d []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// server is one worker of the ideal queue: its speed factor and the
// window in which it takes jobs.
type server struct {
	speed      float64
	from, till time.Duration // till 0: never leaves
}

// idealFCFS computes each job's time in system for a perfect
// first-come-first-served queue in front of the servers: jobs start in
// arrival order, each on the server that can start it first (the faster
// one on a tie), with no overhead at all. A server takes no job after it
// leaves.
func idealFCFS(jobs []traceJob, servers []server) []time.Duration {
	free := make([]time.Duration, len(servers))
	for i, s := range servers {
		free[i] = s.from
	}
	out := make([]time.Duration, len(jobs))
	for i, j := range jobs {
		best, bestStart := -1, time.Duration(0)
		for k, s := range servers {
			start := max(j.at, free[k])
			if s.till > 0 && start >= s.till {
				continue
			}
			if best < 0 || start < bestStart || (start == bestStart && s.speed < servers[best].speed) {
				best, bestStart = k, start
			}
		}
		d := time.Duration(j.ms*servers[best].speed*float64(time.Millisecond)) + j.overrun
		free[best] = bestStart + d
		out[i] = bestStart + d - j.at
	}
	return out
}
