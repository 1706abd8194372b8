package worker

import (
	"slices"
	"sync"
	"time"
)

// Offers: which of a worker's idle connections its hubs may give a job.
//
// A worker holds Slots connections to every hub address, but may run only
// Slots jobs in all. On connections with FeatureReady it offers each free
// slot (while its gates allow one more job) with a ready frame, and
// withdraws the offer with a not-ready frame when the slot is gone. The
// question is where to offer a slot. Offered to every hub at once, it
// would be taken by each hub that has a request waiting: all but one
// would be declined, and under load that is most jobs. Offered to one hub
// only, it would idle while that hub has nothing to do and another hub has
// a queue. So each free slot is first offered to one hub address alone:
// in turn among those that have taken most of the offers they got lately
// (their score is high: each has a queue, and they share the slots), else
// the one with the best score (on a tie, the hub whose job freed the
// slot); and every exploreEvery offers another address in turn, so that a
// hub whose demand grows, or that comes back, gets offers even while the
// others take them all. A hub that has a request waiting takes the offer within
// a round trip; one that has not taken it after its dwell (a millisecond
// at first, and at least twice the round trip of its handshakes; longer
// for a hub that turns out to take offers just after they were parked,
// which on a busy machine is a hub slow to react) evidently has nothing
// waiting, and the offer goes to every hub address (parked) until one
// takes it. Under full load the first hub takes each offer at once and
// no job is declined; under partial load no slot stays hidden from a hub
// with a queue for longer than moveAfter, and two hubs that take the same
// parked slot at the same moment cost one decline, whose job goes straight
// to the next worker.
//
// A job that arrives takes a free slot whether or not its connection was
// still offered (a withdrawal crosses a job in flight), so that a job is
// declined only when no slot is free or a gate is closed. With a gate,
// one slot is offered at a time, and after a job is taken the next offer
// waits for the gate's next verdict.

// offerMoveMin is the shortest time an offer stays with one hub address.
var offerMoveMin = time.Millisecond

// offer is one free slot offered to the hubs.
type offer struct {
	at     *endpoint // the hub address it is offered to; nil when parked or not yet placed
	parked bool      // offered to every hub address
	from   *endpoint // parked: the address it was offered to first
	since  time.Time // offered to at, or parked, since
	// waitFor is the connection whose job freed the slot, until it is
	// idle; prefer is its hub address then.
	waitFor *hubConn
	prefer  *endpoint
}

// offers keeps the books of a worker's slots and offers.
type offers struct {
	w       *Worker
	moveMin time.Duration // offerMoveMin when the worker started

	mu       sync.Mutex
	slots    int
	running  int  // jobs that hold a slot
	gated    bool // a gate is configured
	gateOpen bool // its last verdict
	fresh    bool // no job has taken a slot since that verdict
	eps      []*endpoint
	next     int // the hub address the next new offer goes to first
	scout    int // the hub address the next exploring offer goes to first
	placed   int // offers placed, for exploreEvery
	out      []*offer
	timer    *time.Timer
	freed    chan struct{} // closed and replaced when a slot is freed
}

func newOffers(w *Worker, slots int, gated bool) *offers {
	return &offers{w: w, moveMin: offerMoveMin, slots: slots, gated: gated, freed: make(chan struct{})}
}

// allowanceLocked is how many slots may be offered now.
func (o *offers) allowanceLocked() int {
	free := o.slots - o.running
	switch {
	case free <= 0:
		return 0
	case !o.gated:
		return free
	case o.gateOpen && o.fresh:
		return 1
	}
	return 0
}

// arrive decides on a job that has arrived on c: it takes a slot
// (slotTaken) if one may be offered, whatever c's own readiness, or is
// refused (slotRefused).
func (o *offers) arrive(c *hubConn) int32 {
	o.mu.Lock()
	o.unlistLocked(c)
	res := slotRefused
	if o.allowanceLocked() > 0 {
		o.running++
		o.fresh = false
		o.consumeLocked(c.ep)
		res = slotTaken
	}
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
	return res
}

