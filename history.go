package reversehttp

import (
	"time"
)

// A pool's recent history, for the status page: one sample every
// historyInterval, the last historyLen of them (five minutes).
const (
	historyInterval = 2 * time.Second
	historyLen      = 150
)

// sample is the state of a pool at one moment, and what happened in the
// interval before it.
type sample struct {
	T          int64   `json:"t"` // Unix time in milliseconds
	QueueDepth int     `json:"queue_depth"`
	OldestWait float64 `json:"oldest_wait_seconds"`
	Busy       int     `json:"busy"`
	Idle       int     `json:"idle"`
	// Of the requests that a worker took in the interval.
	WaitMean float64 `json:"wait_mean_seconds"`
	WaitMax  float64 `json:"wait_max_seconds"`
	// Requests that ended in the interval: answered by a worker, and
	// refused with 503 (queue full, queue timeout, pool closed).
	Served  uint64 `json:"served"`
	Refused uint64 `json:"refused"`
}

// history is a ring of samples; guarded by poolObs.mu.
type history struct {
	buf     [historyLen]sample
	n, next int
	last    time.Time
	// Counter values at the last sample.
	served, refused uint64
}

// sample records the pool's state now. Configs that overlap during a
// reload both sample their pools; a sample that comes too soon after the
// last is dropped.
func (o *poolObs) sample(now time.Time) {
	q := o.pool.queueState(now)
	mean, maxWait := o.recent.take()
	served := o.requests[outcomeOK].Load()
	refused := o.requests[outcomeQueueFull].Load() + o.requests[outcomeQueueTimeout].Load() + o.requests[outcomePoolClosed].Load()
	o.mu.Lock()
	defer o.mu.Unlock()
	h := &o.history
	if now.Sub(h.last) < historyInterval/2 {
		return
	}
	h.last = now
	h.buf[h.next] = sample{
		T: now.UnixMilli(), QueueDepth: q.waiting, OldestWait: q.oldest.Seconds(), Busy: q.busy, Idle: q.idle,
		WaitMean: mean.Seconds(), WaitMax: maxWait.Seconds(),
		Served: served - h.served, Refused: refused - h.refused,
	}
	h.served, h.refused = served, refused
	h.next = (h.next + 1) % historyLen
	h.n = min(h.n+1, historyLen)
}

// samples returns the history, oldest first.
func (o *poolObs) samples() []sample {
	o.mu.Lock()
	defer o.mu.Unlock()
	h := &o.history
	out := make([]sample, 0, h.n)
	for i := range h.n {
		out = append(out, h.buf[(h.next-h.n+i+historyLen)%historyLen])
	}
	return out
}

// startSampling samples the app's pools every historyInterval until Stop
// closes a.sampling, which Provision made. (Caddy copies the App when an
// event names it as its origin, so no field changes once it has started.)
func (a *App) startSampling() {
	stop := a.sampling
	pools := make([]*Pool, 0, len(a.pools))
	for _, name := range sortedKeys(a.pools) {
		pools = append(pools, a.pools[name])
	}
	go func() {
		tick := time.NewTicker(historyInterval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				for _, p := range pools {
					p.obs.sample(now)
				}
			}
		}
	}()
}
