package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the binary's GOGC where the environment sets none. Its live
// heap is small (bodies are streamed through pooled buffers), so Go's
// default of 100 starts a collection every few hundred tiny jobs, and the
// collector took about a tenth of the CPU the binary spends forwarding one
// (bench/, table 1b). At 400 the heap may grow to five times the live one
// before a collection: a few MiB more.
const gcPercent = 400

// tuneGC sets gcPercent unless the environment's GOGC says otherwise, and
// returns the GOGC in effect.
func tuneGC() int {
	if _, set := os.LookupEnv("GOGC"); set {
		p := debug.SetGCPercent(100)
		debug.SetGCPercent(p)
		return p
	}
	debug.SetGCPercent(gcPercent)
	return gcPercent
}
