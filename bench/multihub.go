package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario 5: several hubs. Three Caddy processes on 127.0.0.2, .3 and .4
// (one pool each, independent queues), twelve worker binaries of two slots
// each connected to all three, forwarding to an application in this
// process that counts, per worker, the jobs running at once. Consumers
// spread over the hubs. Three phases: full load (every hub has a queue),
// partial load (open loop, unequal hubs), and full load during which one
// hub is killed (SIGKILL) and restarted.
const (
	mhHubs    = 3
	mhWorkers = 12
	mhSlots   = 2
	mhJobMS   = 50
	// mhWaitLimit is how long a request may wait while a slot idles
	// before it counts: the time a request takes to reach the app through
	// a hub and a worker when nothing waits is well under it.
	mhWaitLimit = 5 * time.Millisecond
)

var mhIPs = [mhHubs]string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

// mhEvent is a job starting (+1) or ending (-1) at the app.
type mhEvent struct {
	at     time.Time
	worker int
	hub    int
	delta  int
	id     int64
}

// mhApp is the upstream of every worker: one listener per worker, so that
// it knows which worker runs a job; the job's hub comes in its query.
type mhApp struct {
	mu      sync.Mutex
	running [mhWorkers]int
	peak    [mhWorkers]int
	events  []mhEvent
	srvs    []*http.Server
	addrs   []string
}

func startMHApp() (*mhApp, error) {
	a := &mhApp{}
	for i := range mhWorkers {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			a.close()
			return nil, err
		}
		srv := &http.Server{Handler: a.handler(i)}
		a.srvs = append(a.srvs, srv)
		a.addrs = append(a.addrs, ln.Addr().String())
		go srv.Serve(ln)
	}
	return a, nil
}

func (a *mhApp) close() {
	for _, s := range a.srvs {
		s.Close()
	}
}

func (a *mhApp) handler(worker int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hub, _ := strconv.Atoi(r.URL.Query().Get("hub"))
		id, _ := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
		a.mu.Lock()
		a.running[worker]++
		a.peak[worker] = max(a.peak[worker], a.running[worker])
		a.events = append(a.events, mhEvent{time.Now(), worker, hub, 1, id})
		a.mu.Unlock()
		t := time.NewTimer(mhJobMS * time.Millisecond)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
		a.mu.Lock()
		a.running[worker]--
		a.events = append(a.events, mhEvent{time.Now(), worker, hub, -1, id})
		a.mu.Unlock()
		w.Write([]byte("done\n"))
	})
}

// take returns the events recorded since the last call, and the peaks.
func (a *mhApp) take() ([]mhEvent, [mhWorkers]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ev := a.events
	a.events = nil
	peak := a.peak
	a.peak = a.running
	return ev, peak
}

// mhRequest is one consumer request.
type mhRequest struct {
	id         int64
	hub        int
	sent, done time.Time
	err        error
}

// mhHub is one Caddy of the scenario.
type mhHub struct {
	ip, site, workers string
	log               string
	p                 *proc
}

