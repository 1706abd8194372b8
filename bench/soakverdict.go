package main

import (
	"slices"
	"sort"
	"strings"
	"time"
)

// outcome is what one consumer request got.
type outcome struct {
	id         string
	method     string
	late       bool // a POST whose handler reads the body after its work
	start, end time.Time
	cause      string // why it failed; "" when it was answered 200 and checked
	hung       bool   // no answer within the client timeout
	aborted    bool   // cut off by the soak's own end (an interrupted run)
	servedBy   string // the worker tag its answer names
}

func (o outcome) ok() bool { return o.cause == "" && !o.hung && !o.aborted }

// Causes of loss that the consumer's side names.
const (
	causeCut   = "response cut short"
	causeReset = "client: connection reset"
	causePipe  = "client: broken pipe"
	causeEOF   = "client: EOF"
	// Go's client closes its connection once it has a response that says
	// so, and an upload still running then fails this way.
	causeClosed = "client: use of closed network connection"
)

// workerFailure reports whether a consumer sees its job's worker fail in
// this way: 502, a response cut short after it began, or its connection to
// Caddy cut while it was still uploading (Caddy answers 502 and closes, and
// the reset can overtake the answer).
func workerFailure(cause string) bool {
	switch cause {
	case "status 502", causeCut, causeReset, causePipe, causeEOF, causeClosed:
		return true
	}
	return false
}

// kill is one SIGKILL of a worker process.
type kill struct {
	tag   string // the process's tag: unique to this process
	slots int    // its connections, so at most this many jobs died with it
	at    time.Time
	// died is when the process was reaped: by then the kernel had closed
	// its sockets and sent their ends to the hub. On a busy machine a
	// killed process may take tens of milliseconds to die.
	died time.Time
}

// lossClass says why a lost request was lost.
type lossClass int

const (
	lossOther lossClass = iota
	// lossKilled: it started to run on a worker process that was then
	// killed, and its consumer's answer came after the kill.
	lossKilled
	// lossKilledInFlight: Caddy's server read it but it never reached a
	// job handler; it was sent before a killed worker died (or within
	// inFlightSlack after: the hub may hand out a dead connection until it
	// reads its end), failed as a dead worker's job fails, after the kill
	// and within inFlightWindow of the death, and that kill has a
	// connection left to account for it (a kill costs at most one job per
	// connection of the killed worker). Where the hub's error names the
	// worker connection, it must be the killed worker's.
	lossKilledInFlight
	// lossMisbehaver: a misbehaving worker connection (a test attacker)
	// received the job.
	lossMisbehaver
	// lossHandover: Caddy's HTTP server never read the request: its
	// connection was reset while a reload handed the listening socket to
	// the new config (on Linux Caddy binds a new SO_REUSEPORT socket and
	// closes the old one, and the kernel resets the connections still
	// waiting in the old one's accept queue). This happens before any
	// handler, the plugin's included, can see the request.
	lossHandover
)

var lossNames = map[lossClass]string{
	lossKilled:         "ran on a worker that was killed",
	lossKilledInFlight: "in flight at a kill, never reached the handler",
	lossMisbehaver:     "given to a misbehaving worker connection",
	lossHandover:       "reset in Caddy's listener handover at a reload",
	lossOther:          "OTHER: none of the above",
}

// inFlightWindow is how soon after its worker's death a job that died
// with it fails: the kernel closes a killed process's sockets at once, and the hub
// answers 502 when it reads their end.
const inFlightWindow = 500 * time.Millisecond

// inFlightSlack is how long after a worker's death the hub may still hand
// a job to one of its connections: until its idle watcher reads the end
// the kernel sent. Later than that is the hub's defect.
const inFlightSlack = 50 * time.Millisecond

// handoverSlack is how long after a reload's POST /load returned a
// connection reset of its listener handover may still reach the consumer.
const handoverSlack = 100 * time.Millisecond

// evidence is what the soak knows about where each job went.
type evidence struct {
	runs    map[string][]execution // job id -> its runs at a handler
	kills   []kill
	taken   map[string]string // job id -> the kind of attacker connection it was given to
	seen    map[string]bool   // job ids in Caddy's access log; nil if the log could not be read
	reloads []reload
	// jobWorker names, by job id, the worker whose connection the hub's
	// error for the job names (its debug log maps addresses to names).
	jobWorker map[string]string
}

