package reversehttp

import (
	"context"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Placeholders the handler sets on the request's replacer. The worker,
// queue wait and attempts are set when a worker connection takes the
// request, before its response head is written (so that a deferred
// `header` sees them), and again when the handler ends (for `log_append`,
// `handle_errors` and the access log).
const (
	placeholderPool      = "http.reverse_http.pool"
	placeholderWorker    = "http.reverse_http.worker"
	placeholderQueueWait = "http.reverse_http.queue_wait"
	placeholderAttempts  = "http.reverse_http.attempts"
)

// jobObs is what observation keeps of one request (job.obs).
type jobObs struct {
	off     bool // poolLimits.unobserved
	repl    *caddy.Replacer
	arrived time.Time
	tookAt  time.Time
	waited  time.Duration // from arrival until tookAt
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
	j.obs.repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if j.obs.repl != nil {
		j.obs.repl.Set(placeholderPool, j.pool.name)
	}
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
	if o.repl != nil {
		o.repl.Set(placeholderWorker, c.info.name)
		o.repl.Set(placeholderQueueWait, o.waited)
		o.repl.Set(placeholderAttempts, j.attempts+1)
	}
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
	waited := end.Sub(o.arrived)
	if o.worker != nil {
		waited = o.waited
		po.queueWait.Observe(waited.Seconds())
		po.recent.add(waited)
		po.jobDuration.Observe(end.Sub(o.tookAt).Seconds())
		o.worker.count(oc, status)
	}
	name := ""
	if o.worker != nil {
		name = o.worker.info.name
	}
	if o.repl != nil {
		o.repl.Set(placeholderWorker, name)
		o.repl.Set(placeholderQueueWait, waited)
		o.repl.Set(placeholderAttempts, j.attempts)
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(zap.Dict("reverse_http",
			zap.String("pool", j.pool.name), zap.String("worker", name), zap.Duration("queue_wait", waited),
			zap.Int("attempts", j.attempts), zap.String("outcome", outcomeNames[oc])))
	}
	if status == http.StatusBadGateway || status == http.StatusGatewayTimeout || (o.proxying && oc == outcomeWorkerFailed) {
		h.logFailure(j, id, status)
	}
	if oc == outcomeQueueFull {
		po.refusedFull()
	}
}

// count adds a request that c's worker took to its books: answered, or
// failed (a 502 or 504, its own or the hub's).
func (c *workerConn) count(oc outcome, status int) {
	w := c.obs.w
	if w == nil {
		return
	}
	if oc == outcomeOK {
		w.jobs.Add(1)
	}
	if oc == outcomeWorkerFailed || oc == outcomeResponseTimeout ||
		status == http.StatusBadGateway || status == http.StatusGatewayTimeout {
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
