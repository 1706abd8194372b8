package reversehttp

import (
	"context"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Placeholders the handler provides on the request's replacer. Their
// values are read when a placeholder is replaced: the worker, queue wait
// and attempts are there once a worker connection has taken the request,
// before its response head is written (so that a deferred `header` sees
// them), and final once the handler has ended (for `log_append`,
// `handle_errors` and the access log). Reading them late costs a request
// nothing until a placeholder is used.
const (
	placeholderPool      = "http.reverse_http.pool"
	placeholderWorker    = "http.reverse_http.worker"
	placeholderQueueWait = "http.reverse_http.queue_wait"
	placeholderAttempts  = "http.reverse_http.attempts"
)

// jobObs is what observation keeps of one request (job.obs).
type jobObs struct {
	off     bool // poolLimits.unobserved
	arrived time.Time
	tookAt  time.Time
	// waited is the time from arrival until tookAt, or until the end for
	// a request no worker took (once settled).
	waited  time.Duration
	settled bool
	outcome outcome
	// worker is the connection of the request's latest attempt; running
	// says that the request is with it (not back in the queue).
	worker  *workerConn
	running bool
	// answered is the status of the worker's final response; proxying
	// says that the proxy is still at work on it, which it leaves by a
	// panic when the response breaks off midway.
	answered int
	proxying bool
}

// observe starts observing j, which arrived at now.
func (j *job) observe(r *http.Request, now time.Time) {
	j.obs.off = j.limits.unobserved
	j.obs.arrived = now
	if j.obs.off {
		return
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Map(j.placeholder)
	}
}

// placeholder gives the value of one of the handler's placeholders.
func (j *job) placeholder(key string) (any, bool) {
	switch key {
	case placeholderPool:
		return j.pool.name, true
	case placeholderWorker:
		return j.workerName(), true
	case placeholderQueueWait:
		if j.obs.worker == nil && !j.obs.settled {
			return time.Since(j.obs.arrived), true
		}
		return j.obs.waited, true
	case placeholderAttempts:
		return j.attempts, true
	}
	return nil, false
}

// workerName is the name of the worker of j's latest attempt, if any.
func (j *job) workerName() string {
	if c := j.obs.worker; c != nil {
		return c.info.name
	}
	return ""
}

// took records that connection c took j for its next attempt.
func (j *job) took(c *workerConn) {
	o := &j.obs
	if o.off {
		return
	}
	o.tookAt = time.Now()
	o.waited = o.tookAt.Sub(o.arrived)
	o.worker, o.running = c, true
}

// requeued records that j goes to another connection: the last could not
// have started it.
func (j *job) requeued(ns notStarted) {
	j.obs.running = false
	if !j.obs.off {
		j.pool.obs.requeues[requeueOf(ns)].Add(1)
	}
}

// settle records how j ended: its outcome, queue wait and job duration,
// the worker's books, placeholders and access log fields, an error line for
// a 502 or 504, and a full queue.
func (h *Handler) settle(j *job, r *http.Request, id string) {
	o := &j.obs
	if o.off {
		return
	}
	po := j.pool.obs
	end := time.Now()
	oc := outcomeOf(j.err, o.running)
	if o.proxying {
		// The response broke off after its head: the consumer went, or
		// the worker failed midway.
		oc = outcomeWorkerFailed
		if r.Context().Err() != nil {
			oc = outcomeCancelledRunning
		}
	}
	po.requests[oc].Add(1)
	status := o.answered
	if j.err != nil {
		status = errorStatus(j.err)
	}
	if o.worker != nil {
		po.queueWait.Observe(o.waited.Seconds())
		po.recent.add(o.waited)
		held := end.Sub(o.tookAt)
		po.jobDuration.Observe(held.Seconds())
		if oc == outcomeOK {
			h.served(j.pool, held)
		}
		o.worker.count(oc == outcomeOK, status == http.StatusBadGateway || status == http.StatusGatewayTimeout || (o.proxying && oc == outcomeWorkerFailed))
	} else {
		o.waited = end.Sub(o.arrived)
	}
	o.settled, o.outcome = true, oc
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(zap.Object("reverse_http", (*jobLog)(j)))
	}
	if status == http.StatusBadGateway || status == http.StatusGatewayTimeout || (o.proxying && oc == outcomeWorkerFailed) {
		h.logFailure(j, id, status)
	}
	if oc == outcomeQueueFull {
		po.refusedFull()
	}
}

// jobLog is a settled job as the access log shows it.
type jobLog job

func (l *jobLog) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	j := (*job)(l)
	enc.AddString("pool", j.pool.name)
	enc.AddString("worker", j.workerName())
	enc.AddDuration("queue_wait", j.obs.waited)
	enc.AddInt("attempts", j.attempts)
	enc.AddString("outcome", outcomeNames[j.obs.outcome])
	return nil
}

// count adds a request that c's worker took to its books: answered by it,
// and failed (a 502 or 504, its own or the hub's, or a response cut off;
// not a request every worker declined).
func (c *workerConn) count(answered, failed bool) {
	w := c.obs.w
	if w == nil {
		return
	}
	if answered {
		w.jobs.Add(1)
	}
	if failed {
		w.failures.Add(1)
	}
}

// logFailure logs the one error line of a request that ended in a 502 or
// 504, or whose response broke off: the pool, the worker and the cause.
func (h *Handler) logFailure(j *job, id string, status int) {
	fields := []zap.Field{
		zap.String("pool", j.pool.name), zap.String("request_id", id), zap.Int("attempts", j.attempts),
	}
	if c := j.obs.worker; c != nil {
		fields = append(fields, zap.String("worker", c.info.name), zap.String("remote", c.remote()))
	}
	switch {
	case j.err != nil:
		fields = append(fields, zap.Int("status", status), zap.String("cause", j.err.Error()))
	case j.obs.proxying:
		fields = append(fields, zap.Int("status", j.obs.answered), zap.String("cause", "the worker's response broke off after its head"))
	default:
		fields = append(fields, zap.Int("status", status), zap.String("cause", "the worker answered "+http.StatusText(status)))
	}
	h.logger.Error("job failed", fields...)
}

// endCause is why a job's connection closes at the end of its response:
// the worker (or the hub, for a body the worker never took) ended it after
// a complete response, or the consumer stopped reading before the end. A
// worker failing midway was noted as its read failed.
func (b *jobBody) endCause(complete bool) error {
	if complete {
		return errClosedAfterJob
	}
	return context.Canceled
}
