package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Scenario 2: scheduling quality. Eight single-slot workers, heavy-tailed
// job durations, Poisson arrivals from a fixed seed; the time each job
// spends in the system, from its arrival to the end of its response.
const (
	shortMS = 5.0
	longMS  = 100.0
	workers = 8
)

// schedVariant is one set of workers for the scheduling scenario.
type schedVariant struct {
	key, title string
	speeds     []float64 // per worker: 1 normal, 2 twice as slow
	util       float64
	joinLeave  bool
}

// schedSystem is one way of putting a queue in front of the workers.
type schedSystem struct {
	name  string
	short string // for the plot's legend
	base  string // where the generator sends jobs
	// Join and leave: the static systems cannot add the new worker; the
	// leaving worker is told to leave either way.
	dynamic bool
}

type schedOutcome struct {
	name    string
	short   string
	late    time.Duration   // how late the generator sent a job, at worst
	sojourn []time.Duration // sorted
	errors  int
	status  map[int]int
	ideal   bool
}

func scheduling(e *env, o *options) ([]*table, error) {
	equal := make([]float64, workers)
	unequal := make([]float64, workers)
	for i := range workers {
		equal[i] = 1
		unequal[i] = 1
		if i%2 == 1 {
			unequal[i] = 2
		}
	}
	variants := []schedVariant{
		{key: "70", title: "2a. Scheduling, equal workers, 70% utilisation", speeds: equal, util: 0.7},
		{key: "90", title: "2b. Scheduling, equal workers, 90% utilisation", speeds: equal, util: 0.9},
		{key: "unequal", title: "2c. Scheduling, unequal workers (half twice as slow), 90% utilisation", speeds: unequal, util: 0.9},
		{key: "joinleave", title: "2d. Scheduling, a worker joins at 1/3 of the run and one leaves at 1/2, 90% utilisation", speeds: equal, util: 0.9, joinLeave: true},
	}
	var tables []*table
	for _, v := range variants {
		t, outcomes, err := runVariant(e, o, v)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", v.key, err)
		}
		tables = append(tables, t)
		if err := plotVariant(o, v, outcomes); err != nil {
			return nil, err
		}
	}
	return tables, nil
}

