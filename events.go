package reversehttp

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// Events a pool emits through Caddy's events app, so that `events`
// handlers can react. Their data always has "pool".
const (
	// A worker connection joined: data "worker", "remote", "connections"
	// (those the worker holds now).
	eventWorkerConnected = "reverse_http_worker_connected"
	// A worker connection left: as above, and "reason" (a
	// worker_disconnects_total reason).
	eventWorkerDisconnected = "reverse_http_worker_disconnected"
	// The queue was full and refused a request: data "max_queue", and
	// "refused", the requests refused since the previous such event, this
	// one included. At most one per queueFullInterval.
	eventQueueFull = "reverse_http_queue_full"
)

// queueFullInterval spaces out the log lines and events of a full queue,
// which under overload would otherwise come once per refused request.
const queueFullInterval = 10 * time.Second

// maxPendingEvents bounds the events a pool holds while its handlers run;
// beyond it events are dropped, and counted in a log line.
const maxPendingEvents = 1024

// eventQueue hands a pool's events to Caddy's events app in order, from a
// goroutine of its own: handlers run synchronously in Emit, and the hub
// announces connections from places that must not wait for them (the
// poller of idle connections among them). The goroutine runs only while
// events are pending.
type eventQueue struct {
	mu      sync.Mutex
	pending []pendingEvent
	running bool
	dropped int
}

type pendingEvent struct {
	view poolView
	name string
	data map[string]any
}

// emit queues an event for view's events app; without one it does nothing.
func (o *poolObs) emit(view poolView, name string, data map[string]any) {
	if view.events == nil {
		return
	}
	q := &o.events
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) >= maxPendingEvents {
		q.dropped++
		return
	}
	q.pending = append(q.pending, pendingEvent{view: view, name: name, data: data})
	if !q.running {
		q.running = true
		go o.runEvents()
	}
}

func (o *poolObs) runEvents() {
	q := &o.events
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running = false
			dropped := q.dropped
			q.dropped = 0
			q.mu.Unlock()
			if dropped > 0 {
				o.pool.log().Warn("events dropped: their handlers did not keep up", zap.Int("dropped", dropped))
			}
			return
		}
		e := q.pending[0]
		q.pending[0] = pendingEvent{}
		q.pending = q.pending[1:]
		q.mu.Unlock()
		e.view.events.Emit(e.view.ctx, e.name, e.data)
	}
}

// refusedFull notes a request the full queue refused: the first one in each
// queueFullInterval is logged and announced with the count since the last.
func (o *poolObs) refusedFull() {
	o.fullRefused.Add(1)
	now := time.Now().UnixNano()
	last := o.fullAt.Load()
	if now-last < int64(queueFullInterval) || !o.fullAt.CompareAndSwap(last, now) {
		return
	}
	refused := o.fullRefused.Swap(0)
	view := o.getView()
	maxQueue := 0
	if view.config != nil {
		maxQueue = view.config.MaxQueue
	}
	o.pool.log().Warn("queue full: refusing requests with 503",
		zap.Int("max_queue", maxQueue), zap.Int64("refused", refused))
	o.emit(view, eventQueueFull, map[string]any{"pool": o.pool.name, "max_queue": maxQueue, "refused": refused})
}
