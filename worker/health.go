package worker

import (
	"context"
	"sync"
	"time"
)

// Tunables of probing; variables so that tests may shorten them.
var (
	probeBackoffMin = 100 * time.Millisecond
	probeBackoffMax = 2 * time.Second
	probeTimeout    = 2 * time.Second
)

// Health is the state of what a worker's Handler depends on, such as the
// upstream of a [Forwarder]. It starts up. The handler calls Fail when it
// finds the dependency unreachable (and [Decline]s the job); while it is
// down, the Worker offers the hub no slots: it closes its idle connections,
// dials no new ones, and runs the probe with backoff (100 ms doubling to
// 2 s) until it succeeds. Then Health is up again and the slots redial.
type Health struct {
	probe func(context.Context) error

	mu      sync.Mutex
	err     error         // why it is down; nil while up
	changed chan struct{} // closed and replaced at every change
}

// NewHealth returns a Health, up, that probes with probe. The probe should
// be cheap (a TCP dial, say) and return nil once the dependency answers;
// its context carries a timeout of a few seconds. A nil probe means the
// Worker only waits for the backoff before it tries again.
func NewHealth(probe func(ctx context.Context) error) *Health {
	return &Health{probe: probe, changed: make(chan struct{})}
}

// Fail marks the dependency down because of err (which must not be nil).
// Failing while down only updates the reason.
func (h *Health) Fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	wasUp := h.err == nil
	h.err = err
	if wasUp {
		h.signal()
	}
}

// Err returns nil while the dependency is up, and why it is down otherwise.
func (h *Health) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Changed returns a channel that is closed at the next change between up
// and down. Take it before reading Err, so that no change is missed.
func (h *Health) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

func (h *Health) setUp() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		h.err = nil
		h.signal()
	}
}

// signal wakes the waiters on Changed; h.mu is held.
func (h *Health) signal() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// waitUp blocks until h is up. It returns false if ctx ends first.
func (h *Health) waitUp(ctx context.Context) bool {
	for {
		changed := h.Changed()
		if h.Err() == nil {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// probeBackoff is the delay before probe number attempt (0-based): doubling
// from probeBackoffMin to probeBackoffMax, jittered within its upper half.
func probeBackoff(attempt int) time.Duration {
	d := probeBackoffMax
	if attempt < 30 {
		if s := probeBackoffMin << attempt; s > 0 && s < probeBackoffMax {
			d = s
		}
	}
	return d/2 + jitter(d/2)
}

// watchHealth runs until ctx ends: whenever the Worker's Health goes down,
// it closes the idle connections to the hub and probes until it is up.
func (w *Worker) watchHealth(ctx context.Context, t *connTracker) {
	h := w.health
	for {
		changed := h.Changed()
		if h.Err() == nil {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			}
		}
		t.retireIdle(nil)
		if !w.probeUntilUp(ctx) {
			return
		}
	}
}

// probeUntilUp probes with backoff until the probe succeeds, and then marks
// the Health up. It returns false if ctx ends first.
func (w *Worker) probeUntilUp(ctx context.Context) bool {
	h := w.health
	for attempt := 0; ; attempt++ {
		if !sleepCtx(ctx, probeBackoff(attempt)) {
			return false
		}
		var err error
		if h.probe != nil {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			err = h.probe(pctx)
			cancel()
		}
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			h.setUp()
			return true
		}
		h.Fail(err)
		w.log.Debug("probe failed", "attempt", attempt+1, "err", err)
	}
}

// sleepCtx waits for d. It returns false if ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