// done frees the slot of a job that has ended on c (or was declined). A
// job that arrives may take it at once; its offer waits until c, whose
// response is being written, is idle, and then prefers c's hub address
// among those of the same score.
func (o *offers) done(c *hubConn) {
	o.mu.Lock()
	o.freeLocked()
	if c.ready && slices.Contains(o.eps, c.ep) {
		o.out = append(o.out, &offer{waitFor: c})
	}
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
}

func (o *offers) freeLocked() {
	o.running--
	close(o.freed)
	o.freed = make(chan struct{})
}

// idle takes c, which carries no job, into the books: a connection with
// FeatureReady may now be offered.
func (o *offers) idle(c *hubConn) {
	o.mu.Lock()
	o.unblockLocked(c, c.ep)
	c.want.Store(uint32(FrameNotReady))
	if c.ready && !c.listed && slices.Contains(o.eps, c.ep) {
		c.ep.idle = append(c.ep.idle, c)
		c.listed = true
	}
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
}

// gone takes closed c out of the books, with the slot of a job that
// arrived on it and never ran.
func (o *offers) gone(c *hubConn) {
	o.mu.Lock()
	o.unblockLocked(c, nil)
	o.unlistLocked(c)
	if c.slot.Swap(slotNone) == slotTaken {
		o.freeLocked()
	}
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
}

func (o *offers) addEndpoint(ep *endpoint) {
	o.mu.Lock()
	o.eps = append(o.eps, ep)
	if len(o.eps) == 1 {
		o.next = 0
	}
	// An offer parked while there was one address, or before the new
	// one, has not been round them all: place it again.
	for _, of := range o.out {
		if of.parked {
			of.parked = false
		}
	}
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
}

// removeEndpoint stops offering slots to ep, which the worker leaves.
func (o *offers) removeEndpoint(ep *endpoint) {
	o.mu.Lock()
	o.eps = slices.DeleteFunc(o.eps, func(e *endpoint) bool { return e == ep })
	for _, c := range ep.idle {
		c.listed = false
	}
	ep.idle = nil
	for _, of := range o.out {
		if of.at == ep {
			of.at = nil
		}
	}
	if o.next >= len(o.eps) {
		o.next = 0
	}
	if o.scout >= len(o.eps) {
		o.scout = 0
	}
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
}

// setGate records the gates' verdict.
func (o *offers) setGate(open bool) {
	o.mu.Lock()
	o.gateOpen, o.fresh = open, true
	flush := o.rebalanceLocked(time.Now())
	o.mu.Unlock()
	flushAll(flush)
}

// free returns how many slots are free, and a channel closed when one is
// freed.
func (o *offers) free() (int, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.slots - o.running, o.freed
}

// unblockLocked places the offers that waited for c (see done), with a
// preference for prefer.
func (o *offers) unblockLocked(c *hubConn, prefer *endpoint) {
	for _, of := range o.out {
		if of.waitFor == c {
			of.waitFor, of.prefer = nil, prefer
		}
	}
}

func (o *offers) unlistLocked(c *hubConn) {
	if !c.listed {
		return
	}
	c.ep.idle = slices.DeleteFunc(c.ep.idle, func(x *hubConn) bool { return x == c })
	c.listed = false
}

// consumeLocked removes the offer a job that arrived from ep used: the
// one made to ep, a parked one, or (the job crossed a withdrawal) the
// offer made most recently elsewhere.
func (o *offers) consumeLocked(ep *endpoint) {
	best := -1
	rank := func(of *offer) int {
		switch {
		case of.at == ep:
			return 3
		case of.parked:
			return 2
		case of.at != nil:
			return 1
		}
		return 0
	}
	for i, of := range o.out {
		if best < 0 || rank(of) > rank(o.out[best]) ||
			rank(of) == rank(o.out[best]) && of.since.After(o.out[best].since) {
			best = i
		}
	}
	if best >= 0 {
		if of := o.out[best]; of.parked && of.from == ep && ep != nil && time.Since(of.since) < o.moveAfter(ep) {
			o.noteLate(ep)
		}
		o.out = slices.Delete(o.out, best, best+1)
	}
	if ep != nil {
		noteTaken(ep)
	}
}

