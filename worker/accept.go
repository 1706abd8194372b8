package worker

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
)

// Acceptance: on a connection where the hub and the worker agreed on
// FeatureAccept, the hub sends every job it might give to another worker
// with "Expect: 100-continue", and the worker's "100 Continue" says "this
// job has started here". A connection that ends cleanly before it tells the
// hub that the job never ran, so it may run elsewhere; after it, the job is
// never replayed.

// Accept tells the hub that the job r is taken: from now on it may have run,
// and the hub will not give it to another worker. Call it once the handler
// commits to the job and before it does any of it. It sends "100 Continue"
// at most once per job, and only where the hub asked for acceptance; on
// other jobs, and when the job is already accepted, it does nothing.
//
// The Worker accepts each job itself right before it calls its Handler,
// unless the Handler was wrapped with [AcceptLater] (the [Forwarder] is
// such a handler). Call Accept from the handler's goroutine, as any
// ResponseWriter method, and never after [Decline].
func Accept(r *http.Request) {
	if j, ok := r.Context().Value(jobKey{}).(*job); ok {
		j.accept()
	}
}

// AcceptLater returns a Handler for which the Worker does not accept jobs
// before calling it: h calls [Accept] itself, at the point where it commits
// to a job, or [Decline]s it. A job that h neither accepts nor declines is
// accepted when h first reads the request body (net/http then sends the
// 100 Continue), and a job that h answers without reading the body or
// accepting it is not accepted at all: if the connection broke before the
// response, the hub could run it elsewhere. It only takes effect as
// [Config.Handler] itself, not deeper in a chain of handlers.
func AcceptLater(h http.Handler) http.Handler { return lateAccepter{h} }

// lateAccepter marks a Handler that accepts its jobs itself.
type lateAccepter struct{ http.Handler }

func (lateAccepter) acceptsItself() {}

// selfAccepting is implemented by handlers that call Accept themselves.
type selfAccepting interface{ acceptsItself() }

// jobKey is the request context key of a job's *job.
type jobKey struct{}

// hubConnKey is the connection context key of a job's *hubConn.
type hubConnKey struct{}

// job is one job from a hub while its handler runs: its slot, and the
// acceptance state of one that asks for it.
type job struct {
	w        http.ResponseWriter // the server's own, so no wrapper can swallow the 100
	once     sync.Once
	accepted atomic.Bool
	worker   *Worker
	hc       *hubConn // the connection it came on
	auto     bool     // the Worker accepts it before it calls the Handler
	freeOnce sync.Once

	// For the Observer (see observe.go), on the handler's goroutine: how
	// the job went, and what the Observer was given.
	declined, failed, cancelled, returned bool
	info                                  *Job            // nil without an Observer
	ctx                                   context.Context // the Handler's
}

// free gives the job's slot back: its handler declined it, or returned.
func (j *job) free() { j.freeOnce.Do(func() { j.worker.offers.done(j.hc) }) }

// jobs maps the ResponseWriter of every job to its *job while its handler
// runs, so that Decline, which is given only the writer, can free the
// job's slot at once and tell a decline that comes too late.
var jobs sync.Map

func (j *job) accept() {
	j.once.Do(func() {
		// net/http sends a WriteHeader(100) at once and then no longer
		// sends its own 100 Continue when the handler reads the body.
		j.w.WriteHeader(http.StatusContinue)
		j.accepted.Store(true)
	})
}

// accepted reports whether the job r was accepted with a 100 Continue; it
// is false for jobs on connections without FeatureAccept.
func accepted(r *http.Request) bool {
	j, ok := r.Context().Value(jobKey{}).(*job)
	return ok && j.accepted.Load()
}

// serveJob runs one job that has a slot, or declines it, before anything
// else, if none was free (or a gate was closed) when it arrived. It
// accepts the job first, unless the hub did not ask for acceptance or the
// Handler accepts its jobs itself.
func (w *Worker) serveJob(rw http.ResponseWriter, r *http.Request) {
	hc, _ := r.Context().Value(hubConnKey{}).(*hubConn)
	if hc == nil {
		w.cfg.Handler.ServeHTTP(rw, r)
		return
	}
	if !hc.takeSlot() {
		w.observeNoSlot(r, hc)
		w.declineFull(rw, r)
		return
	}
	j := &job{w: rw, worker: w, hc: hc}
	jobs.Store(rw, j)
	defer func() {
		jobs.Delete(rw)
		j.free()
		// What the server writes from now on is the response's end.
		hc.holdTail()
	}()
	// hw is what the Handler writes to: rw itself, or for an Observer a
	// wrapper (rw stays the key in jobs, which the deferred Delete uses).
	hw := http.ResponseWriter(rw)
	if w.cfg.Observer != nil {
		hw, r = w.observe(j, rw, r)
		defer j.ended()
	}
	if hc.accept && expectsContinue(r) {
		j.auto = !w.lateAccept
		r = r.WithContext(context.WithValue(r.Context(), jobKey{}, j))
		if j.auto {
			j.accept()
		}
	}
	if w.redirect != nil && r.Method != http.MethodHead {
		// Returns once an out-of-band response has ended: the slot is
		// freed only then.
		w.redirect.serve(w.cfg.Handler, hw, r, hc)
	} else {
		w.cfg.Handler.ServeHTTP(hw, r)
	}
	j.returned = true
}

// declineFull declines a job that arrived when no slot was free or a gate
// was closed, before it is accepted. A job without a body keeps its
// connection (the 503 has a length and no "Connection: close"), so that a
// withdrawn offer that crossed a job costs no redial. One with a body
// cannot: net/http closes a connection after a response that left an
// expected body unread, so Decline closes it at once.
func (w *Worker) declineFull(rw http.ResponseWriter, r *http.Request) {
	w.log.Debug("no free slot: declining the job", "method", r.Method, "uri", r.RequestURI)
	if r.ContentLength != 0 {
		Decline(rw)
		return
	}
	h := rw.Header()
	h.Set(DeclinedHeader, "1")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(declinedBody)))
	h.Set("Cache-Control", "no-store")
	rw.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(rw, declinedBody)
}

// declined frees the slot of the job w answers, which its handler
// declines, and logs a Decline of a job that was accepted already: the hub
// cannot give it to another worker any more and answers 502.
func declined(w http.ResponseWriter) {
	j := findJob(w)
	if j == nil {
		return
	}
	j.free()
	if !j.accepted.Load() {
		j.declined = true
		return
	}
	j.failed = true
	hint := "call Decline before Accept"
	if j.auto {
		hint = "wrap the Handler in worker.AcceptLater to decline jobs"
	}
	j.worker.log.Warn("Decline after the job was accepted: the hub answers 502", "hint", hint)
}

// expectsContinue reports whether r carries "Expect: 100-continue".
func expectsContinue(r *http.Request) bool {
	return httpHeaderHasToken(r.Header["Expect"], "100-continue")
}

// hasFeature reports whether a FeaturesHeader list names feature.
func hasFeature(h http.Header, feature string) bool {
	return httpHeaderHasToken(h.Values(FeaturesHeader), feature)
}