func runVariant(e *env, o *options, v schedVariant) (*table, []schedOutcome, error) {
	capacity := 0.0 // jobs per second the workers can do
	for _, s := range v.speeds {
		capacity += 1000 / (meanMS(shortMS, longMS) * s)
	}
	rate := v.util * capacity
	jobs := makeTrace(o.seed, o.schedJobs, rate, shortMS, longMS)
	span := jobs[len(jobs)-1].at

	ports, err := freePorts(workers + 7)
	if err != nil {
		return nil, nil, err
	}
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	backends := make([]string, workers)
	for i := range backends {
		backends[i] = addr(i)
	}
	hub := addr(workers)
	rhSite, rrSite, lcSite, lcmSite, haSite := addr(workers+1), addr(workers+2), addr(workers+3), addr(workers+4), addr(workers+5)
	binSite := addr(workers + 6)
	// Worker binaries, each forwarding to one backend, as a deployment
	// whose app is not written in Go runs; not in the join-and-leave
	// variant, whose joining worker has no backend of its own.
	withBinaries := !v.joinLeave

	// The backends for reverse_proxy and HAProxy: plain HTTP servers that
	// run one job at a time; a job pushed to a busy one waits inside it.
	backendProcs := make([]*proc, workers)
	startBackend := func(i int) error {
		p, err := e.serve(fmt.Sprintf("sched-%s-backend%d", v.key, i), "--listen", backends[i], "--serial",
			"--speed", fmt.Sprint(v.speeds[i]))
		backendProcs[i] = p
		return err
	}
	for i := range workers {
		if err := startBackend(i); err != nil {
			return nil, nil, err
		}
	}
	defer func() {
		for _, p := range backendProcs {
			if p != nil {
				p.stop(10 * time.Second)
			}
		}
	}()

	upstreams := strings.Join(backends, " ")
	caddy, err := e.startCaddy("sched-"+v.key+"-caddy", fmt.Sprintf(`
	reverse_http {
		pool sched {
			listen %[1]s
			token %[2]s
			max_queue 100000
			queue_timeout 5m
		}
		pool schedbin {
			listen %[1]s
			token %[2]s
			max_queue 100000
			queue_timeout 5m
		}
	}
}

http://%[8]s {
	bind 127.0.0.1
	reverse_http schedbin
}

http://%[3]s {
	bind 127.0.0.1
	reverse_http sched
}
http://%[4]s {
	bind 127.0.0.1
	reverse_proxy %[7]s {
		lb_policy round_robin
	}
}
http://%[5]s {
	bind 127.0.0.1
	reverse_proxy %[7]s {
		lb_policy least_conn
	}
}
http://%[6]s {
	bind 127.0.0.1
	reverse_proxy %[7]s {
		lb_policy least_conn
		unhealthy_request_count 1
		lb_try_duration 5m
		lb_try_interval 5ms
	}
}
`, hub, benchToken, rhSite, rrSite, lcSite, lcmSite, upstreams, binSite), rhSite, rrSite, lcSite, lcmSite, binSite, hub)
	if err != nil {
		return nil, nil, err
	}
	defer caddy.stop(10 * time.Second)

	haConfig := fmt.Sprintf(`global
	maxconn 8000
defaults
	mode http
	timeout connect 5s
	timeout client 5m
	timeout server 5m
	timeout queue 5m
	option redispatch
	retries 3
frontend fe
	bind %s
	default_backend workers
backend workers
	balance leastconn
`, haSite)
	for i, b := range backends {
		haConfig += fmt.Sprintf("\tserver w%d %s maxconn 1 check inter 250ms\n", i+1, b)
	}
	ha, err := e.startHAProxy(haConfig, haSite)
	haNote := ""
	if err != nil {
		haNote = fmt.Sprintf("HAProxy did not run (%v); install the Debian package haproxy.", err)
	} else {
		defer ha.stop(10 * time.Second)
	}

	// The reverse_http workers: the same handler, served by the worker
	// package with one slot each.
	workerProcs := make([]*proc, workers+1)
	startWorker := func(i int, speed float64) error {
		p, err := e.serve(fmt.Sprintf("sched-%s-worker%d", v.key, i), "--hub", hub, "--pool", "sched",
			"--token", benchToken, "--slots", "1", "--speed", fmt.Sprint(speed))
		workerProcs[i] = p
		return err
	}
	for i := range workers {
		if err := startWorker(i, v.speeds[i]); err != nil {
			return nil, nil, err
		}
	}
	defer func() {
		for _, p := range workerProcs {
			if p != nil {
				p.stop(10 * time.Second)
			}
		}
	}()

	if withBinaries {
		binProcs := make([]*proc, workers)
		defer func() {
			for _, p := range binProcs {
				if p != nil {
					p.stop(10 * time.Second)
				}
			}
		}()
		for i := range workers {
			p, err := e.start(fmt.Sprintf("sched-%s-binary%d", v.key, i), false, e.worker, "--hub", hub, "--pool", "schedbin",
				"--token", benchToken, "--slots", "1", "--upstream", "http://"+backends[i], "--name", fmt.Sprintf("bin%d", i), "--log-level", "error")
			if err != nil {
				return nil, nil, err
			}
			binProcs[i] = p
		}
		// They connect on their own time.
		if err := e.waitConnections("schedbin", workers); err != nil {
			return nil, nil, fmt.Errorf("worker binaries: %v", err)
		}
	}

	systems := []schedSystem{
		{name: "`reverse_http`, worker package in the app", short: "reverse_http", base: "http://" + rhSite, dynamic: true},
	}
	if withBinaries {
		systems = append(systems, schedSystem{name: "`reverse_http` → worker binaries → app", short: "reverse_http, worker binaries", base: "http://" + binSite})
	}
	if ha != nil {
		systems = append(systems, schedSystem{name: "HAProxy `leastconn`, `maxconn 1` per server", short: "HAProxy maxconn 1", base: "http://" + haSite})
	}
	systems = append(systems,
		schedSystem{name: "`reverse_proxy` `round_robin`", short: "reverse_proxy round_robin", base: "http://" + rrSite},
		schedSystem{name: "`reverse_proxy` `least_conn`", short: "reverse_proxy least_conn", base: "http://" + lcSite},
		schedSystem{name: "`reverse_proxy` `least_conn`, `unhealthy_request_count 1`, `lb_try_duration`", short: "reverse_proxy lc, max 1", base: "http://" + lcmSite},
	)

	// The ideal: the same trace through a perfect FCFS queue.
	servers := make([]server, 0, workers+1)
	for _, s := range v.speeds {
		servers = append(servers, server{speed: s})
	}
	joinAt, leaveAt := span/3, span/2
	if v.joinLeave {
		servers[workers-1].till = leaveAt
		servers = append(servers, server{speed: 1, from: joinAt})
	}
	outcomes := []schedOutcome{{name: "ideal FCFS queue (computed)", short: "ideal FCFS queue", sojourn: sorted(idealFCFS(jobs, servers)), ideal: true}}

	var overrun time.Duration
	for _, s := range systems {
		var events []timedEvent
		if v.joinLeave {
			leaver := workers - 1
			if s.dynamic {
				events = []timedEvent{
					{at: joinAt, do: func() {
						if err := startWorker(workers, 1); err != nil {
							fmt.Println("bench: joining worker:", err)
						}
					}},
					{at: leaveAt, do: func() { workerProcs[leaver].stop(30 * time.Second) }},
				}
			} else {
				events = []timedEvent{
					{at: leaveAt, do: func() { backendProcs[leaver].stop(30 * time.Second) }},
				}
			}
		}
		r := openLoop(s.base, jobs, events)
		if s.dynamic {
			// The same trace with the service times reverse_http's
			// workers measured: the ideal queue on this machine's timers.
			measured := slices.Clone(jobs)
			var overruns []time.Duration
			for i := range measured {
				measured[i].overrun = r.overrun[i]
				overruns = append(overruns, r.overrun[i])
			}
			outcomes = slices.Insert(outcomes, 1, schedOutcome{name: "ideal FCFS queue, on the service times measured in the `reverse_http` run",
				short: "ideal, measured service times", sojourn: sorted(idealFCFS(measured, servers)), ideal: true})
			overrun = percentile(sorted(overruns), 50)
		}
		outcomes = append(outcomes, schedOutcome{name: s.name, short: s.short, sojourn: sorted(r.sojourn), errors: r.errors, status: r.status, late: r.late})
		if v.joinLeave {
			// Put things back as they were for the next system.
			if s.dynamic {
				workerProcs[workers].stop(10 * time.Second)
				workerProcs[workers] = nil
				if err := startWorker(workers-1, 1); err != nil {
					return nil, nil, err
				}
			} else {
				backendProcs[workers-1].stop(10 * time.Second)
				if err := startBackend(workers - 1); err != nil {
					return nil, nil, err
				}
				// Let HAProxy's health check see it again.
				time.Sleep(time.Second)
			}
		}
	}

	t := &table{
		title: v.title,
		intro: fmt.Sprintf("%s jobs, Poisson arrivals at %.0f/s (seed %d) over %.1f s; 90%% of jobs take %g ms and 10%% %g ms on a normal worker (sleeps), so the mean is %g ms; "+
			"%d workers, each running one job at a time (speeds %s). Time in system = from the job's scheduled arrival to the end of its response, for jobs that succeeded.",
			count(len(jobs)), rate, o.seed, span.Seconds(), shortMS, longMS, meanMS(shortMS, longMS), workers, speedsText(v.speeds)),
		header: []string{"system", "p50 ms", "p99 ms", "max ms", "failed", "p99 vs ideal", "p99 vs HAProxy"},
	}
	if v.joinLeave {
		t.intro += fmt.Sprintf(" At %.1f s a ninth worker starts; at %.1f s worker 8 is told to leave (SIGTERM: it finishes what it holds). "+
			"reverse_proxy and HAProxy list the eight first workers' addresses; the ninth is not in their lists, as a worker that dials in from an address unknown in advance would not be.",
			joinAt.Seconds(), leaveAt.Seconds())
	}
	if haNote != "" {
		t.notes = append(t.notes, haNote)
	}
	var late time.Duration
	for _, oc := range outcomes {
		late = max(late, oc.late)
	}
	t.notes = append(t.notes, fmt.Sprintf("The generator sent every job within %s ms of its scheduled arrival. "+
		"A job's sleep overran by %s ms at the median (timers on a busy machine), which the second ideal row takes into account. "+
		"reverse_proxy's `lb_try_interval` is 5 ms (its default, 250 ms, would poll far more slowly).", ms(late), ms(overrun)))
	ideal := outcomes[0]
	var haP99 time.Duration
	for _, oc := range outcomes {
		if strings.HasPrefix(oc.name, "HAProxy") {
			haP99 = percentile(oc.sojourn, 99)
		}
	}
	for _, oc := range outcomes {
		p99 := percentile(oc.sojourn, 99)
		failed := "–"
		if !oc.ideal {
			failed = count(oc.errors)
			if oc.errors > 0 {
				failed += " (" + statusText(oc.status) + ")"
			}
		}
		vsHA := "–"
		if haP99 > 0 {
			vsHA = ratio(float64(p99), float64(haP99))
		}
		t.add(oc.name, ms(percentile(oc.sojourn, 50)), ms(p99), ms(percentile(oc.sojourn, 100)), failed,
			ratio(float64(p99), float64(percentile(ideal.sojourn, 99))), vsHA)
	}
	return t, outcomes, nil
}

func speedsText(s []float64) string {
	var parts []string
	for _, v := range s {
		parts = append(parts, fmt.Sprint(v))
	}
	return strings.Join(parts, ", ")
}

func statusText(m map[int]int) string {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := fmt.Sprint(k)
		if k == 0 {
			name = "transport error"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, m[k]))
	}
	return strings.Join(parts, ", ")
}
