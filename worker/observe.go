package worker

import (
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Observation: what a Worker tells an [Observer] ([Config.Observer]) of
// its jobs and of its attempts to connect, and what it reports of its
// state at any time ([Worker.Busy], [Worker.Hubs]). Without an Observer a
// job costs a few words in its record and nothing else: only for an
// Observer are its ResponseWriter and body wrapped, to count bytes, and one
// Job allocated.

// Observer is told what a Worker does, for metrics and for a list of the
// jobs running now. The Worker calls it from many goroutines, on the paths
// of jobs and connections: its methods must be safe for concurrent use,
// quick, and must not block.
type Observer interface {
	// JobStarted is called when a job has taken a slot, right before the
	// Handler is called.
	JobStarted(j *Job)
	// JobEnded is called once for every job that arrived: when the
	// Handler of a started job has returned (or panicked), and for a
	// job declined for want of a free slot (OutcomeNoSlot), which was
	// not started. j.Outcome and j.Duration tell how it ended.
	JobEnded(j *Job)
	// HubAttempt is called after every attempt to connect to a hub
	// address (a dial, the TLS handshake and, with the ptth protocol,
	// the handshake), with what came of it.
	HubAttempt(a HubAttempt)
}

// Outcome is how a job ended, as the worker saw it.
type Outcome string

const (
	// OutcomeOK: the Handler answered, whatever the status of its
	// response.
	OutcomeOK Outcome = "ok"
	// OutcomeFailed: the worker answered in the Handler's stead or cut
	// the response off, because what the job needed failed after the
	// job was accepted: the Forwarder's upstream request failed once
	// sent (502) or broke off mid-response, a command or CGI script
	// failed or timed out (502, 504), or the Handler panicked.
	OutcomeFailed Outcome = "failed"
	// OutcomeCancelled: the hub closed the connection before the job
	// ended (its consumer went away, or the hub drained), or the
	// Worker's drain timeout closed it: the Forwarder, an Exec or a CGI
	// saw it, or the Handler panicked or had sent no response head by
	// then. A Handler that returns normally after it sent a head counts
	// as OutcomeOK, since the hub may close a connection once it has read
	// a whole response.
	OutcomeCancelled Outcome = "cancelled"
	// OutcomeDeclined: the Handler declined the job ([Decline]), as the
	// Forwarder does while its upstream cannot be reached; the hub gave
	// it to another worker.
	OutcomeDeclined Outcome = "declined"
	// OutcomeNoSlot: the job arrived when no slot was free or a gate was
	// closed, and was declined before the Handler saw it.
	OutcomeNoSlot Outcome = "no_slot"
)

// Job is a job as an [Observer] sees it. Its fields are set before the
// Observer first sees it and do not change; its methods may be called
// from any goroutine at any time.
type Job struct {
	// RequestID is the request's X-Request-Id (the hub sets one on every
	// request); "" if it has none.
	RequestID string
	Method    string
	// Path is the request's path, without the query, which may hold
	// secrets.
	Path string
	// Hub is the hub it came from, as configured ([Config.Hub], Hubs).
	Hub string
	// Started is when it reached the Worker (its head had been read).
	Started time.Time

	in, out  atomic.Int64
	status   atomic.Int32
	duration atomic.Int64
	length   int64        // the Content-Length of the response head; -1 for none. On the Handler's goroutine.
	outcome  atomic.Int32 // index in outcomes + 1, set before JobEnded

	rw   jobWriter
	body jobBody
}

// BytesIn is how many bytes of the request body the Handler has read.
func (j *Job) BytesIn() int64 { return j.in.Load() }

// BytesOut is how many bytes of the response body the Handler has written.
func (j *Job) BytesOut() int64 { return j.out.Load() }

// Status is the status code of the response head the Handler has sent; 0
// while it has sent none.
func (j *Job) Status() int { return int(j.status.Load()) }

// Outcome is how the job ended; "" while it runs.
func (j *Job) Outcome() Outcome {
	if i := j.outcome.Load(); i > 0 {
		return outcomes[i-1]
	}
	return ""
}

// outcomes lists every Outcome, for Job's compact record of one.
var outcomes = [...]Outcome{OutcomeOK, OutcomeFailed, OutcomeCancelled, OutcomeDeclined, OutcomeNoSlot}

// Duration is how long the job took, from Started until its Handler
// returned; 0 while it runs.
func (j *Job) Duration() time.Duration { return time.Duration(j.duration.Load()) }

// newJobInfo describes the job r, which came on c.
func newJobInfo(r *http.Request, c *hubConn) *Job {
	return &Job{
		length:    -1,
		RequestID: r.Header.Get("X-Request-Id"),
		Method:    r.Method,
		Path:      r.URL.Path,
		Hub:       c.ep.name,
		Started:   time.Now(),
	}
}

// end records how the job ended and tells the Observer.
func (j *Job) end(obs Observer, o Outcome) {
	j.duration.Store(int64(time.Since(j.Started)))
	for i, oc := range outcomes {
		if oc == o {
			j.outcome.Store(int32(i + 1))
		}
	}
	obs.JobEnded(j)
}

// observe wraps the ResponseWriter and the body of the job j, which has a
// slot, to count their bytes, and tells the Observer that it starts. The
// Worker calls j.ended once its Handler has returned.
func (w *Worker) observe(j *job, rw http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request) {
	info := newJobInfo(r, j.hc)
	j.info, j.ctx = info, r.Context()
	info.rw = jobWriter{ResponseWriter: rw, j: info}
	rw = &info.rw
	// A request without a body keeps http.NoBody, which the transport
	// and others recognise as "no body".
	if r.Body != nil && r.Body != http.NoBody {
		info.body = jobBody{ReadCloser: r.Body, j: info}
		r.Body = &info.body
	}
	w.cfg.Observer.JobStarted(info)
	return rw, r
}

// ended tells the Observer how the job j, which observe saw start, ended.
//
// A closed connection alone does not make a job cancelled: the hub may
// close it (for a reload, say) as soon as it has read a whole response,
// and a response whose length was declared may be whole before the
// Handler has returned. So a job is cancelled when a Handler of this
// package says so, or when the connection had closed and the response
// was not whole: the Handler panicked (as one does when its writes fail),
// or had not written all the bytes its head declared, or declared none
// (the end of a chunked body, or the head itself, is sent only once the
// Handler has returned).
func (j *job) ended() {
	gone := j.ctx.Err() != nil
	whole := j.returned && j.info.status.Load() != 0 && j.info.length >= 0 && j.info.out.Load() >= j.info.length
	o := OutcomeOK
	switch {
	case j.declined:
		o = OutcomeDeclined
	case j.cancelled || gone && !whole:
		o = OutcomeCancelled
	case j.failed || !j.returned:
		o = OutcomeFailed
	}
	j.info.end(j.worker.cfg.Observer, o)
}

// observeNoSlot tells the Observer of a job declined for want of a slot.
func (w *Worker) observeNoSlot(r *http.Request, c *hubConn) {
	if w.cfg.Observer != nil {
		newJobInfo(r, c).end(w.cfg.Observer, OutcomeNoSlot)
	}
}

// jobFailed records that the job w answers failed after it was accepted
// (see OutcomeFailed). The Handlers of this package call it where they
// answer 502 or 504 themselves.
func jobFailed(w http.ResponseWriter) {
	if j := findJob(w); j != nil {
		j.failed = true
	}
}

// jobCancelled records that the Handler of the job w saw the hub close the
// connection (see OutcomeCancelled).
func jobCancelled(w http.ResponseWriter) {
	if j := findJob(w); j != nil {
		j.cancelled = true
	}
}

// findJob returns the job that w, or a ResponseWriter it wraps, answers;
// nil if none.
func findJob(w http.ResponseWriter) *job {
	for w != nil {
		if v, ok := jobs.Load(w); ok {
			return v.(*job)
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// jobWriter counts the response bytes of an observed job and notes its
// status.
type jobWriter struct {
	http.ResponseWriter
	j *Job
}

func (w *jobWriter) WriteHeader(code int) {
	if code >= 200 {
		w.head(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *jobWriter) Write(p []byte) (int, error) {
	if w.j.status.Load() == 0 {
		w.head(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.j.out.Add(int64(n))
	return n, err
}

// head notes the status and the declared length of the response head
// being sent.
func (w *jobWriter) head(code int) {
	if !w.j.status.CompareAndSwap(0, int32(code)) {
		return
	}
	w.j.length = -1
	if cl := w.ResponseWriter.Header().Get("Content-Length"); cl != "" { // ParseInt's error would allocate
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.j.length = n
		}
	}
}

// Flush and FlushError serve Handlers that look for http.Flusher; others
// reach everything through Unwrap and http.ResponseController.
func (w *jobWriter) Flush() { _ = w.FlushError() }

func (w *jobWriter) FlushError() error {
	if f, ok := w.ResponseWriter.(interface{ FlushError() error }); ok {
		return f.FlushError() // the server's, without a controller per flush
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (w *jobWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// jobBody counts the request body bytes an observed job reads.
type jobBody struct {
	io.ReadCloser
	j *Job
}

func (b *jobBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.j.in.Add(int64(n))
	return n, err
}

// HubAttempt is one attempt to connect to a hub address and what came of
// it.
type HubAttempt struct {
	// Hub is the hub as configured; Address the address dialled.
	Hub, Address string
	// Err says why the attempt failed; nil if it succeeded.
	Err error
	// Failures, for an attempt that succeeded, counts the failed ones
	// to this address since it last answered: 0 when it answered at
	// once.
	Failures int
	// First: the address's first successful attempt.
	First bool
}

// outage follows the failed attempts to connect to one hub address since
// it last answered, for the log line that says it answers (again) and
// for the Observer.
type outage struct {
	mu       sync.Mutex
	failures int
	since    time.Time // of the first failure
	answered bool      // an attempt has succeeded once
}

func (o *outage) failed() {
	o.mu.Lock()
	if o.failures == 0 {
		o.since = time.Now()
	}
	o.failures++
	o.mu.Unlock()
}

// ended records a successful attempt. It returns whether it was the
// address's first, how many attempts had failed since it last answered,
// and since when.
func (o *outage) ended() (first bool, failures int, since time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	first, failures, since = !o.answered, o.failures, o.since
	o.answered, o.failures = true, 0
	return first, failures, since
}

// attemptFailed records a failed attempt to connect to ep.
func (w *Worker) attemptFailed(ep *endpoint, err error) {
	ep.outage.failed()
	if w.cfg.Observer != nil {
		w.cfg.Observer.HubAttempt(HubAttempt{Hub: ep.name, Address: ep.addr, Err: err})
	}
}

// attemptSucceeded records a handshake to ep that succeeded. It logs, at
// INFO, the first connection to each hub address, and the first after
// failed attempts: a person reading the log learns when the worker joined
// a hub and when it joined it again after it was lost, not every
// connection.
func (w *Worker) attemptSucceeded(ep *endpoint) {
	first, failures, since := ep.outage.ended()
	attrs := []any{"hub", ep.name, "address", ep.addr, "pool", w.cfg.Pool, "attempts", failures + 1}
	switch {
	case first:
		w.log.Info("connected to hub", attrs...)
	case failures > 0:
		w.log.Info("reconnected to hub", append(attrs, "down_for", time.Since(since).Round(time.Millisecond))...)
	}
	if w.cfg.Observer != nil {
		w.cfg.Observer.HubAttempt(HubAttempt{Hub: ep.name, Address: ep.addr, Failures: failures, First: first})
	}
}

// Busy returns how many slots hold a job now.
func (w *Worker) Busy() int {
	w.offers.mu.Lock()
	defer w.offers.mu.Unlock()
	return w.offers.running
}

// Slots returns how many jobs the Worker runs at once.
func (w *Worker) Slots() int { return w.cfg.Slots }

// HubState is what a Worker holds of one hub ([Worker.Hubs]).
type HubState struct {
	Hub string // as configured
	// Connections is how many handshaken connections to any of its
	// addresses the Worker holds now, idle or busy.
	Connections int
}

// Hubs returns the state of every hub, in the order configured.
func (w *Worker) Hubs() []HubState {
	out := make([]HubState, len(w.hubs))
	for i, h := range w.hubs {
		out[i] = HubState{Hub: h.name, Connections: int(h.connected.Load())}
	}
	return out
}
