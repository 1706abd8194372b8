package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The soak ("bench soak", `make soak`) runs the real Caddy binary with the
// plugin, the application, worker binaries and worker package processes,
// and at the same time: consumers sending POSTs and GETs, a worker
// SIGKILLed and restarted every second (each of two in turn), config
// reloads, and attacker connections of many kinds on the worker port. Then
// it checks that nothing was lost beyond the jobs of killed and
// misbehaving workers, that nothing hung or ran twice, that no connection
// without a valid token was admitted, and that Caddy's goroutines and
// memory came back. See README.md, "Tests".

// soakOptions are the knobs of a soak.
type soakOptions struct {
	caddy, worker  string
	quick          bool
	seed           uint64
	load           time.Duration // how long the load, chaos, reloads and attacks run
	consumers      int
	reloads        int
	attacks        int
	attackParallel int
	killEvery      time.Duration
	clientTimeout  time.Duration
	settle         time.Duration // the longest Caddy's figures may take to come back
	deadline       time.Duration // the whole run
	keep           bool
}

func soakMain(args []string) int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	o := &soakOptions{
		seed: 20261203, load: 150 * time.Second, consumers: 8, reloads: 50, attacks: 1000, attackParallel: 48,
		killEvery: time.Second, clientTimeout: 20 * time.Second, settle: 20 * time.Second,
	}
	fs.StringVar(&o.caddy, "caddy", "bin/caddy", "Caddy binary built with the plugin")
	fs.StringVar(&o.worker, "worker", "bin/reverse-http-worker", "reverse-http-worker binary")
	fs.BoolVar(&o.quick, "quick", false, "a short run (about a minute), with all the reloads and attacker connections of a full one")
	fs.Uint64Var(&o.seed, "seed", o.seed, "`SEED` of the consumers' requests and the attackers' order")
	load := fs.Duration("duration", 0, "how long the load runs (default 150s, or 50s with -quick)")
	fs.BoolVar(&o.keep, "keep", false, "keep the scratch directory (logs, configs, the execution log); it is kept anyway when the soak fails")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.quick {
		o.load, o.settle = 50*time.Second, 15*time.Second
	}
	if *load > 0 {
		o.load = *load
	}
	if o.clientTimeout < 2*maxQueueTimeout() {
		fmt.Fprintln(os.Stderr, "soak: the client timeout must be well above the longest queue timeout")
		return 2
	}
	// The load, the drain of its last requests, the settling and the
	// start-up and shutdown, with room to spare.
	o.deadline = o.load + o.clientTimeout + attackDeadline + o.settle + 90*time.Second
	var err error
	for _, p := range []*string{&o.caddy, &o.worker} {
		if *p, err = filepath.Abs(*p); err == nil {
			_, err = os.Stat(*p)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "soak: %v (run 'make build' in the repository root first)\n", err)
			return 2
		}
	}
	raiseFileLimit()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "reverse-http-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	e := &env{caddy: o.caddy, worker: o.worker, self: self, dir: dir}

	ctx, cancel := context.WithTimeout(context.Background(), o.deadline)
	defer cancel()
	var cleanup sync.Once
	cleanupAll := func() { cleanup.Do(e.killAll) }
	defer cleanupAll()
	// Ctrl-C or SIGTERM ends the run in order (the summary still prints);
	// a second one, or the run overrunning its deadline, kills everything
	// at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "soak: interrupted; stopping (again to kill at once)")
		cancel()
		<-sigs
		cleanupAll()
		os.Exit(130)
	}()
	watchdog := time.AfterFunc(o.deadline+30*time.Second, func() {
		fmt.Fprintln(os.Stderr, "soak: the soak itself overran its deadline; killing everything")
		cleanupAll()
		os.Exit(3)
	})
	defer watchdog.Stop()

	r := runSoak(ctx, e, o)
	cleanupAll()
	var out strings.Builder
	pass := r.summary(&out)
	fmt.Print(out.String())
	os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(out.String()), 0o644)
	var events strings.Builder
	r.timeline(&events)
	os.WriteFile(filepath.Join(dir, "events.txt"), []byte(events.String()), 0o644)
	if pass && !o.keep {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "soak: logs, configs and the execution log are in %s\n", dir)
	}
	if !pass {
		return 1
	}
	return 0
}