func multiHub(e *env, o *options) ([]*table, error) {
	app, err := startMHApp()
	if err != nil {
		return nil, err
	}
	defer app.close()
	var hubs [mhHubs]*mhHub
	for i, ip := range mhIPs {
		site, err := freePortOn(ip)
		if err != nil {
			return nil, fmt.Errorf("%s (the loopback addresses 127.0.0.2 to .4 must be usable): %v", ip, err)
		}
		wport, err := freePortOn(ip)
		if err != nil {
			return nil, err
		}
		hubs[i] = &mhHub{ip: ip, site: net.JoinHostPort(ip, site), workers: net.JoinHostPort(ip, wport)}
	}
	for i, h := range hubs {
		if err := e.startMHHub(h, i, 0); err != nil {
			return nil, err
		}
	}
	defer func() {
		for _, h := range hubs {
			if h.p != nil && !h.p.exited() {
				h.p.stop(10 * time.Second)
			}
		}
	}()

	clients := [mhHubs]*http.Client{}
	for i := range clients {
		clients[i] = newClient(64)
		defer clients[i].CloseIdleConnections()
	}
	full, partial, kill := 6*time.Second, 6*time.Second, 9*time.Second
	if o.quick {
		full, partial, kill = 1500*time.Millisecond, 1500*time.Millisecond, 4*time.Second
	}
	slots := mhWorkers * mhSlots
	capacity := float64(slots) * 1000 / mhJobMS
	var seq atomic.Int64

	// Phase 0, for reference: the same workers and load on one hub.
	since := time.Now()
	ref, err := e.startMHWorkers(app, hubs[:1], "ref")
	if err != nil {
		return nil, err
	}
	err = hubs[0].waitConnections(mhWorkers*mhSlots, since, 30*time.Second)
	if err == nil {
		err = warm("http://" + hubs[0].site + "/job?hub=0&id=-1")
	}
	if err != nil {
		stopAll(ref)
		return nil, err
	}
	app.take()
	p0start := time.Now()
	reqs := mhOpen(clients, hubs, &seq, 0.7*capacity, [mhHubs]float64{1, 0, 0}, partial, o.seed)
	p0end := time.Now()
	ev0, peak0 := app.take()
	p0 := summarize(reqs, ev0, p0start, p0end, slots)
	d0, c0 := countLogs(hubs[:1], p0start, p0end)
	stopAll(ref)

	since = time.Now()
	workers, err := e.startMHWorkers(app, hubs[:], "w")
	defer stopAll(workers)
	if err != nil {
		return nil, err
	}
	for _, h := range hubs {
		if err := h.waitConnections(mhWorkers*mhSlots, since, 30*time.Second); err != nil {
			return nil, err
		}
	}
	for i := range clients {
		if err := warm("http://" + hubs[i].site + "/job?hub=" + strconv.Itoa(i) + "&id=-1"); err != nil {
			return nil, fmt.Errorf("hub %d: %v", i, err)
		}
	}
	app.take()

	// Phase 1: every hub has a queue.
	p1start := time.Now()
	reqs = mhClosed(clients, hubs, &seq, [mhHubs]int{slots, slots, slots}, full, nil)
	p1end := time.Now()
	ev1, peak1 := app.take()
	p1 := summarize(reqs, ev1, p1start, p1end, slots)
	d1, c1 := countLogs(hubs[:], p1start, p1end)

	// Phase 2: open loop at 70% of capacity, the hubs getting 50%, 30%
	// and 20% of it.
	p2start := time.Now()
	reqs = mhOpen(clients, hubs, &seq, 0.7*capacity, [mhHubs]float64{0.5, 0.3, 0.2}, partial, o.seed)
	p2end := time.Now()
	ev2, peak2 := app.take()
	p2 := summarize(reqs, ev2, p2start, p2end, slots)
	d2, c2 := countLogs(hubs[:], p2start, p2end)

	// Phase 3: full load; hub 2 is killed at 2 s and restarted at 5 s.
	p3start := time.Now()
	var killedAt, restartedAt time.Time
	var restartErr error
	script := func() {
		time.Sleep(kill * 2 / 9)
		killedAt = time.Now()
		hubs[2].p.cmd.Process.Kill()
		<-hubs[2].p.done
		time.Sleep(kill * 3 / 9)
		restartErr = e.startMHHub(hubs[2], 2, 1)
		restartedAt = time.Now()
	}
	reqs = mhClosed(clients, hubs, &seq, [mhHubs]int{slots, slots, slots}, kill, script)
	p3end := time.Now()
	if restartErr != nil {
		return nil, fmt.Errorf("restarting hub 2: %v", restartErr)
	}
	ev3, peak3 := app.take()
	okAB, failAB, failC := 0, 0, 0
	for _, r := range reqs {
		switch {
		case r.hub != 2 && r.err == nil:
			okAB++
		case r.hub != 2:
			failAB++
		case r.err != nil:
			failC++
		}
	}
	moved := timeToFill(ev3, killedAt, slots, func(hub int) bool { return hub != 2 })
	// From the moment the restarted hub listens for workers.
	listening := restartedAt
	if ts := hubs[2].lines("worker listener started"); len(ts) > 0 {
		listening = ts[0]
	}
	backErr := hubs[2].waitConnections(mhWorkers*mhSlots, listening, 10*time.Second)
	back := hubs[2].connectedBy(mhWorkers*mhSlots, listening)
	servedAgain := firstSuccess(reqs, 2, listening)
	d3, c3 := countLogs(hubs[:2], p3start, p3end)

	peak := 0
	for _, pk := range [][mhWorkers]int{peak0, peak1, peak2, peak3} {
		for _, v := range pk {
			peak = max(peak, v)
		}
	}
	t := &table{
		title: "5. Several hubs",
		intro: fmt.Sprintf("%d Caddy processes on %s (a pool each: independent queues), %d worker binaries of %d slots each connected to all of them (`--hub` three times), "+
			"forwarding to an app in the generator that counts the jobs running on each worker; jobs of %d ms (%.0f jobs/s for all %d slots). "+
			"Declines and dials are counted at the hubs (their debug log: `worker declined the job`, `worker connected`). "+
			"A slot is idle at the app from the end of a job on its worker to the start of the next; a request waits from its sending to its start at the app.",
			mhHubs, strings.Join(mhIPs[:], ", "), mhWorkers, mhSlots, mhJobMS, capacity, slots),
		header: []string{"phase", "measure", "value"},
	}
	partRow := func(name string, p phaseSummary, from, to time.Time, declines, dials int) {
		t.add(name, "requests / failed", fmt.Sprintf("%s / %d", count(p.ok+p.failed), p.failed))
		t.add(name, fmt.Sprintf("a slot idle for over %v while a request had waited over %v", mhWaitLimit, mhWaitLimit),
			fmt.Sprintf("%s ms of %s ms (%.2f%%)", ms(p.idleWaiting), ms(to.Sub(from)), 100*p.idleWaiting.Seconds()/to.Sub(from).Seconds()))
		t.add(name, "wait from sending to the app, p50 / p99 / max", fmt.Sprintf("%s / %s / %s ms", ms(p.waitP50), ms(p.waitP99), ms(p.waitMax)))
		t.add(name, "declines per job", declineText(declines, p.ok))
		t.add(name, "dials during the phase", fmt.Sprint(dials))
	}
	partRow(fmt.Sprintf("0. for reference: the same load and workers (connected to one hub only), all to that hub, %v", partial), p0, p0start, p0end, d0, c0)
	fullName := fmt.Sprintf("1. full load: %d clients per hub, closed loop, %v", slots, full)
	t.add(fullName, "requests / failed", fmt.Sprintf("%s / %d", count(p1.ok+p1.failed), p1.failed))
	t.add(fullName, "slot use", fmt.Sprintf("%.1f%% (%.0f jobs/s)", 100*p1.busy, float64(p1.ok)/p1end.Sub(p1start).Seconds()))
	t.add(fullName, "declines per job", declineText(d1, p1.ok))
	t.add(fullName, "dials during the phase", fmt.Sprint(c1))
	partName := fmt.Sprintf("2. partial load: open loop at 70%% (%.0f/s), hubs 50/30/20%%, %v", 0.7*capacity, partial)
	partRow(partName, p2, p2start, p2end, d2, c2)
	killName := fmt.Sprintf("3. full load, hub 2 killed (SIGKILL) at %v and restarted at %v, %v", kill*2/9, kill*5/9, kill)
	t.add(killName, "requests to hubs 0 and 1 / failed", fmt.Sprintf("%s / %d", count(okAB+failAB), failAB))
	t.add(killName, "requests to hub 2 that failed (it was down)", fmt.Sprint(failC))
	t.add(killName, "hub 2's slots serving hubs 0 and 1 (all "+fmt.Sprint(slots)+" busy with their jobs)", after(moved, "after the kill"))
	if backErr != nil {
		t.add(killName, "workers back on hub 2", backErr.Error())
	} else {
		t.add(killName, fmt.Sprintf("workers back on hub 2 (all %d connections)", mhWorkers*mhSlots), after(back, "after it listens again"))
	}
	t.add(killName, "hub 2 serving again (first success)", after(servedAgain, "after it listens again"))
	t.add(killName, "declines per job at hubs 0 and 1", declineText(d3, okAB))
	t.add(killName, "dials at hubs 0 and 1 during the phase", fmt.Sprint(c3))
	t.add("all", "peak jobs at once on one worker (at the app)", fmt.Sprintf("%d (slots: %d)", peak, mhSlots))
	t.notes = append(t.notes, "Every worker holds 2 connections to each hub (6 in all) and offers each free slot to one hub first (in turn among the hubs that have taken most of their offers lately, else the one that took the most; every 4th offer to another hub in turn), then, unused after a millisecond or so, to all of them (see `worker/offers.go`).")
	return []*table{t}, nil
}

