package reversehttp

import (
	"context"
	"errors"
	"net/http"
	"os"
)

// The label values of the pool's counters. Each set is fixed, so that a
// peer cannot grow the metrics' cardinality; every value is exported, zeros
// included, so that queries need not guess which series exist.

// outcome is how a request the pool handled ended (requests_total).
type outcome uint8

const (
	outcomeOK               outcome = iota // a worker's response reached the consumer, whatever its status
	outcomeQueueFull                       // 503 at once: max_queue requests were waiting
	outcomeQueueTimeout                    // 503: no worker took it within the queue timeout
	outcomeWorkerFailed                    // 502 (or a cut response): a worker failed it, or none took it in max_attempts
	outcomeResponseTimeout                 // 504: the worker did not begin its response in time
	outcomeCancelledQueued                 // the consumer left while the request waited
	outcomeCancelledRunning                // the consumer left while a worker ran it
	outcomePoolClosed                      // 503: the pool was shutting down
	outcomeRefusedEstimate                 // 503 at once: admit_by_estimate judged the wait longer than the queue timeout
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"ok", "queue_full", "queue_timeout", "worker_failed", "response_timeout",
	"cancelled_queued", "cancelled_running", "pool_closed", "refused_estimate",
}

// outcomeOf classifies err, which ended a request before a worker's
// response (nil: it got one). running says that a worker had the request
// when it ended.
func outcomeOf(err error, running bool) outcome {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, errQueueFull):
		return outcomeQueueFull
	case errors.Is(err, errQueueTimeout):
		return outcomeQueueTimeout
	case errors.Is(err, errWaitTooLong):
		return outcomeRefusedEstimate
	case errors.Is(err, errPoolClosed):
		return outcomePoolClosed
	case errors.Is(err, errResponseTimeout):
		return outcomeResponseTimeout
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		if running {
			return outcomeCancelledRunning
		}
		return outcomeCancelledQueued
	}
	// errTooManyAttempts included: every worker offered the request
	// declined it or failed before starting it.
	return outcomeWorkerFailed
}

// requeueReason is why a request went to another worker connection than
// the one it was first given (requeues_total).
type requeueReason uint8

const (
	requeueDeclined   requeueReason = iota // the worker declined it
	requeueNotStarted                      // the connection failed before the worker could start it
	requeueStale                           // the idle connection taken for it had closed meanwhile
	numRequeueReasons
)

var requeueNames = [numRequeueReasons]string{"declined", "not_started", "stale_connection"}

// errDeclined is the notStarted cause of a job the worker declined.
var errDeclined = errors.New("declined")

func requeueOf(ns notStarted) requeueReason {
	if errors.Is(ns.err, errDeclined) {
		return requeueDeclined
	}
	return requeueNotStarted
}

// handshakeResult is how a worker's attempt to join ended
// (handshakes_total).
type handshakeResult uint8

const (
	resultUnset        handshakeResult = iota // a rejection's result follows from its status
	resultOK                                  // the pool took the connection in
	resultBadRequest                          // 400: not a ptth handshake, or TLS mixed up
	resultUnauthorized                        // 401: no token
	resultForbidden                           // 403: a wrong token
	resultNotFound                            // 404: no such pool on the address
	resultTimeout                             // the handshake (TLS included) outlasted handshake_timeout
	resultTLSError                            // the TLS handshake failed
	resultTooLarge                            // 431: the handshake exceeded its size bound
	resultOverCapacity                        // max_handshakes were in progress: closed at once
	resultReloading                           // 503: the config was being replaced
	resultDrained                             // 503: the operator drained the worker
	numHandshakeResults
)

var handshakeNames = [numHandshakeResults]string{
	"", "ok", "bad_request", "unauthorized", "forbidden", "not_found", "timeout",
	"tls_error", "too_large", "over_capacity", "reloading", "drained",
}

// result returns what the rejection counts as.
func (r *rejection) result() handshakeResult {
	if r.kind != resultUnset {
		return r.kind
	}
	switch r.status {
	case http.StatusUnauthorized:
		return resultUnauthorized
	case http.StatusForbidden:
		return resultForbidden
	case http.StatusNotFound:
		return resultNotFound
	case http.StatusRequestTimeout:
		return resultTimeout
	case http.StatusRequestHeaderFieldsTooLarge:
		return resultTooLarge
	case http.StatusServiceUnavailable:
		return resultReloading
	}
	return resultBadRequest
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// leaveReason is why a worker connection left its pool
// (worker_disconnects_total, and the disconnect log line's reason).
type leaveReason uint8

const (
	leaveOther           leaveReason = iota // none of the below
	leaveHungUp                             // the worker closed it while idle
	leaveOutOfTurn                          // the worker sent data while idle
	leaveBeyondResponse                     // the worker sent more than its response
	leaveClosedAfterJob                     // the worker closed it after a complete response (POTHEAD's way)
	leaveFailedJob                          // its job failed (a broken or cut response)
	leaveNotStarted                         // it failed before the worker started its job (or declined with the body ready)
	leaveCancelled                          // the consumer left while it ran a job
	leaveResponseTimeout                    // its worker missed the response timeout
	leaveDrained                            // the operator drained its worker
	leaveRetired                            // a reload withdrew what admitted it
	leavePoolClosed                         // the pool shut down
	numLeaveReasons
)

var leaveNames = [numLeaveReasons]string{
	"other", "hung_up", "out_of_turn", "beyond_response", "closed_after_job", "failed_job",
	"not_started", "cancelled", "response_timeout", "drained", "retired", "pool_closed",
}

// Causes of a connection leaving that are no failure of the connection.
var (
	errDrained        = errors.New("the worker was drained")
	errRetired        = errors.New("the config in force no longer admits the connection")
	errClosedAfterJob = errors.New("the worker closed the connection after its response")
)

// leaveReasonOf classifies why a connection is closing. idle says that it
// was found unusable while idle, where an error other than those named is
// the worker's end going away too.
func leaveReasonOf(err error, idle bool) leaveReason {
	var ns notStarted
	switch {
	case err == nil:
		return leaveOther
	case errors.Is(err, errHungUp):
		return leaveHungUp
	case errors.Is(err, errOutOfTurn):
		return leaveOutOfTurn
	case errors.Is(err, errBeyondResponse):
		return leaveBeyondResponse
	case errors.Is(err, errClosedAfterJob):
		return leaveClosedAfterJob
	case errors.Is(err, errResponseTimeout):
		return leaveResponseTimeout
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return leaveCancelled
	case errors.As(err, &ns):
		return leaveNotStarted
	case errors.Is(err, errDrained):
		return leaveDrained
	case errors.Is(err, errRetired):
		return leaveRetired
	case errors.Is(err, errPoolClosed):
		return leavePoolClosed
	case idle:
		return leaveHungUp
	}
	return leaveFailedJob
}
