package reversehttp

import (
	"errors"
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// The pool's queue of waiting requests. Without priorities or fair_by it
// is the plain FIFO list it always was; the scheduler below takes over
// only while some waiting request has a class other than 0 or a fair_by
// key, and hands back to the list when it empties. Every request that
// shares a pool shares its queue: one from a route without `priority` is
// in class 0, and one from a route without `fair_by` is in the flow of the
// empty key, which shares its class with the other flows as one tenant.

// ticket is what a request brings to the queue besides its deadline.
type ticket struct {
	prio    int           // its class: higher is served first
	key     string        // its fair_by key; "" without fair_by
	weight  int           // the key's weight; 0 counts as 1
	cost    time.Duration // its route's service-time estimate; 0: none yet
	admit   bool          // admit_by_estimate: refuse at once what would time out
	arrived time.Time     // when the request arrived, which aging counts from
}

// plain reports whether t asks for nothing the FIFO list cannot do.
func (t *ticket) plain() bool { return t == nil || (t.prio == 0 && t.key == "") }

// Bounds of a request's priority; a placeholder's value beyond them is
// taken as the bound, and a constant beyond them is a config error.
const (
	minPriority = -1000
	maxPriority = 1000
	maxWeight   = 1000
)

// waitQueue is the pool's queue; p.mu guards it.
type waitQueue struct {
	fifo  list[*waiter]
	sched *scheduler // non-nil while it holds the waiting requests
	// The summed service-time estimates of the waiting requests whose
	// route has one, and how many have none (see estimateLocked).
	cost    time.Duration
	unknown int
}

func (q *waitQueue) len() int {
	if q.sched != nil {
		return q.sched.n
	}
	return q.fifo.len()
}

// push queues w: at the back, or at the head of its flow for a request
// that was already offered to a worker, which keeps its place.
func (q *waitQueue) push(w *waiter, head bool) {
	if w.tk != nil && w.tk.cost > 0 {
		q.cost += w.tk.cost
	} else {
		q.unknown++
	}
	if q.sched == nil {
		if w.tk.plain() {
			if head {
				q.fifo.pushFront(&w.node)
			} else {
				q.fifo.pushBack(&w.node)
			}
			return
		}
		q.toScheduler()
	}
	q.sched.push(w, head)
}

// toScheduler hands the waiting requests to a new scheduler, for the first
// request with a class or a key: they keep their order, as class 0 and the
// empty key.
func (q *waitQueue) toScheduler() {
	q.sched = newScheduler()
	for o, ok := q.fifo.popFront(); ok; o, ok = q.fifo.popFront() {
		q.sched.push(o, false)
	}
}

// queued reports whether w is still in the queue.
func (q *waitQueue) queued(w *waiter) bool { return w.node.in }

// remove takes w, which must be queued, out of the queue.
func (q *waitQueue) remove(w *waiter) {
	if q.sched != nil {
		q.sched.remove(w)
	} else {
		q.fifo.remove(&w.node)
	}
	q.uncount(w)
}

// pushOut takes a request out of a full queue to make room for one with
// ticket t (see scheduler.pushOut); nil if it takes none.
func (q *waitQueue) pushOut(t *ticket) *waiter {
	if t.plain() {
		return nil
	}
	if q.sched == nil {
		q.toScheduler()
	}
	w := q.sched.pushOut(t)
	if w != nil {
		q.uncount(w)
	}
	return w
}

// uncount takes w, just taken out, off the queue's books; a scheduler
// left with nothing waiting gives the queue back to the plain list.
func (q *waitQueue) uncount(w *waiter) {
	if w.tk != nil && w.tk.cost > 0 {
		q.cost -= w.tk.cost
	} else {
		q.unknown--
	}
	if q.sched != nil && q.sched.n == 0 {
		q.sched = nil
	}
}

// pop takes out the request to serve next: the oldest, or with the
// scheduler the one its classes, flows and aging pick.
func (q *waitQueue) pop(aging time.Duration) (*waiter, bool) {
	var w *waiter
	if q.sched != nil {
		w = q.sched.pop(time.Now(), aging)
	} else if e, ok := q.fifo.popFront(); ok {
		w = e
	}
	if w == nil {
		return nil, false
	}
	q.uncount(w)
	return w, true
}

// front returns the request at the head of the queue in arrival order
// (a requeued one counts as the oldest), without taking it out.
func (q *waitQueue) front() (*waiter, bool) {
	if q.sched != nil {
		return q.sched.arrivals.front()
	}
	return q.fifo.front()
}

// scheduler serves the highest class first and, within a class, its flows
// (one per fair_by key) in weighted round robin: each flow in turn gets as
// many requests as its weight, then goes to the back of the ring. A flow
// that had nothing waiting goes ahead of the ring for its first turn, as
// in fq_codel, so a key that sends little is served next rather than a
// round later; a flood's flow never empties, so it never goes ahead. Every
// request costs one dispatch, whatever its duration, so this is deficit
// round robin with a unit cost, O(1) per dispatch. A request that has
// waited the pool's aging bound goes ahead of all of them (oldest first),
// so no class or flow is starved. Empty flows and classes are dropped at
// once: the scheduler holds no more flows than waiting requests, whatever
// keys consumers send.
type scheduler struct {
	classes  []*class      // those with waiting requests, the highest priority first
	arrivals list[*waiter] // every waiting request in arrival order
	n        int
	// heavy is the flow with the most waiting requests, as last seen
	// when one joined it: the one a full queue takes a request from to
	// make room for another key's (see pushOut).
	heavy *flow
}

// class is one priority's waiting requests.
type class struct {
	prio  int
	flows map[string]*flow
	// Flows with waiting requests, next to serve first: those in their
	// first turn since they had none, then the others.
	fresh, ring list[*flow]
	n           int
}

// flow is one key's waiting requests within a class.
type flow struct {
	key     string
	weight  int
	credit  int // requests it may still take before its turn passes
	waiters list[*waiter]
	node    node[*flow]
	fresh   bool // on the class's fresh list, not its ring
	cls     *class
}

func newScheduler() *scheduler { return new(scheduler) }

// classOf returns the class of priority prio, created if need be.
func (s *scheduler) classOf(prio int) *class {
	i, found := slices.BinarySearchFunc(s.classes, prio, func(c *class, p int) int {
		switch {
		case c.prio > p:
			return -1
		case c.prio < p:
			return 1
		}
		return 0
	})
	if found {
		return s.classes[i]
	}
	c := &class{prio: prio, flows: make(map[string]*flow)}
	s.classes = slices.Insert(s.classes, i, c)
	return c
}

func (s *scheduler) push(w *waiter, head bool) {
	prio, key, weight := 0, "", 1
	if t := w.tk; t != nil {
		prio, key = t.prio, t.key
		if t.weight > 0 {
			weight = t.weight
		}
	}
	c := s.classOf(prio)
	f := c.flows[key]
	if f == nil {
		f = &flow{key: key, weight: weight, credit: weight, cls: c, fresh: true}
		f.node.val = f
		c.flows[key] = f
		if head {
			c.fresh.pushFront(&f.node)
		} else {
			c.fresh.pushBack(&f.node)
		}
	} else {
		// The weight is what the route of the key's latest request says.
		f.weight = weight
		if head {
			// A requeued request takes back the turn it was served in.
			if front, _ := c.next(); front == f {
				f.credit = min(f.credit+1, f.weight)
			} else {
				c.unlist(f)
				f.fresh = true
				c.fresh.pushFront(&f.node)
				f.credit = 1
			}
		}
	}
	w.flow = f
	w.age.val = w
	if s.heavy == nil || f.waiters.len() >= s.heavy.waiters.len() {
		s.heavy = f
	}
	if head {
		f.waiters.pushFront(&w.node)
		s.arrivals.pushFront(&w.age)
	} else {
		f.waiters.pushBack(&w.node)
		s.arrivals.pushBack(&w.age)
	}
	c.n++
	s.n++
}

// remove takes w out; its flow and class go when they empty.
func (s *scheduler) remove(w *waiter) {
	f := w.flow
	c := f.cls
	f.waiters.remove(&w.node)
	s.arrivals.remove(&w.age)
	w.flow = nil
	c.n--
	s.n--
	if f.waiters.len() == 0 {
		c.unlist(f)
		delete(c.flows, f.key)
		if s.heavy == f {
			s.heavy = nil
		}
	}
	if c.n == 0 {
		i := slices.Index(s.classes, c)
		s.classes = slices.Delete(s.classes, i, i+1)
	}
}

// pop takes out the request to serve at now: the oldest if it has waited
// aging (0: no aging), else the next of the highest class's current flow.
func (s *scheduler) pop(now time.Time, aging time.Duration) *waiter {
	if s.n == 0 {
		return nil
	}
	if aging > 0 {
		if w, _ := s.arrivals.front(); now.Sub(w.arrived()) >= aging {
			s.remove(w)
			return w
		}
	}
	c := s.classes[0]
	f, _ := c.next()
	w, _ := f.waiters.front()
	f.credit--
	if f.credit <= 0 && f.waiters.len() > 1 {
		// Its turn is over: the next flow's begins.
		f.credit = f.weight
		c.unlist(f)
		f.fresh = false
		c.ring.pushBack(&f.node)
	}
	s.remove(w)
	return w
}

// pushOut makes room in a full queue for a request with ticket t: it
// takes out the newest request of the heaviest flow, if that flow is
// another key's in a class no higher than t's and holds more than one
// request beyond what t's flow would then hold. So a key that floods the
// queue cannot shut others out of it; it loses its own latest requests
// instead. It returns the request taken out, nil if none.
func (s *scheduler) pushOut(t *ticket) *waiter {
	h := s.heavy
	if h == nil || h.cls.prio > t.prio || (h.cls.prio == t.prio && h.key == t.key) {
		return nil
	}
	own := 0
	if c := s.find(t.prio); c != nil {
		if f := c.flows[t.key]; f != nil {
			own = f.waiters.len()
		}
	}
	if h.waiters.len() <= own+1 {
		return nil
	}
	e := h.waiters.tail
	s.remove(e.val)
	return e.val
}

// find returns the class of priority prio, nil if none waits.
func (s *scheduler) find(prio int) *class {
	for _, c := range s.classes {
		if c.prio == prio {
			return c
		}
	}
	return nil
}

// next returns the flow whose turn it is.
func (c *class) next() (*flow, bool) {
	if f, ok := c.fresh.front(); ok {
		return f, true
	}
	return c.ring.front()
}

// unlist takes f off the fresh list or the ring.
func (c *class) unlist(f *flow) {
	if f.fresh {
		c.fresh.remove(&f.node)
	} else {
		c.ring.remove(&f.node)
	}
}

// flows counts the flows the scheduler tracks.
func (s *scheduler) flows() int {
	n := 0
	for _, c := range s.classes {
		n += len(c.flows)
	}
	return n
}

// ahead estimates how many of the waiting requests a new request with
// ticket t would wait for: all of the higher classes, and in its own class
// a round of the other flows for each request its flow already holds.
func (s *scheduler) ahead(t *ticket) int {
	n := 0
	for _, c := range s.classes {
		if c.prio > t.prio {
			n += c.n
			continue
		}
		if c.prio == t.prio {
			own, others := 0, c.fresh.len()+c.ring.len()
			if f := c.flows[t.key]; f != nil {
				own = f.waiters.len()
				others--
			}
			n += min(c.n, own+own*others+others)
		}
		break
	}
	return n
}

// ewma is an exponentially weighted moving average of durations, safe for
// concurrent use; its zero value has seen nothing.
type ewma struct{ bits atomic.Uint64 } // float64 nanoseconds; 0: no sample yet

// ewmaWeight is the weight of each new sample: about the last twenty jobs
// make the estimate.
const ewmaWeight = 0.05

func (e *ewma) add(d time.Duration) {
	x := float64(max(d, 1))
	for {
		old := e.bits.Load()
		avg := x
		if old != 0 {
			prev := math.Float64frombits(old)
			avg = prev + ewmaWeight*(x-prev)
		}
		if e.bits.CompareAndSwap(old, math.Float64bits(avg)) {
			return
		}
	}
}

// get returns the average; 0 before the first sample.
func (e *ewma) get() time.Duration {
	return time.Duration(math.Float64frombits(e.bits.Load()))
}

// estimateLocked estimates how long a new request with ticket t would
// wait for a worker: the service times of the requests it would wait for
// (each its route's estimate, or the pool's for a route without one yet),
// plus one for the jobs running now, shared among the pool's connections.
// It reports false when it cannot tell: no connection, or no job yet
// completed. p.mu is held.
func (p *Pool) estimateLocked(t *ticket) (time.Duration, bool) {
	slots := len(p.conns)
	s := p.service.get()
	if slots == 0 || s == 0 {
		return 0, false
	}
	q := &p.waiting
	ahead := q.cost + time.Duration(q.unknown)*s
	if q.sched != nil && t != nil && q.sched.n > 0 {
		ahead = time.Duration(float64(ahead) * float64(q.sched.ahead(t)) / float64(q.sched.n))
	}
	return (ahead + s) / time.Duration(slots), true
}

// Bounds of the Retry-After a 503 gives: a whole number of seconds, at
// least one, and no more than a guess so far ahead is worth.
const maxRetryAfter = 300

// retryAfter is the Retry-After, in seconds, for a request with ticket t
// refused with err: the estimated wait of a request that joined the queue
// now, which is when a retry would likely be served at once; 1 when there
// is no estimate, or the cause was no queue. Requests refused one after
// the other are told times a job's share of a slot apart, the pace at
// which the pool frees slots, so that consumers who obey do not all come
// back at once to a queue with room for a few.
func (p *Pool) retryAfter(t *ticket, err error) int {
	if !errorsIsQueueWait(err) {
		return retryAfterSeconds
	}
	p.mu.Lock()
	est, ok := p.estimateLocked(t)
	if ok {
		now := time.Now()
		at := now.Add(est)
		share := p.service.get() / time.Duration(len(p.conns))
		if next := p.promised.Add(share); next.After(at) {
			at = next
		}
		// The spread covers at most a full queue of consumers coming back
		// (more than that could not wait anyway) and never goes beyond
		// what Retry-After may say: refusals that are not obeyed must not
		// push the promise ever further ahead of the estimate.
		spread := maxRetryAfter * time.Second
		if q := p.limits.maxQueue; q > 0 {
			spread = min(spread, time.Duration(q)*share)
		}
		if limit := now.Add(min(est+spread, maxRetryAfter*time.Second)); at.After(limit) {
			at = limit
		}
		p.promised = at
		est = at.Sub(now)
	}
	p.mu.Unlock()
	if !ok {
		return retryAfterSeconds
	}
	return retryAfterOf(est)
}

// retryAfterOf rounds an estimated wait up to whole seconds within the bounds.
func retryAfterOf(est time.Duration) int {
	s := math.Ceil(est.Seconds())
	return int(min(max(s, 1), maxRetryAfter))
}

// errorsIsQueueWait reports whether err refused a request for the wait in
// the queue: one the queue's estimate bears on.
func errorsIsQueueWait(err error) bool {
	return errors.Is(err, errQueueFull) || errors.Is(err, errQueueTimeout) || errors.Is(err, errWaitTooLong)
}
