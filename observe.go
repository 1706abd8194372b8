package reversehttp

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"
)

// poolObs is what a pool keeps for its operators: the counters and
// histograms behind its metrics (metrics.go), its books of workers
// (workers.go), a short history of its queue (history.go) and the events
// it emits (events.go). It belongs to the Pool, so that it survives
// reloads as the pool does; the hub's code feeds it through small hooks
// (joinLocked, left, leaving, the job's took and settle).
type poolObs struct {
	pool *Pool

	// Counters since the pool was created, by label value.
	requests   [numOutcomes]atomic.Uint64
	requeues   [numRequeueReasons]atomic.Uint64
	handshakes [numHandshakeResults]atomic.Uint64
	leaves     [numLeaveReasons]atomic.Uint64
	shared     shareObs // coalescing and caching (share.go)

	queueWait   prometheus.Histogram
	jobDuration prometheus.Histogram
	// recent sums the queue waits since the last history sample.
	recent waitWindow
	// A full queue is logged and announced at most once per
	// queueFullInterval: when (unix nanoseconds), and how many requests
	// it refused since.
	fullAt      atomic.Int64
	fullRefused atomic.Int64

	mu      sync.Mutex
	workers map[string]*workerRecord // by workerConn.key
	drained map[string]time.Time     // worker names or keys, since when
	view    poolView
	history history
	events  eventQueue
}

// poolView is what the config in force says about a pool, as operators see
// it, and where its events go.
type poolView struct {
	config *PoolConfig // provisioned; read only
	events *caddyevents.App
	ctx    caddy.Context
}

// Histogram buckets, in seconds. Queue waits run from a free worker (well
// under a millisecond) to the queue timeout; jobs are expensive, from
// milliseconds to minutes.
var (
	queueWaitBuckets   = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	jobDurationBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
)

func newPoolObs(p *Pool) *poolObs {
	pool := prometheus.Labels{"pool": p.name}
	return &poolObs{
		pool:    p,
		workers: make(map[string]*workerRecord),
		drained: make(map[string]time.Time),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        metricPrefix + "queue_wait_seconds",
			Help:        "Time from a request's arrival until a worker connection took it, for requests a worker took.",
			Buckets:     queueWaitBuckets,
			ConstLabels: pool,
		}),
		jobDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        metricPrefix + "job_duration_seconds",
			Help:        "Time from a worker connection taking a request until the end of its response, for requests a worker took.",
			Buckets:     jobDurationBuckets,
			ConstLabels: pool,
		}),
	}
}

// setView makes pc, as provisioned by the config in force, what operators
// see of the pool, and ev (nil for none) where its events go.
func (o *poolObs) setView(pc *PoolConfig, ev *caddyevents.App, ctx caddy.Context) {
	o.mu.Lock()
	o.view = poolView{config: pc, events: ev, ctx: ctx}
	o.mu.Unlock()
}

func (o *poolObs) getView() poolView {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.view
}

// waitWindow accumulates queue waits between two history samples.
type waitWindow struct {
	sum   atomic.Int64 // nanoseconds
	count atomic.Int64
	max   atomic.Int64
}

func (w *waitWindow) add(d time.Duration) {
	w.sum.Add(int64(d))
	w.count.Add(1)
	for {
		m := w.max.Load()
		if int64(d) <= m || w.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// take returns the window's mean and maximum and starts a new window.
func (w *waitWindow) take() (mean, maxWait time.Duration) {
	sum, n := w.sum.Swap(0), w.count.Swap(0)
	maxWait = time.Duration(w.max.Swap(0))
	if n > 0 {
		mean = time.Duration(sum / n)
	}
	return mean, maxWait
}
