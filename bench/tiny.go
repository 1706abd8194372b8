package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"time"
)

// benchToken is the pools' bearer token in every scenario.
const benchToken = "bench-token"

// tinySystem is one path to the tiny-job app: where the generator sends
// requests and the processes whose CPU time each request costs.
type tinySystem struct {
	key, name, url string
	proxy          *proc // Caddy or HAProxy; nil when direct
	worker         *proc // the worker binary; nil where the worker is in the app
	app            *proc // the app (with the worker package in it, for c and e)
	res            closedResult
	cpu            [3]time.Duration // proxy, worker, app over the timed rounds
	seq            []time.Duration  // sequential 5 ms jobs
	seqCPU         time.Duration    // the proxy's or hub's CPU time over them
}

// tinyJobs is scenario 1: 1 KiB responses, no work, 64 concurrent clients,
// through six paths to the same handler code, interleaved round by round,
// with the CPU time each process spends per request; then 5 ms jobs one
// at a time through each path, for the overhead a job pays on its own.
func tinyJobs(e *env, o *options) ([]*table, error) {
	ports, err := freePorts(11)
	if err != nil {
		return nil, err
	}
	app := fmt.Sprintf("127.0.0.1:%d", ports[0])
	rp := fmt.Sprintf("127.0.0.1:%d", ports[1])
	rh := fmt.Sprintf("127.0.0.1:%d", ports[2])
	rhBin := fmt.Sprintf("127.0.0.1:%d", ports[3])
	pot := fmt.Sprintf("127.0.0.1:%d", ports[4])
	ptthHub := fmt.Sprintf("127.0.0.1:%d", ports[5])
	potHub := fmt.Sprintf("127.0.0.1:%d", ports[6])
	haSite := fmt.Sprintf("127.0.0.1:%d", ports[7])
	rhUnix := fmt.Sprintf("127.0.0.1:%d", ports[8])
	wzHub := fmt.Sprintf("127.0.0.1:%d", ports[9])
	wz := fmt.Sprintf("127.0.0.1:%d", ports[10])
	appSock := filepath.Join(e.dir, "tiny-app.sock")

	caddy, err := e.startCaddy("tiny-caddy", fmt.Sprintf(`
	reverse_http {
		pool tiny {
			listen %[1]s
			token %[2]s
		}
		pool tinybin {
			listen %[1]s
			token %[2]s
		}
		pool tinypot {
			listen %[3]s
			protocol pothead
		}
		pool tinyunix {
			listen %[1]s
			token %[2]s
		}
		pool tinywz {
			listen %[10]s
			protocol pothead
		}
	}
}

http://%[11]s {
	bind 127.0.0.1
	reverse_http tinywz
}

http://%[9]s {
	bind 127.0.0.1
	reverse_http tinyunix
}

http://%[4]s {
	bind 127.0.0.1
	reverse_proxy %[5]s
}
http://%[6]s {
	bind 127.0.0.1
	reverse_http tiny
}
http://%[7]s {
	bind 127.0.0.1
	reverse_http tinybin
}
http://%[8]s {
	bind 127.0.0.1
	reverse_http tinypot
}
`, ptthHub, benchToken, potHub, rp, app, rh, rhBin, pot, rhUnix, wzHub, wz), rp, rh, rhBin, pot, rhUnix, wz, ptthHub, potHub, wzHub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)

	appProc, err := e.serve("tiny-app", "--listen", app, "--listen-unix", appSock, "--hub", ptthHub, "--pool", "tiny", "--token", benchToken, "--slots", "8")
	if err != nil {
		return nil, err
	}
	defer appProc.stop(10 * time.Second)
	potProc, err := e.serve("tiny-pothead", "--hub", potHub, "--protocol", "pothead", "--slots", "8")
	if err != nil {
		return nil, err
	}
	defer potProc.stop(10 * time.Second)
	binArgs := []string{"--hub", ptthHub, "--pool", "tinybin",
		"--token", benchToken, "--slots", "8", "--upstream", "http://" + app, "--name", "bench", "--log-level", "error"}
	if o.profile {
		// Written when the worker exits, at the end of the scenario; it
		// is busy only during (d)'s runs.
		binArgs = append(binArgs, "--cpuprofile", filepath.Join(o.out, "tiny-d-worker-cpu.pprof"))
	}
	binProc, err := e.start("tiny-worker-binary", false, e.worker, binArgs...)
	if err != nil {
		return nil, err
	}
	defer binProc.stop(10 * time.Second)
	unixProc, err := e.start("tiny-worker-binary-unix", false, e.worker, "--hub", ptthHub, "--pool", "tinyunix",
		"--token", benchToken, "--slots", "8", "--upstream", "unix:"+appSock, "--name", "bench-unix", "--log-level", "error")
	if err != nil {
		return nil, err
	}
	defer unixProc.stop(10 * time.Second)
	ha, haErr := e.startHAProxy(fmt.Sprintf(`global
	maxconn 8000
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend fe
	bind %s
	default_backend app
backend app
	server app %s
`, haSite, app), haSite)
	if haErr == nil {
		defer ha.stop(10 * time.Second)
	}
	wzProc, wzErr := e.startWerkzeug("tiny-werkzeug", wzHub, 8)
	if wzErr == nil {
		defer wzProc.stop(10 * time.Second)
	}

	systems := []*tinySystem{
		{key: "a", name: "(a) direct to the app", url: "http://" + app + "/tiny", app: appProc},
		{key: "b", name: "(b) Caddy `reverse_proxy` → app", url: "http://" + rp + "/tiny", proxy: caddy, app: appProc},
	}
	if haErr == nil {
		systems = append(systems, &tinySystem{key: "f", name: "(f) HAProxy → app", url: "http://" + haSite + "/tiny", proxy: ha, app: appProc})
	}
	systems = append(systems,
		&tinySystem{key: "c", name: "(c) `reverse_http`, worker package in the app (8 slots)", url: "http://" + rh + "/tiny", proxy: caddy, app: appProc},
		&tinySystem{key: "d", name: "(d) `reverse_http` → worker binary (8 slots) → app", url: "http://" + rhBin + "/tiny", proxy: caddy, worker: binProc, app: appProc},
		&tinySystem{key: "g", name: "(g) `reverse_http` → worker binary (8 slots) → app on a unix socket", url: "http://" + rhUnix + "/tiny", proxy: caddy, worker: unixProc, app: appProc},
		&tinySystem{key: "e", name: "(e) `reverse_http`, `pothead` protocol, the Go worker (no handshake; it keeps its connection; 8 slots)", url: "http://" + pot + "/tiny", proxy: caddy, app: potProc},
	)
	// (h) is what a POTHEAD deployment costs Caddy: a connection per job.
	// Its worker is Python, slower than the others, and Caddy's CPU per
	// request falls as the rate rises; (c′) is (c) held to (h)'s rate of
	// each round, for the keep-alive figure at the same rate.
	var paced *tinySystem
	if wzErr == nil {
		systems = append(systems, &tinySystem{key: "h", name: "(h) `reverse_http`, `pothead` protocol, werkzeug worker (POTHEAD's HTTP stack; a connection per job; 8 slots)",
			url: "http://" + wz + "/tiny", proxy: caddy, app: wzProc})
		paced = &tinySystem{key: "c′", name: "(c′) as (c), paced at (h)'s rate", url: "http://" + rh + "/tiny", proxy: caddy, app: appProc}
	}
	byKey := map[string]*tinySystem{}
	for _, s := range systems {
		byKey[s.key] = s
	}
	// The worker binary connects on its own time: wait until a request
	// gets through each path.
	for _, s := range systems {
		if err := warm(s.url); err != nil {
			return nil, fmt.Errorf("%s: %v", s.name, err)
		}
	}
	for _, s := range systems {
		closedLoop(s.url, o.conc, o.tinyWarm)
	}
	measure := func(s *tinySystem, run func() closedResult) closedResult {
		before := s.cpuNow()
		r := run()
		after := s.cpuNow()
		for k := range s.cpu {
			s.cpu[k] += after[k] - before[k]
		}
		s.res.requests += r.requests
		s.res.errors += r.errors
		if s.res.firstErr == nil {
			s.res.firstErr = r.firstErr
		}
		s.res.elapsed += r.elapsed
		s.res.lat = append(s.res.lat, r.lat...)
		return r
	}
	for round := range o.tinyRounds {
		hRate := 0.0
		for i := range systems {
			// Rotate the order so no system always runs first.
			s := systems[(i+round)%len(systems)]
			var profiled chan error
			if o.profile && round == 0 && s.proxy == caddy {
				profiled = make(chan error, 1)
				go func() {
					profiled <- e.saveProfile(fmt.Sprintf("profile?seconds=%d", max(1, int(o.tinyRun.Seconds())-1)),
						filepath.Join(o.out, "tiny-"+s.key+"-cpu.pprof"))
				}()
			}
			r := measure(s, func() closedResult { return closedLoop(s.url, o.conc, o.tinyRun) })
			if profiled != nil {
				if err := <-profiled; err != nil {
					return nil, fmt.Errorf("profiling: %v", err)
				}
			}
			if s.key == "h" {
				hRate = r.rate()
			}
		}
		if paced != nil && hRate > 0 {
			measure(paced, func() closedResult { return pacedLoop(paced.url, o.conc, hRate, o.tinyRun) })
		}
	}
	seqErrs := sequentialJobs(systems, o.seqJobs)
	if paced != nil {
		// After the sequential jobs, which it has none of.
		systems = append(systems, paced)
		byKey[paced.key] = paced
	}

	t := &table{
		title: "1. Tiny jobs",
		intro: fmt.Sprintf("1 KiB responses, no work; %d clients in a closed loop; %d interleaved rounds of %v per system (after a %v warm-up). "+
			"One Caddy process; the app, the pothead worker and the worker binary are separate processes; the generator is this program.",
			o.conc, o.tinyRounds, o.tinyRun, o.tinyWarm),
		header: []string{"path", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs (b)", "p99 vs (b)", "req/s vs (a)"},
	}
	base, direct := byKey["b"], byKey["a"]
	bs := sorted(base.res.lat)
	for _, s := range systems {
		l := sorted(s.res.lat)
		t.add(s.name, fmt.Sprintf("%.0f", s.res.rate()), ms(percentile(l, 50)), ms(percentile(l, 99)), count(s.res.errors),
			ratio(s.res.rate(), base.res.rate()),
			ratio(float64(percentile(l, 99)), float64(percentile(bs, 99))),
			ratio(s.res.rate(), direct.res.rate()))
		if s.res.firstErr != nil {
			t.notes = append(t.notes, fmt.Sprintf("%s: first error: %v", s.name, s.res.firstErr))
		}
	}
	if haErr != nil {
		t.notes = append(t.notes, fmt.Sprintf("HAProxy did not run (%v); install the Debian package haproxy.", haErr))
	}
	if wzErr != nil {
		t.notes = append(t.notes, fmt.Sprintf("The werkzeug worker (h) did not run: %v.", wzErr))
	}
	_, hwm, err := memory(caddy.pid())
	if err == nil {
		t.notes = append(t.notes, fmt.Sprintf("Caddy's peak RSS over the scenario: %s MiB.", mib(hwm)))
	}

	ct := &table{
		title: "1b. CPU time per request, by process",
		intro: "From the processes' user and system time in /proc during the timed rounds above, divided by the requests served (10 ms clock ticks). " +
			"Where the worker serves in the app's process, (c), (e) and (h), its share is in the app's column.",
		header: []string{"path", "proxy or hub µs", "worker binary µs", "app µs", "total µs", "total vs (b)"},
	}
	for _, s := range systems {
		workerCell := "–"
		if s.worker != nil {
			workerCell = fmt.Sprintf("%.0f", s.perRequest(1))
		}
		proxyCell := "–"
		if s.proxy != nil {
			proxyCell = fmt.Sprintf("%.0f", s.perRequest(0))
		}
		total := s.perRequest(0) + s.perRequest(1) + s.perRequest(2)
		ct.add(s.name, proxyCell, workerCell, fmt.Sprintf("%.0f", s.perRequest(2)), fmt.Sprintf("%.0f", total),
			ratio(total, base.perRequest(0)+base.perRequest(2)))
	}

	st := &table{
		title: "1c. One job at a time",
		intro: fmt.Sprintf("%d jobs of 5 ms (a sleep in the app) sent one after another by one client with keep-alive, the systems taking turns in blocks of %d; "+
			"the overhead is the time beyond the direct call's; the proxy's CPU time per job is read from /proc over the blocks (10 ms clock ticks: a rough figure), and includes what it spends while idle.", o.seqJobs, seqBlock),
		header: []string{"path", "p50 ms", "p99 ms", "p50 overhead ms", "vs HAProxy's overhead", "proxy or hub CPU µs per job"},
	}
	ha50 := time.Duration(-1)
	if s := byKey["f"]; s != nil {
		ha50 = percentile(sorted(s.seq), 50)
	}
	d50 := percentile(sorted(direct.seq), 50)
	for _, s := range systems {
		if s == paced {
			continue
		}
		l := sorted(s.seq)
		p50 := percentile(l, 50)
		vsHA := "–"
		if ha50 >= 0 && s.key != "a" {
			vsHA = fmt.Sprintf("%+.2f ms", float64(p50-ha50)/float64(time.Millisecond))
		}
		over := "–"
		if s.key != "a" {
			over = fmt.Sprintf("%.2f", float64(p50-d50)/float64(time.Millisecond))
		}
		cpu := "–"
		if s.proxy != nil {
			cpu = fmt.Sprintf("%.0f", s.seqCPUPerJob())
		}
		st.add(s.name, ms(p50), ms(percentile(l, 99)), over, vsHA, cpu)
	}
	if seqErrs > 0 {
		st.notes = append(st.notes, fmt.Sprintf("%d of the sequential jobs failed.", seqErrs))
	}
	// What one more process in the path costs at the least: (d) crosses
	// one more than (c), and one more than HAProxy's path.
	if rt, err := processRoundTrip(e, o.seqJobs/2, time.Duration(shortMS*float64(time.Millisecond))); err != nil {
		st.notes = append(st.notes, fmt.Sprintf("The round trip to another process was not measured: %v.", err))
	} else {
		st.notes = append(st.notes, fmt.Sprintf("The least one more process in a job's path costs: a round trip of 16 bytes over loopback "+
			"to another process that has slept %g ms, as each process a job crosses one at a time has, took %s ms at the median "+
			"(p90 %s ms) in this run. (d) crosses one process more than (c) and than HAProxy's path (f).",
			shortMS, ms(percentile(rt, 50)), ms(percentile(rt, 90))))
	}

	gt := &table{
		title:  "1d. The worker binary's hop against its goals",
		intro:  "Ratios from the tables above, of this run.",
		header: []string{"figure", "measured", "goal", "met"},
	}
	d, c, ph := byKey["d"], byKey["c"], byKey["h"]
	goal := func(name string, v float64, text string, ok bool, goalText string) {
		met := "no"
		if ok {
			met = "yes"
		}
		gt.add(name, text, goalText, met)
	}
	wr := d.perRequest(1) / base.perRequest(0)
	goal("worker binary CPU per request vs Caddy's in (b)", wr, goalRatio(wr, 0.5), wr <= 0.5, "≤ 0.50×")
	rr := d.res.rate() / base.res.rate()
	goal("req/s of (d) vs (b)", rr, goalRatio(rr, 0.8), rr >= 0.8, "≥ 0.80×")
	if ha50 >= 0 {
		over := float64(percentile(sorted(d.seq), 50)-ha50) / float64(time.Millisecond)
		goal("one 5 ms job, p50 of (d) beyond HAProxy's", over, fmt.Sprintf("%+.2f ms", over), over <= 0.1, "≤ +0.10 ms")
	}
	if ph != nil && paced.res.requests == 0 {
		gt.notes = append(gt.notes, "Caddy's CPU per pothead job under load was not measured: the werkzeug worker (h) served nothing.")
	}
	if ph != nil && paced.res.requests > 0 {
		pr := ph.perRequest(0) / paced.perRequest(0)
		goal("Caddy's CPU per job, pothead with a connection per job (h) vs keep-alive at the same rate (c′), under load", pr, goalRatio(pr, 1.5), pr <= 1.5, "≤ 1.50×")
	}
	if ph != nil && len(ph.seq) > 0 {
		ps := ph.seqCPUPerJob() / c.seqCPUPerJob()
		goal("the same, one job at a time, (h) vs (c)", ps, goalRatio(ps, 1.5), ps <= 1.5, "≤ 1.50×")
	}
	if ph == nil {
		gt.notes = append(gt.notes, fmt.Sprintf("Caddy's CPU per pothead job was not measured: the werkzeug worker did not run (%v).", wzErr))
	}
	return []*table{t, ct, st, gt}, nil
}

// cpuNow reads the CPU time of the system's processes so far.
func (s *tinySystem) cpuNow() [3]time.Duration {
	var out [3]time.Duration
	for i, p := range []*proc{s.proxy, s.worker, s.app} {
		if p != nil {
			out[i], _ = cpuTime(p.pid())
		}
	}
	return out
}

// perRequest is process k's CPU time per request served, in µs.
func (s *tinySystem) perRequest(k int) float64 {
	if s.res.requests == 0 {
		return 0
	}
	return float64(s.cpu[k]) / float64(time.Microsecond) / float64(s.res.requests)
}

// seqBlock is how many sequential jobs a system gets in a row: enough for
// its proxy's CPU time, read before and after, to be its own.
const seqBlock = 10

// sequentialJobs sends n jobs of 5 ms to each system, one at a time, the
// systems taking turns in blocks of seqBlock, and records each job's time
// and the proxy's CPU time over each block; it returns how many failed.
func sequentialJobs(systems []*tinySystem, n int) int {
	clients := make([]*http.Client, len(systems))
	for i := range systems {
		clients[i] = newClient(1)
		defer clients[i].CloseIdleConnections()
		// The first few open connections.
		for range 3 {
			fetch(clients[i], jobRequest(systems[i], 0))
		}
	}
	errs := 0
	for j := 0; j < n; j += seqBlock {
		for i, s := range systems {
			before := s.cpuNow()
			for k := j; k < min(n, j+seqBlock); k++ {
				t0 := time.Now()
				if _, err := fetch(clients[i], jobRequest(s, k)); err != nil {
					errs++
					continue
				}
				s.seq = append(s.seq, time.Since(t0))
			}
			s.seqCPU += s.cpuNow()[0] - before[0]
		}
	}
	return errs
}

// jobRequest is the k-th sequential 5 ms job for s.
func jobRequest(s *tinySystem, k int) *http.Request {
	base := s.url[:len(s.url)-len("/tiny")]
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/job?ms=%g&n=%d", base, shortMS, k), nil)
	return req
}

// seqCPUPerJob is the proxy's CPU time per sequential job, in µs.
func (s *tinySystem) seqCPUPerJob() float64 {
	if len(s.seq) == 0 {
		return 0
	}
	return float64(s.seqCPU) / float64(time.Microsecond) / float64(len(s.seq))
}

// warm waits until url answers 200, for up to 30 s.
func warm(url string) error {
	c := newClient(1)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", url, nil)
		_, err := fetch(c, req)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// goalRatio prints v to two places, or to as many more as it takes (up to
// six) for v not to print as its goal's line, which would hide the side of
// the line it is on.
func goalRatio(v, line float64) string {
	prec := 2
	for prec < 6 && v != line && fmt.Sprintf("%.*f", prec, v) == fmt.Sprintf("%.*f", prec, line) {
		prec++
	}
	return fmt.Sprintf("%.*f×", prec, v)
}
