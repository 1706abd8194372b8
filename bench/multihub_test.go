package main

import (
	"testing"
	"time"
)

func TestIdleWhileWaiting(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Twelve workers of one slot each (12 slots); worker 0 runs job 1 from
	// 0 to 10 ms and job 2 from 20 to 30; worker 1 runs job 3 from 0 to 40.
	// The others idle all along (for 40 ms each).
	ev := []mhEvent{
		{at: at(0), worker: 0, id: 1, delta: 1}, {at: at(0), worker: 1, id: 3, delta: 1},
		{at: at(10), worker: 0, id: 1, delta: -1},
		{at: at(20), worker: 0, id: 2, delta: 1},
		{at: at(30), worker: 0, id: 2, delta: -1},
		{at: at(40), worker: 1, id: 3, delta: -1},
	}
	// A request sent at 12 ms starts at 20: from 17 it has waited over
	// 5 ms, and worker 0 has idled over 5 ms since 15, the others since 5:
	// 3 ms count. One sent at 21 that starts at 24 does not count.
	waiting := []interval{{at(12), at(20)}, {at(21), at(24)}}
	both, busy := idleWhileWaiting(ev, waiting, at(0), at(40), 12, 5*time.Millisecond)
	if both != 3*time.Millisecond {
		t.Errorf("idle while waiting %v, want 3ms", both)
	}
	// Slot time used: 10 + 10 + 40 = 60 ms of 480.
	if want := 60.0 / 480; busy < want-1e-9 || busy > want+1e-9 {
		t.Errorf("busy %v, want %v", busy, want)
	}
}

func TestTimeToFill(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ev := []mhEvent{
		{at: at(0), hub: 0, delta: 1}, {at: at(1), hub: 2, delta: 1},
		{at: at(5), hub: 2, delta: -1}, {at: at(7), hub: 1, delta: 1},
	}
	ab := func(h int) bool { return h != 2 }
	if d := timeToFill(ev, at(3), 2, ab); d != 4*time.Millisecond {
		t.Errorf("filled after %v, want 4ms", d)
	}
	if d := timeToFill(ev, at(3), 3, ab); d >= 0 {
		t.Errorf("filled after %v, want never", d)
	}
}
