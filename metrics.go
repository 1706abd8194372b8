package reversehttp

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metricPrefix begins every metric's name, as Caddy's own begin with
// caddy_.
const metricPrefix = "caddy_reverse_http_"

// The metrics' descriptions. Histograms are the pools' own (see
// newPoolObs); everything else is read from the live pools at scrape time.
var (
	descQueueDepth = prometheus.NewDesc(metricPrefix+"queue_depth",
		"Requests waiting for a worker now.", []string{"pool"}, nil)
	descOldestWait = prometheus.NewDesc(metricPrefix+"queue_oldest_wait_seconds",
		"How long the request at the head of the queue has waited now; 0 when none waits.", []string{"pool"}, nil)
	descMaxQueue = prometheus.NewDesc(metricPrefix+"max_queue",
		"The pool's max_queue: requests arriving while this many wait get 503 at once.", []string{"pool"}, nil)
	descWorkers = prometheus.NewDesc(metricPrefix+"workers",
		"Worker connections (slots) now, by state: idle (waiting for a job) or busy (taken by a request).", []string{"pool", "state"}, nil)
	descRequests = prometheus.NewDesc(metricPrefix+"requests_total",
		"Requests the pool handled, by outcome: ok (a worker answered), queue_full, queue_timeout, worker_failed, response_timeout, cancelled_queued, cancelled_running, pool_closed, refused_estimate (admit_by_estimate).", []string{"pool", "outcome"}, nil)
	descRequeues = prometheus.NewDesc(metricPrefix+"requeues_total",
		"Requests given to another worker connection because the first could not have started them, by reason: declined, not_started, stale_connection.", []string{"pool", "reason"}, nil)
	descHandshakes = prometheus.NewDesc(metricPrefix+"handshakes_total",
		"Worker connections' attempts to join, by result: ok, or why they were refused. Those that name no pool of their address count under its first pool.", []string{"pool", "result"}, nil)
	descDisconnects = prometheus.NewDesc(metricPrefix+"worker_disconnects_total",
		"Worker connections that left the pool, by reason.", []string{"pool", "reason"}, nil)
	descCoalesced = prometheus.NewDesc(metricPrefix+"coalesced_total",
		"Requests that joined the job of an identical request instead of running one (coalesce).", []string{"pool"}, nil)
	descCoalescing = prometheus.NewDesc(metricPrefix+"coalescing_consumers",
		"Consumers waiting for, or being sent, the response of a shared job now (coalesce).", []string{"pool"}, nil)
	descCache = prometheus.NewDesc(metricPrefix+"cache_total",
		"Cache lookups by result (hit, miss, bypass: a request the cache may not answer) and what became of the misses' responses (stored, uncacheable, too_large).", []string{"pool", "result"}, nil)

	// Per worker, where the pool's config turns them on.
	descWorkerConns = prometheus.NewDesc(metricPrefix+"worker_connections",
		"A worker's connections now, by state (idle or busy); the worker is its name@host.", []string{"pool", "worker", "state"}, nil)
	descWorkerJobs = prometheus.NewDesc(metricPrefix+"worker_jobs_total",
		"Requests a worker answered; the worker is its name@host.", []string{"pool", "worker"}, nil)
	descWorkerFailures = prometheus.NewDesc(metricPrefix+"worker_failures_total",
		"Requests a worker took and failed (502, 504); the worker is its name@host.", []string{"pool", "worker"}, nil)

	poolDescs      = []*prometheus.Desc{descQueueDepth, descOldestWait, descMaxQueue, descWorkers, descRequests, descRequeues, descHandshakes, descDisconnects, descCoalesced, descCoalescing, descCache}
	perWorkerDescs = []*prometheus.Desc{descWorkerConns, descWorkerJobs, descWorkerFailures}
)

// collector is one config's view of its pools in that config's metrics
// registry. Caddy gives every config load a registry of its own, and the
// collector reads the live pools when scraped, so a reload neither doubles
// a series nor leaves a stale one, and a pool the new config removed has
// none. The counters and histograms belong to the pools, which outlive
// reloads, so they never go back.
type collector struct {
	pools []collectedPool
}

type collectedPool struct {
	pool      *Pool
	config    *PoolConfig
	perWorker bool
}

// registerMetrics adds the app's collector to the config's registry.
func (a *App) registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	c := &collector{}
	for _, name := range sortedKeys(a.pools) {
		pc := a.Pools[name]
		c.pools = append(c.pools, collectedPool{pool: a.pools[name], config: pc, perWorker: pc.Metrics != nil && pc.Metrics.PerWorker})
	}
	err := reg.Register(c)
	if errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		return nil
	}
	return err
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	perWorker := false
	for _, cp := range c.pools {
		cp.pool.obs.queueWait.Describe(ch)
		cp.pool.obs.jobDuration.Describe(ch)
		perWorker = perWorker || cp.perWorker
	}
	for _, d := range poolDescs {
		ch <- d
	}
	if perWorker {
		for _, d := range perWorkerDescs {
			ch <- d
		}
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, cp := range c.pools {
		p, o := cp.pool, cp.pool.obs
		q := p.queueState(now)
		gauge(ch, descQueueDepth, float64(q.waiting), p.name)
		gauge(ch, descOldestWait, q.oldest.Seconds(), p.name)
		gauge(ch, descMaxQueue, float64(cp.config.MaxQueue), p.name)
		gauge(ch, descWorkers, float64(q.idle), p.name, "idle")
		gauge(ch, descWorkers, float64(q.busy), p.name, "busy")
		counters(ch, descRequests, p.name, o.requests[:], outcomeNames[:])
		counters(ch, descRequeues, p.name, o.requeues[:], requeueNames[:])
		counters(ch, descHandshakes, p.name, o.handshakes[resultOK:], handshakeNames[resultOK:])
		counters(ch, descDisconnects, p.name, o.leaves[:], leaveNames[:])
		ch <- prometheus.MustNewConstMetric(descCoalesced, prometheus.CounterValue, float64(o.shared.coalesced.Load()), p.name)
		gauge(ch, descCoalescing, float64(o.shared.consumers.Load()), p.name)
		counters(ch, descCache, p.name, o.shared.cache[:], cacheResultNames[:])
		o.queueWait.Collect(ch)
		o.jobDuration.Collect(ch)
		if cp.perWorker {
			collectWorkers(ch, p)
		}
	}
}

func collectWorkers(ch chan<- prometheus.Metric, p *Pool) {
	for _, w := range p.workerStatuses() {
		gauge(ch, descWorkerConns, float64(w.Idle), p.name, w.ID, "idle")
		gauge(ch, descWorkerConns, float64(w.Busy), p.name, w.ID, "busy")
		ch <- prometheus.MustNewConstMetric(descWorkerJobs, prometheus.CounterValue, float64(w.Jobs), p.name, w.ID)
		ch <- prometheus.MustNewConstMetric(descWorkerFailures, prometheus.CounterValue, float64(w.Failures), p.name, w.ID)
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counters(ch chan<- prometheus.Metric, d *prometheus.Desc, pool string, values []atomic.Uint64, names []string) {
	for i := range values {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(values[i].Load()), pool, names[i])
	}
}
