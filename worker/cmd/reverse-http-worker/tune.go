package main

import (
	"os"
	"runtime"
	"runtime/debug"
)

// The binary forwards jobs that run in another process: its own work per
// job is small, and the runtime's defaults, made for a Go program that
// does the work itself, cost it CPU that the app beside it could use.
// Where the environment sets GOGC or GOMAXPROCS, those win.

// gcPercent is the binary's GOGC. Its live heap is small (bodies are
// streamed through pooled buffers), so at Go's default of 100 a collection
// starts every few hundred tiny jobs. At 400 the heap may grow to five
// times the live one before a collection: a few MiB more.
const gcPercent = 400

// slotsPerProc is how many slots share one thread running Go code
// (GOMAXPROCS). A core forwards about 12,000 tiny jobs a second (bench/,
// table 1b), so eight slots of jobs as short as a millisecond keep less
// than one busy, and goroutines that hand a job to each other on the same
// thread skip a wake-up of another: about a tenth less CPU per job in the
// tiny-job benchmark. Large bodies were forwarded as fast on one thread.
const slotsPerProc = 8

// tuning is what tuneRuntime set, for the starting log line.
type tuning struct{ procs, gcPercent int }

// tuneRuntime sets GOGC and GOMAXPROCS for a worker with slots slots
// unless the environment sets them, and returns the values in effect.
// main calls it; the tests, which run the binary's code in their own
// process, do not.
func tuneRuntime(slots int) tuning {
	var t tuning
	if _, set := os.LookupEnv("GOGC"); set {
		t.gcPercent = debug.SetGCPercent(100)
		debug.SetGCPercent(t.gcPercent)
	} else {
		debug.SetGCPercent(gcPercent)
		t.gcPercent = gcPercent
	}
	t.procs = runtime.GOMAXPROCS(0) // Go's own default honours a cgroup's CPU limit
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		t.procs = min(t.procs, procsFor(slots))
		runtime.GOMAXPROCS(t.procs)
	}
	return t
}

// procsFor is the GOMAXPROCS for slots slots, before the runtime's own
// ceiling: one per slotsPerProc slots, at least one.
func procsFor(slots int) int { return max(1, (slots+slotsPerProc-1)/slotsPerProc) }