// rebalanceLocked makes as many offers as the allowance, places new ones,
// and returns the connections whose readiness must change.
func (o *offers) rebalanceLocked(now time.Time) []*hubConn {
	want := o.allowanceLocked()
	for len(o.out) > want {
		o.dropLocked()
	}
	for len(o.out) < want {
		o.out = append(o.out, &offer{})
	}
	excl, parked := o.coverLocked()
	for _, of := range o.out {
		if of.at == nil && !of.parked && of.waitFor == nil {
			parked += o.placeLocked(of, now, excl, parked)
		}
	}
	flush := o.applyLocked(excl, parked)
	o.armLocked(now)
	return flush
}

// dropLocked withdraws one offer: one not placed, else a parked one, else
// the one made most recently.
func (o *offers) dropLocked() {
	best := 0
	rank := func(of *offer) int {
		switch {
		case of.at == nil && !of.parked:
			return 2
		case of.parked:
			return 1
		}
		return 0
	}
	for i, of := range o.out {
		if rank(of) > rank(o.out[best]) || rank(of) == rank(o.out[best]) && of.since.After(o.out[best].since) {
			best = i
		}
	}
	o.out = slices.Delete(o.out, best, best+1)
}

// coverLocked counts the offers made to each hub address, and the parked
// ones, which every address has.
func (o *offers) coverLocked() (map[*endpoint]int, int) {
	excl := make(map[*endpoint]int, len(o.eps))
	parked := 0
	for _, of := range o.out {
		switch {
		case of.parked:
			parked++
		case of.at != nil:
			excl[of.at]++
		}
	}
	return excl, parked
}

func spare(ep *endpoint, excl map[*endpoint]int, parked int) int {
	return len(ep.idle) - excl[ep] - parked
}

// placeLocked offers of to a hub address that has an idle connection to
// spare. The addresses that took most of their offers lately (score at
// least busyScore: each evidently has a queue) get the offers in turn, so
// that hubs with a queue share the slots rather than the first of them
// keeping every slot its jobs free. With no such address, the offer goes
// to the one with the best score (on a tie, the one that freed the slot,
// else the next in turn). Every exploreEvery offers, one goes to the next
// address in turn other than that choice, so that a hub whose demand has grown (or that has just
// come back) gets offers even while the others take all there are, and
// earns its turn. It returns 1 if it parked the offer instead (with one
// hub address there is nowhere to move to). An offer no address can take
// waits until a connection becomes idle.
func (o *offers) placeLocked(of *offer, now time.Time, excl map[*endpoint]int, parked int) int {
	n := len(o.eps)
	if n == 1 {
		of.parked = true
		return 1
	}
	prefer := of.prefer
	var best, busy *endpoint
	bestAt, busyAt := 0, 0
	for i := range n {
		at := (o.next + i) % n
		ep := o.eps[at]
		if spare(ep, excl, parked) <= 0 {
			continue
		}
		if busy == nil && ep.score >= busyScore {
			busy, busyAt = ep, at
		}
		if best == nil || ep.score > best.score || ep.score == best.score && ep == prefer && best != prefer {
			best, bestAt = ep, at
		}
	}
	if busy != nil {
		best, bestAt = busy, busyAt
	}
	if best == nil {
		return 0
	}
	o.placed++
	if o.placed%exploreEvery == 0 {
		// The next address in turn other than the one the rule above
		// chose, on a cursor of its own: the busy addresses' turns
		// must not decide which address explores.
		for i := range n {
			at := (o.scout + i) % n
			if ep := o.eps[at]; ep != best && spare(ep, excl, parked) > 0 {
				o.scout = (at + 1) % n
				of.at, of.since = ep, now
				excl[ep]++
				return 0
			}
		}
	}
	of.at, of.since = best, now
	excl[best]++
	if busy != nil || best != prefer {
		o.next = (bestAt + 1) % n
	}
	return 0
}