// soakRun is everything a soak observed.
type soakRun struct {
	o           *soakOptions
	took        time.Duration
	outcomes    []outcome
	loadStart   time.Time
	runs        map[string][]execution
	seen        map[string]bool   // ids in Caddy's access log
	handlerErrs map[string]string // job id -> the reverse_http handler's error in Caddy's log
	hubLog      hubLog
	kills       []kill
	reloads     []reload
	attacks     []attackResult
	before      caddyFigures
	peak        caddyFigures
	after       caddyFigures
	settled     time.Duration
	errs        []string // failures of the soak's own machinery
	interrupted bool
}

func (r *soakRun) fail(format string, a ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, a...))
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", a...)
}

// runSoak sets the soak up, runs it and takes it down. Failures of its own
// machinery are in the result's errs.
func runSoak(ctx context.Context, e *env, o *soakOptions) *soakRun {
	r := &soakRun{o: o}
	started := time.Now()
	defer func() { r.took = time.Since(started) }()
	sys, err := startSystem(ctx, e)
	if err != nil {
		r.fail("%v", err)
		return r
	}
	pid := sys.caddy.pid()
	time.Sleep(time.Second)
	e.collectGarbage()
	if r.before, err = e.caddyFigures(pid); err != nil {
		r.fail("caddy figures: %v", err)
		return r
	}
	resetPeak(pid)
	sampler := e.samplePeaks(pid, time.Second)
	r.underLoad(ctx, sys)
	r.peak = sampler.end(pid)
	r.interrupted = ctx.Err() != nil

	progress("settling (up to %v)", o.settle)
	r.after, r.settled = settle(ctx, e, pid, r.before, o.settle)
	sys.stop()
	r.readLogs(sys)
	return r
}

// soakSystem is the processes under test.
type soakSystem struct {
	addrs      soakAddrs
	paths      soakPaths
	app, caddy *proc
	starter    *soakWorkers
	workers    []*soakWorker
	victims    []*soakWorker // the workers the chaos kills
}

// startSystem starts the app, Caddy and the workers, and waits until each
// worker has served a job.
func startSystem(ctx context.Context, e *env) (*soakSystem, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, fmt.Errorf("ports: %v", err)
	}
	s := &soakSystem{paths: newSoakPaths(e.dir)}
	a := &s.addrs
	for i, p := range []*string{&a.admin, &a.site, &a.workers, &a.app} {
		*p = fmt.Sprintf("127.0.0.1:%d", ports[i])
	}
	e.admin = a.admin
	if s.app, err = e.start("app", true, e.self, "soak-serve", "--listen", a.app, "--log", s.paths.exec); err != nil {
		return nil, fmt.Errorf("app: %v", err)
	}
	cfgPath := filepath.Join(e.dir, "caddy.json")
	if err := os.WriteFile(cfgPath, soakVariants[0].caddyConfig(s.addrs, s.paths), 0o644); err != nil {
		return nil, fmt.Errorf("config: %v", err)
	}
	if s.caddy, err = e.start("caddy", false, e.caddy, "run", "--config", cfgPath); err != nil {
		return nil, fmt.Errorf("caddy: %v", err)
	}
	if err := waitListening(s.caddy, a.site, a.workers, a.admin); err != nil {
		return nil, fmt.Errorf("caddy: %v", err)
	}
	s.starter = &soakWorkers{e: e, addrs: s.addrs, execLog: s.paths.exec}
	s.victims = []*soakWorker{
		{group: "chaos-bin", binary: true, slots: 2},
		{group: "chaos-pkg", slots: 2},
	}
	s.workers = append([]*soakWorker{
		{group: "stable-bin", binary: true, slots: 4},
		{group: "stable-pkg", slots: 4},
	}, s.victims...)
	for _, w := range s.workers {
		if err := s.starter.start(w); err != nil {
			return nil, err
		}
	}
	if err := warmUp(ctx, a.site, s.workers); err != nil {
		return nil, fmt.Errorf("warm-up: %v", err)
	}
	return s, nil
}

// stop takes the system down, Caddy gracefully so that its logs are
// complete.
func (s *soakSystem) stop() {
	for _, w := range s.workers {
		w.p.kill()
	}
	s.caddy.stop(10 * time.Second)
	s.app.stop(10 * time.Second)
}

