package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/reversehttp/reverse_http/worker"
)

// What --metrics serves: the worker's Prometheus metrics on /metrics, from
// a registry of its own (the worker is not Caddy), and the jobs running now
// on /jobs, as JSON.

// Limits of the metrics listener; variables so that tests may shorten them.
var (
	// metricsHeaderTimeout bounds how long a client may take to send a
	// request head; metricsIdleTimeout how long a kept-alive connection
	// waits for the next one.
	metricsHeaderTimeout = 5 * time.Second
	metricsIdleTimeout   = 60 * time.Second
	// metricsWriteTimeout bounds the writing of one response.
	metricsWriteTimeout = 30 * time.Second
	// scrapeTimeout bounds one scrape; promhttp answers 503 past it.
	scrapeTimeout = 10 * time.Second
)

const (
	// metricsMaxHeader bounds a request head; net/http allows 4 KiB more
	// before it answers 431.
	metricsMaxHeader = 8 << 10
	// maxScrapes is how many scrapes may run at once; more get 503.
	maxScrapes = 4
	// maxJobField bounds the request id and the path shown in /jobs.
	maxJobField = 256
)

// jobBuckets are the job duration histogram's buckets: 1 ms to about 10
// minutes, as the hub's.
var jobBuckets = prometheus.ExponentialBucketsRange(0.001, 600, 20)

// outcomes lists every worker.Outcome, so that each series exists from the
// start.
var outcomes = []worker.Outcome{worker.OutcomeOK, worker.OutcomeFailed, worker.OutcomeCancelled,
	worker.OutcomeDeclined, worker.OutcomeNoSlot}

// observer is the worker.Observer behind --metrics: it counts what the
// worker tells it and keeps the jobs running now.
type observer struct {
	reg      *prometheus.Registry
	jobs     map[worker.Outcome]prometheus.Counter
	duration prometheus.Histogram
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
	attempts *prometheus.CounterVec // hub, result
	reconn   *prometheus.CounterVec // hub

	// Set before the listener serves: what the gauges read.
	w      *worker.Worker
	health *worker.Health

	mu      sync.Mutex
	running map[*worker.Job]struct{}
}

// newObserver registers the worker's metrics, for the hubs given, in a
// registry of its own.
func newObserver(hubs []string) *observer {
	o := &observer{
		reg:     prometheus.NewRegistry(),
		jobs:    make(map[worker.Outcome]prometheus.Counter),
		running: make(map[*worker.Job]struct{}),
	}
	jobs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "reverse_http_worker_jobs_total",
		Help: "Jobs that arrived, by how they ended: ok (answered, whatever the status), failed (the upstream request failed once sent, " +
			"or broke off; the command or script failed or timed out), cancelled (the hub closed the connection before the response was whole), " +
			"declined (the upstream, command or script could not be reached), no_slot (no free slot or a gate closed).",
	}, []string{"outcome"})
	for _, oc := range outcomes {
		o.jobs[oc] = jobs.WithLabelValues(string(oc))
	}
	o.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "reverse_http_worker_job_duration_seconds",
		Help:    "Time from a job's arrival until its handler returned, for jobs that ran (ok, failed, cancelled).",
		Buckets: jobBuckets,
	})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "reverse_http_worker_job_body_bytes_total",
		Help: "Bytes of request bodies read (in) and response bodies written (out) by jobs that ended.",
	}, []string{"direction"})
	o.bytesIn, o.bytesOut = bytes.WithLabelValues("in"), bytes.WithLabelValues("out")
	o.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "reverse_http_worker_hub_connect_attempts_total",
		Help: "Attempts to connect to a hub (dial, TLS, handshake), by result: ok or failed.",
	}, []string{"hub", "result"})
	o.reconn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "reverse_http_worker_hub_reconnects_total",
		Help: "Times a hub address answered again after failed attempts, once it had answered before.",
	}, []string{"hub"})
	for _, h := range hubs {
		o.attempts.WithLabelValues(h, "ok")
		o.attempts.WithLabelValues(h, "failed")
		o.reconn.WithLabelValues(h)
	}
	o.reg.MustRegister(jobs, o.duration, bytes, o.attempts, o.reconn, gauges{o},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector())
	return o
}

func (o *observer) JobStarted(j *worker.Job) {
	o.mu.Lock()
	o.running[j] = struct{}{}
	o.mu.Unlock()
}

func (o *observer) JobEnded(j *worker.Job) {
	o.mu.Lock()
	delete(o.running, j)
	o.mu.Unlock()
	oc := j.Outcome()
	if c, ok := o.jobs[oc]; ok {
		c.Inc()
	}
	if oc == worker.OutcomeOK || oc == worker.OutcomeFailed || oc == worker.OutcomeCancelled {
		o.duration.Observe(j.Duration().Seconds())
	}
	o.bytesIn.Add(float64(j.BytesIn()))
	o.bytesOut.Add(float64(j.BytesOut()))
}

