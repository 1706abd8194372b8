package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"time"
)

// benchToken is the pools' bearer token in every scenario.
const benchToken = "bench-token"

// tinyJobs is scenario 1: 1 KiB responses, no work, 64 concurrent clients,
// through five paths to the same handler code, interleaved round by round.
func tinyJobs(e *env, o *options) (*table, error) {
	ports, err := freePorts(7)
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
	}
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
`, ptthHub, benchToken, potHub, rp, app, rh, rhBin, pot), rp, rh, rhBin, pot, ptthHub, potHub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)

	appProc, err := e.serve("tiny-app", "--listen", app, "--hub", ptthHub, "--pool", "tiny", "--token", benchToken, "--slots", "8")
	if err != nil {
		return nil, err
	}
	defer appProc.stop(10 * time.Second)
	potProc, err := e.serve("tiny-pothead", "--hub", potHub, "--protocol", "pothead", "--slots", "8")
	if err != nil {
		return nil, err
	}
	defer potProc.stop(10 * time.Second)
	binProc, err := e.start("tiny-worker-binary", false, e.worker, "--hub", ptthHub, "--pool", "tinybin",
		"--token", benchToken, "--slots", "8", "--upstream", "http://"+app, "--name", "bench", "--log-level", "error")
	if err != nil {
		return nil, err
	}
	defer binProc.stop(10 * time.Second)

	type system struct {
		key, name, url string
		res            closedResult
	}
	systems := []*system{
		{key: "a", name: "(a) direct to the app", url: "http://" + app + "/tiny"},
		{key: "b", name: "(b) Caddy `reverse_proxy` → app", url: "http://" + rp + "/tiny"},
		{key: "c", name: "(c) `reverse_http`, worker package in the app (8 slots)", url: "http://" + rh + "/tiny"},
		{key: "d", name: "(d) `reverse_http` → worker binary (8 slots) → app", url: "http://" + rhBin + "/tiny"},
		{key: "e", name: "(e) `reverse_http`, `pothead` protocol (8 slots, a connection per job)", url: "http://" + pot + "/tiny"},
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
	for round := range o.tinyRounds {
		for i := range systems {
			// Rotate the order so no system always runs first.
			s := systems[(i+round)%len(systems)]
			var profiled chan error
			if o.profile && round == 0 && (s.key == "b" || s.key == "c") {
				profiled = make(chan error, 1)
				go func() {
					profiled <- e.saveProfile(fmt.Sprintf("profile?seconds=%d", max(1, int(o.tinyRun.Seconds())-1)),
						filepath.Join(o.out, "tiny-"+s.key+"-cpu.pprof"))
				}()
			}
			r := closedLoop(s.url, o.conc, o.tinyRun)
			if profiled != nil {
				if err := <-profiled; err != nil {
					return nil, fmt.Errorf("profiling: %v", err)
				}
			}
			s.res.requests += r.requests
			s.res.errors += r.errors
			if s.res.firstErr == nil {
				s.res.firstErr = r.firstErr
			}
			s.res.elapsed += r.elapsed
			s.res.lat = append(s.res.lat, r.lat...)
		}
	}

	t := &table{
		title: "1. Tiny jobs",
		intro: fmt.Sprintf("1 KiB responses, no work; %d clients in a closed loop; %d interleaved rounds of %v per system (after a %v warm-up). "+
			"One Caddy process; the app, the pothead worker and the worker binary are separate processes; the generator is this program.",
			o.conc, o.tinyRounds, o.tinyRun, o.tinyWarm),
		header: []string{"path", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs (b)", "p99 vs (b)", "req/s vs (a)"},
	}
	base, direct := systems[1], systems[0]
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
	_, hwm, err := memory(caddy.pid())
	if err == nil {
		t.notes = append(t.notes, fmt.Sprintf("Caddy's peak RSS over the scenario: %s MiB.", mib(hwm)))
	}
	return t, nil
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