// underLoad runs the consumers, the chaos, the reloads and the attackers
// at once, for the load's duration, and waits for the last of them.
func (r *soakRun) underLoad(ctx context.Context, s *soakSystem) {
	o := r.o
	progress("%v of load: %d consumers, workers %s and %s killed in turn every %v, %d reloads, %d attacker connections",
		o.load, o.consumers, s.victims[0].group, s.victims[1].group, o.killEvery, o.reloads, o.attacks)
	r.loadStart = time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { r.outcomes = consumers(ctx, stop, s.addrs.site, o.consumers, o.seed, o.clientTimeout) })
	var chaosErr error
	wg.Go(func() { r.kills, chaosErr = s.starter.chaos(ctx, stop, s.victims, o.killEvery) })
	wg.Go(func() { r.reloads = reloads(ctx, s.addrs, s.paths, o.reloads, r.loadStart, o.load) })
	// The attackers finish a little early, so that their last
	// connections end while the load still runs.
	wg.Go(func() {
		r.attacks = attacks(ctx, s.addrs.workers, o.attacks, o.attackParallel, o.seed, r.loadStart, o.load-attackDeadline)
	})
	sleepUntil(ctx, r.loadStart.Add(o.load))
	close(stop)
	progress("load over after %v; waiting for the last requests", time.Since(r.loadStart).Round(time.Second))
	wg.Wait()
	if chaosErr != nil && !errors.Is(chaosErr, context.Canceled) && !errors.Is(chaosErr, context.DeadlineExceeded) {
		r.fail("chaos: %v", chaosErr)
	}
}

// readLogs reads the evidence the processes left: the execution log,
// Caddy's access log and error lines, and the hub's debug log.
func (r *soakRun) readLogs(s *soakSystem) {
	logs := []struct {
		name, path string
		read       func(io.Reader) error
	}{
		{"execution log", s.paths.exec, func(f io.Reader) (err error) { r.runs, err = readExecLog(f); return err }},
		{"access log", s.paths.access, func(f io.Reader) (err error) { r.seen, err = readAccessLog(f); return err }},
		{"Caddy's log", s.caddy.log, func(f io.Reader) (err error) { r.handlerErrs, err = readHandlerErrors(f); return err }},
		{"the hub's log", s.paths.hub, func(f io.Reader) (err error) { r.hubLog, err = readHubLog(f); return err }},
	}
	for _, lg := range logs {
		if err := readLog(lg.path, lg.read); err != nil {
			r.fail("%s: %v", lg.name, err)
		}
	}
}

// warmUp sends jobs until each worker has served one, so that all are
// connected before the figures are first taken.
func warmUp(ctx context.Context, site string, workers []*soakWorker) error {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	seen := make(map[string]bool)
	var mu sync.Mutex
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; ; n++ {
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Go(func() {
				j := soakJob{id: fmt.Sprintf("warm-%d-%d", n, i), method: "GET", ms: 100}
				o := runJob(ctx, client, site, j, 10*time.Second)
				if o.ok() {
					mu.Lock()
					seen[tagGroup(o.servedBy)] = true
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		var missing []string
		for _, w := range workers {
			if !seen[w.group] {
				missing = append(missing, w.group)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no job served by %s after 30s", strings.Join(missing, ", "))
		}
	}
}

// settle waits minSettle, then up to d in all, until Caddy's figures are
// back within the tolerance of before, and returns them then (read after a
// GC) and how long that took.
func settle(ctx context.Context, e *env, pid int, before caddyFigures, d time.Duration) (caddyFigures, time.Duration) {
	start := time.Now()
	sleepUntil(ctx, start.Add(minSettle))
	var f caddyFigures
	for {
		e.collectGarbage()
		var err error
		f, err = e.caddyFigures(pid)
		if err == nil && soakTolerance.settledOK(before, f) {
			break
		}
		if time.Since(start) >= d || !sleepUntil(ctx, time.Now().Add(time.Second)) {
			break
		}
	}
	return f, time.Since(start)
}

// minSettle is the least time the soak gives Caddy after the load, for
// the connections and goroutines of the last requests to wind down.
const minSettle = 5 * time.Second