// startMHWorkers starts one worker binary per app listener, connected to
// hubs.
func (e *env) startMHWorkers(app *mhApp, hubs []*mhHub, name string) ([]*proc, error) {
	var ws []*proc
	for i := range mhWorkers {
		args := []string{"--pool", "multi", "--token", benchToken, "--slots", fmt.Sprint(mhSlots),
			"--upstream", "http://" + app.addrs[i], "--name", fmt.Sprintf("mh-%s%02d", name, i), "--log-level", "warn"}
		for _, h := range hubs {
			args = append(args, "--hub", h.workers)
		}
		w, err := e.start(fmt.Sprintf("multihub-%s%02d", name, i), false, e.worker, args...)
		if err != nil {
			return ws, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func stopAll(ps []*proc) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { p.stop(10 * time.Second) })
	}
	wg.Wait()
}

func declineText(declines, jobs int) string {
	if jobs == 0 {
		return "–"
	}
	return fmt.Sprintf("%.4f (%d declines, %s jobs)", float64(declines)/float64(jobs), declines, count(jobs))
}

func after(d time.Duration, what string) string {
	if d < 0 {
		return "not seen"
	}
	return ms(d) + " ms " + what
}

// freePortOn returns a port nobody listens on at ip.
func freePortOn(ip string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port, nil
}