func (o *observer) HubAttempt(a worker.HubAttempt) {
	if a.Err != nil {
		o.attempts.WithLabelValues(a.Hub, "failed").Inc()
		return
	}
	o.attempts.WithLabelValues(a.Hub, "ok").Inc()
	if !a.First && a.Failures > 0 {
		o.reconn.WithLabelValues(a.Hub).Inc()
	}
}

// gauges reads the worker's state at each scrape.
type gauges struct{ o *observer }

var (
	slotsDesc = prometheus.NewDesc("reverse_http_worker_slots",
		"Jobs the worker runs at once (--slots).", nil, nil)
	busyDesc = prometheus.NewDesc("reverse_http_worker_slots_busy",
		"Slots that hold a job now.", nil, nil)
	connsDesc = prometheus.NewDesc("reverse_http_worker_hub_connections",
		"Handshaken connections to the hub now, idle or busy.", []string{"hub"}, nil)
	healthyDesc = prometheus.NewDesc("reverse_http_worker_healthy",
		"1 while the upstream can be reached (or the command or script run); 0 while it cannot, and the worker holds no connections.", nil, nil)
)

func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- slotsDesc
	ch <- busyDesc
	ch <- connsDesc
	ch <- healthyDesc
}

func (g gauges) Collect(ch chan<- prometheus.Metric) {
	w := g.o.w
	ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(w.Slots()))
	ch <- prometheus.MustNewConstMetric(busyDesc, prometheus.GaugeValue, float64(w.Busy()))
	for _, h := range w.Hubs() {
		ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.GaugeValue, float64(h.Connections), h.Hub)
	}
	up := 1.0
	if g.o.health != nil && g.o.health.Err() != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(healthyDesc, prometheus.GaugeValue, up)
}

// jobsPage is what /jobs answers.
type jobsPage struct {
	Slots int       `json:"slots"`
	Busy  int       `json:"busy"`
	Jobs  []jobView `json:"jobs"`
}

// jobView is one running job in /jobs.
type jobView struct {
	RequestID string    `json:"request_id"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Hub       string    `json:"hub"`
	StartedAt time.Time `json:"started_at"`
	Seconds   float64   `json:"seconds"`
	Status    int       `json:"status"`
	BytesIn   int64     `json:"bytes_in"`
	BytesOut  int64     `json:"bytes_out"`
}

// page returns the jobs running now, the oldest first.
func (o *observer) page() jobsPage {
	o.mu.Lock()
	jobs := make([]*worker.Job, 0, len(o.running))
	for j := range o.running {
		jobs = append(jobs, j)
	}
	o.mu.Unlock()
	slices.SortFunc(jobs, func(a, b *worker.Job) int { return a.Started.Compare(b.Started) })
	p := jobsPage{Slots: o.w.Slots(), Busy: o.w.Busy(), Jobs: make([]jobView, len(jobs))}
	now := time.Now()
	for i, j := range jobs {
		p.Jobs[i] = jobView{
			RequestID: cut(j.RequestID), Method: cut(j.Method), Path: cut(j.Path), Hub: j.Hub,
			StartedAt: j.Started.UTC(), Seconds: now.Sub(j.Started).Seconds(), Status: j.Status(),
			BytesIn: j.BytesIn(), BytesOut: j.BytesOut(),
		}
	}
	return p
}

// cut shortens s, which the hub's consumer chose, to maxJobField bytes.
func cut(s string) string {
	if len(s) <= maxJobField {
		return s
	}
	return strings.ToValidUTF8(s[:maxJobField], "") + "…"
}

// handler serves /metrics and /jobs.
func (o *observer) handler(logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		Registry:            o.reg,
		MaxRequestsInFlight: maxScrapes,
		Timeout:             scrapeTimeout,
	}))
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(o.page())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, progName+": /metrics (Prometheus), /jobs (the jobs running now, JSON)\n")
	})
	return mux
}

// metricsServer is the listener of --metrics.
type metricsServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// serveMetrics listens on addr and serves o there until stop.
func serveMetrics(addr string, o *observer, logger *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	s := &metricsServer{ln: ln, done: make(chan struct{}), srv: &http.Server{
		Handler:           o.handler(logger),
		ReadHeaderTimeout: metricsHeaderTimeout,
		ReadTimeout:       metricsHeaderTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		MaxHeaderBytes:    metricsMaxHeader,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}}
	logger.Info("serving metrics", "addr", ln.Addr().String(), "paths", "/metrics,/jobs")
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics listener failed", "err", err)
		}
	}()
	return s, nil
}

// stop ends the listener, letting a scrape in progress finish for a moment.
func (s *metricsServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
	<-s.done
}