// busyScore: a hub address whose score is at least this has taken most of
// the offers it got lately, and shares the offers with the others that
// have.
const busyScore = 0.5

// exploreEvery: one new offer in this many goes to the next hub address in
// turn, whatever the scores.
const exploreEvery = 4

// scoreWeight is how much one offer, taken or not, moves a hub address's
// score.
const scoreWeight = 0.2

// noteTaken and noteUnused move ep's score towards 1 or 0: an offer it
// took (or a job it sent), or one it let go unused.
func noteTaken(ep *endpoint) { ep.score += scoreWeight * (1 - ep.score) }
func noteUnused(ep *endpoint) {
	ep.score -= scoreWeight * ep.score
	ep.dwell = ep.dwell * 9 / 10
}

// applyLocked sets the readiness each idle connection should have: as many
// ready on each hub address as the offers it has, keeping those already
// ready. It returns the connections that changed.
func (o *offers) applyLocked(excl map[*endpoint]int, parked int) []*hubConn {
	var flush []*hubConn
	for _, ep := range o.eps {
		k := min(len(ep.idle), excl[ep]+parked)
		on := 0
		for _, c := range ep.idle {
			if byte(c.want.Load()) == FrameReady {
				on++
			}
		}
		for _, c := range ep.idle {
			isOn := byte(c.want.Load()) == FrameReady
			switch {
			case isOn && on > k:
				c.want.Store(uint32(FrameNotReady))
				on--
			case !isOn && on < k:
				c.want.Store(uint32(FrameReady))
				on++
			default:
				continue
			}
			flush = append(flush, c)
		}
	}
	return flush
}

// moveAfter is how long an offer stays with ep alone, unused: long enough
// for a hub that has a request waiting to take it, going by the round trip
// of its handshakes and by its dwell.
func (o *offers) moveAfter(ep *endpoint) time.Duration {
	return max(o.moveMin, 2*time.Duration(ep.rtt.Load()), ep.dwell)
}

// maxDwell bounds how long an offer stays with one hub address alone.
const maxDwell = 20 * time.Millisecond

// noteLate lengthens ep's dwell: it took an offer just after it was
// parked, too late (the other hubs may have taken it too); a hub that is
// slow to react, on a busy machine, gets longer. noteUnused shortens it
// again, towards o.moveMin.
func (o *offers) noteLate(ep *endpoint) {
	ep.dwell = min(maxDwell, max(o.moveMin, ep.dwell)*3/2)
}

// armLocked sets the timer for the next offer due to be parked.
func (o *offers) armLocked(now time.Time) {
	var next time.Time
	for _, of := range o.out {
		if of.at == nil {
			continue
		}
		if due := of.since.Add(o.moveAfter(of.at)); next.IsZero() || due.Before(next) {
			next = due
		}
	}
	switch {
	case next.IsZero():
		if o.timer != nil {
			o.timer.Stop()
		}
	case o.timer == nil:
		o.timer = time.AfterFunc(next.Sub(now), o.tick)
	default:
		o.timer.Reset(next.Sub(now))
	}
}

// tick parks the offers that have stayed unused with a hub address for
// its dwell: that hub has nothing waiting, and the others may.
func (o *offers) tick() {
	o.mu.Lock()
	now := time.Now()
	excl, parked := o.coverLocked()
	for _, of := range o.out {
		if of.at == nil || now.Before(of.since.Add(o.moveAfter(of.at))) {
			continue
		}
		excl[of.at]--
		noteUnused(of.at)
		of.from, of.at, of.parked, of.since = of.at, nil, true, now
		parked++
	}
	flush := o.applyLocked(excl, parked)
	o.armLocked(now)
	o.mu.Unlock()
	flushAll(flush)
}

// flushAll writes the readiness frames cs need, outside the offers' lock.
func flushAll(cs []*hubConn) {
	for _, c := range cs {
		c.flush()
	}
}