// attribute classifies each lost request (those not ok, not hung, not
// aborted).
func attribute(outcomes []outcome, ev evidence) map[string]lossClass {
	byTag := make(map[string]int, len(ev.kills))
	for i, k := range ev.kills {
		byTag[k.tag] = i
	}
	charged := make([]int, len(ev.kills)) // jobs each kill accounts for
	classes := make(map[string]lossClass)
	var unexplained []outcome
	for _, o := range outcomes {
		if o.ok() || o.hung || o.aborted {
			continue
		}
		classes[o.id] = lossOther
		if !workerFailure(o.cause) {
			continue
		}
		if _, ok := ev.taken[o.id]; ok {
			classes[o.id] = lossMisbehaver
			continue
		}
		if ki, ok := killedRun(ev.runs[o.id], byTag, ev.kills, o.end); ok {
			classes[o.id] = lossKilled
			charged[ki]++
			continue
		}
		if len(ev.runs[o.id]) > 0 {
			continue
		}
		if ev.seen != nil && !ev.seen[o.id] {
			if o.cause != "status 502" && duringReload(o.end, ev.reloads) {
				classes[o.id] = lossHandover
			}
			continue
		}
		unexplained = append(unexplained, o)
	}
	// Jobs that never reached a handler go to the latest kill before their
	// failure that fits and has a connection left to account for them,
	// earliest failures first.
	sort.Slice(unexplained, func(i, j int) bool { return unexplained[i].end.Before(unexplained[j].end) })
	for _, o := range unexplained {
		for ki := len(ev.kills) - 1; ki >= 0; ki-- {
			k := ev.kills[ki]
			if k.at.After(o.end) || o.end.Sub(k.died) > inFlightWindow || o.start.After(k.died.Add(inFlightSlack)) || charged[ki] >= k.slots {
				continue
			}
			if w := ev.jobWorker[o.id]; w != "" && w != k.tag {
				continue
			}
			charged[ki]++
			classes[o.id] = lossKilledInFlight
			break
		}
	}
	return classes
}

// duringReload reports whether t falls within a reload (or handoverSlack
// after it).
func duringReload(t time.Time, reloads []reload) bool {
	for _, r := range reloads {
		if !t.Before(r.start) && !t.After(r.start.Add(r.took+handoverSlack)) {
			return true
		}
	}
	return false
}

// killedRun finds a run of the job on a worker process killed before the
// consumer's answer came (at end).
func killedRun(runs []execution, byTag map[string]int, kills []kill, end time.Time) (int, bool) {
	for _, r := range runs {
		if ki, ok := byTag[r.tag]; ok && !kills[ki].at.After(end) {
			return ki, true
		}
	}
	return 0, false
}

// ranTwice returns the ids of the consumer requests that started to run
// more than once, sorted.
func ranTwice(outcomes []outcome, runs map[string][]execution) []string {
	var ids []string
	for _, o := range outcomes {
		if len(runs[o.id]) > 1 {
			ids = append(ids, o.id)
		}
	}
	slices.Sort(ids)
	return ids
}

// tagGroup is the worker a process tag belongs to ("chaos-pkg.12" →
// "chaos-pkg").
func tagGroup(tag string) string {
	g, _, _ := strings.Cut(tag, ".")
	return g
}

// tolerance is how far Caddy's figures may stay above where they started
// once the soak has ended and settled: after <= before x (1+frac) + abs.
// The goroutines are exact and leak by the request or the connection, so
// their margin is small. RSS falls back only as fast as Go's scavenger
// returns memory, and the heap keeps pooled buffers, so theirs are wider;
// a leak of a kilobyte per request would still pass neither over a full
// run's 40,000 requests.
type tolerance struct {
	goroutinesFrac float64
	goroutinesAbs  int
	rssFrac        float64
	rssAbs         int64
	heapFrac       float64
	heapAbs        int64
}

var soakTolerance = tolerance{
	goroutinesFrac: 0.1, goroutinesAbs: 10,
	rssFrac: 0.25, rssAbs: 32 << 20,
	heapFrac: 0.25, heapAbs: 16 << 20,
}

func within(before, after, frac, abs float64) bool { return after <= before*(1+frac)+abs }

func (t tolerance) goroutinesOK(before, after int) bool {
	return within(float64(before), float64(after), t.goroutinesFrac, float64(t.goroutinesAbs))
}

func (t tolerance) rssOK(before, after int64) bool {
	return within(float64(before), float64(after), t.rssFrac, float64(t.rssAbs))
}

func (t tolerance) heapOK(before, after uint64) bool {
	return within(float64(before), float64(after), t.heapFrac, float64(t.heapAbs))
}

// settledOK reports whether all of Caddy's figures are back within t.
func (t tolerance) settledOK(before, after caddyFigures) bool {
	return t.goroutinesOK(before.goroutines, after.goroutines) && t.rssOK(before.rss, after.rss) && t.heapOK(before.heap, after.heap)
}