// startMHHub runs Caddy for hub i, its reverse_http log (debug) in a file
// of its own per run.
func (e *env) startMHHub(h *mhHub, i, run int) error {
	h.log = filepath.Join(e.dir, fmt.Sprintf("multihub-hub%d-run%d.log", i, run))
	p, err := e.startCaddy(fmt.Sprintf("multihub-hub%d", i), fmt.Sprintf(`
	log hubdebug {
		output file %[1]s
		format json
		level DEBUG
		include reverse_http
	}
	reverse_http {
		pool multi {
			listen %[2]s
			token %[3]s
			max_queue 100000
			queue_timeout 1m
		}
	}
}

http://%[4]s {
	bind %[5]s
	reverse_http multi
}
`, h.log, h.workers, benchToken, h.site, h.ip), h.site, h.workers)
	h.p = p
	return err
}

// hubLogLine is what the scenario reads of a hub's log.
type hubLogLine struct {
	TS  float64 `json:"ts"`
	Msg string  `json:"msg"`
}

func (h *mhHub) lines(msg string) []time.Time {
	f, err := os.Open(h.log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []time.Time
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l hubLogLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == msg {
			out = append(out, time.Unix(0, int64(l.TS*1e9)))
		}
	}
	return out
}

// waitConnections waits until the hub has logged n connections since.
func (h *mhHub) waitConnections(n int, since time.Time, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for h.connectedBy(n, since) < 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("hub %s: fewer than %d worker connections after %v", h.ip, n, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// connectedBy returns how long after since the hub had logged n worker
// connections; negative if it has not.
func (h *mhHub) connectedBy(n int, since time.Time) time.Duration {
	var ts []time.Time
	for _, t := range h.lines("worker connected") {
		if !t.Before(since) {
			ts = append(ts, t)
		}
	}
	if len(ts) < n {
		return -1
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts[n-1].Sub(since)
}

// countLogs counts the declines and connections the hubs logged in [from, to).
func countLogs(hubs []*mhHub, from, to time.Time) (declines, dials int) {
	in := func(ts []time.Time) int {
		n := 0
		for _, t := range ts {
			if !t.Before(from) && t.Before(to) {
				n++
			}
		}
		return n
	}
	for _, h := range hubs {
		declines += in(h.lines("worker declined the job"))
		dials += in(h.lines("worker connected"))
	}
	return declines, dials
}

// mhClosed runs conc[i] clients against hub i in a closed loop for d; a
// client whose hub does not answer tries again after a short pause.
// During the run, script (if not nil) runs in a goroutine of its own.
func mhClosed(clients [mhHubs]*http.Client, hubs [mhHubs]*mhHub, seq *atomic.Int64, conc [mhHubs]int, d time.Duration, script func()) []mhRequest {
	end := time.Now().Add(d)
	var mu sync.Mutex
	var all []mhRequest
	var wg sync.WaitGroup
	if script != nil {
		wg.Go(script)
	}
	for hub := range mhHubs {
		for range conc[hub] {
			wg.Go(func() {
				var mine []mhRequest
				for time.Now().Before(end) {
					r := mhSend(clients[hub], hubs[hub], hub, seq.Add(1))
					mine = append(mine, r)
					if r.err != nil {
						time.Sleep(20 * time.Millisecond)
					}
				}
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return all
}

// mhOpen sends Poisson arrivals at rate for d, each to hub i with the
// share given.
func mhOpen(clients [mhHubs]*http.Client, hubs [mhHubs]*mhHub, seq *atomic.Int64, rate float64, share [mhHubs]float64, d time.Duration, seed uint64) []mhRequest {
	rng := rand.New(rand.NewPCG(seed, 5))
	start := time.Now()
	var mu sync.Mutex
	var all []mhRequest
	var wg sync.WaitGroup
	at := time.Duration(0)
	for at < d {
		at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second))
		u, hub := rng.Float64(), 0
		for hub < mhHubs-1 && u >= share[hub] {
			u -= share[hub]
			hub++
		}
		time.Sleep(time.Until(start.Add(at)))
		wg.Go(func() {
			r := mhSend(clients[hub], hubs[hub], hub, seq.Add(1))
			mu.Lock()
			all = append(all, r)
			mu.Unlock()
		})
	}
	wg.Wait()
	return all
}

func mhSend(c *http.Client, h *mhHub, hub int, id int64) mhRequest {
	r := mhRequest{id: id, hub: hub, sent: time.Now()}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/job?hub=%d&id=%d", h.site, hub, id), nil)
	_, r.err = fetch(c, req)
	r.done = time.Now()
	return r
}

// phaseSummary is what one phase measured.
type phaseSummary struct {
	ok, failed       int
	busy             float64       // the slots' share of the phase spent running jobs
	idleWaiting      time.Duration // a slot idle while a request had waited mhWaitLimit
	waitP50, waitP99 time.Duration // from sending to the start at the app
	waitMax          time.Duration
}

func summarize(reqs []mhRequest, ev []mhEvent, from, to time.Time, slots int) phaseSummary {
	var s phaseSummary
	started := make(map[int64]time.Time)
	for _, e := range ev {
		if e.delta > 0 {
			started[e.id] = e.at
		}
	}
	var waits []time.Duration
	var waiting []interval
	for _, r := range reqs {
		if r.err != nil {
			s.failed++
			continue
		}
		s.ok++
		st, ok := started[r.id]
		if !ok {
			continue
		}
		waits = append(waits, st.Sub(r.sent))
		waiting = append(waiting, interval{r.sent, st})
	}
	waits = sorted(waits)
	s.waitP50, s.waitP99 = percentile(waits, 50), percentile(waits, 99)
	if len(waits) > 0 {
		s.waitMax = waits[len(waits)-1]
	}
	s.idleWaiting, s.busy = idleWhileWaiting(ev, waiting, from, to, slots, mhWaitLimit)
	return s
}

// interval is a stretch of time: a request's wait, from its sending to
// its start at the app, or a slot's idleness.
type interval struct{ from, to time.Time }

// idleWhileWaiting sweeps the phase [from, to) and returns how long some
// slot had been idle for more than limit while some request had been
// waiting for more than limit, and the share of slot time spent running
// jobs. A slot is idle from the end of a job on its worker until the
// worker starts another (the oldest idle slot takes it); a handover
// between two jobs, which a request in the queue cannot avoid, is shorter
// than limit.
func idleWhileWaiting(ev []mhEvent, waiting []interval, from, to time.Time, slots int, limit time.Duration) (time.Duration, float64) {
	perWorker := slots / mhWorkers
	var idle []interval
	var idleSince [mhWorkers][]time.Time
	for w := range idleSince {
		for range perWorker {
			idleSince[w] = append(idleSince[w], from)
		}
	}
	var busy time.Duration
	started := make(map[[2]int64]time.Time) // by worker and id
	for _, e := range ev {
		key := [2]int64{int64(e.worker), e.id}
		if e.delta > 0 {
			started[key] = e.at
			if q := idleSince[e.worker]; len(q) > 0 {
				idle = append(idle, interval{q[0], e.at})
				idleSince[e.worker] = q[1:]
			}
			continue
		}
		idleSince[e.worker] = append(idleSince[e.worker], e.at)
		if st, ok := started[key]; ok {
			busy += e.at.Sub(st)
		}
	}
	for _, q := range idleSince {
		for _, t := range q {
			idle = append(idle, interval{t, to})
		}
	}
	type point struct {
		at           time.Time
		idle, waited int
	}
	var pts []point
	for _, i := range idle {
		if long := i.from.Add(limit); long.Before(i.to) {
			pts = append(pts, point{at: long, idle: 1}, point{at: i.to, idle: -1})
		}
	}
	for _, w := range waiting {
		if long := w.from.Add(limit); long.Before(w.to) {
			pts = append(pts, point{at: long, waited: 1}, point{at: w.to, waited: -1})
		}
	}
	slices.SortStableFunc(pts, func(a, b point) int { return a.at.Compare(b.at) })
	var both time.Duration
	nIdle, nWaited := 0, 0
	last := from
	for _, p := range append(pts, point{at: to}) {
		at := p.at
		if at.Before(from) {
			at = from
		}
		if at.After(to) {
			at = to
		}
		if nIdle > 0 && nWaited > 0 {
			both += at.Sub(last)
		}
		last = at
		nIdle += p.idle
		nWaited += p.waited
	}
	total := to.Sub(from).Seconds() * float64(slots)
	if total <= 0 {
		return both, 0
	}
	return both, busy.Seconds() / total
}

// timeToFill returns how long after t0 the app first ran slots jobs at
// once, all from hubs that count; negative if it never did.
func timeToFill(ev []mhEvent, t0 time.Time, slots int, counts func(hub int) bool) time.Duration {
	running := 0
	for _, e := range ev {
		if !counts(e.hub) {
			continue
		}
		running += e.delta
		if !e.at.Before(t0) && running >= slots {
			return e.at.Sub(t0)
		}
	}
	return -1
}

// firstSuccess returns how long after t0 the first request to hub that
// was sent then succeeded; negative if none did.
func firstSuccess(reqs []mhRequest, hub int, t0 time.Time) time.Duration {
	best := time.Duration(-1)
	for _, r := range reqs {
		if r.hub == hub && r.err == nil && !r.sent.Before(t0) {
			if d := r.done.Sub(t0); best < 0 || d < best {
				best = d
			}
		}
	}
	return best
}
