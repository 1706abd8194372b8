package worker

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"
)

// frameConn takes the readiness frames written to it (the offers'
// bookkeeping is tested here, the wire in multihub_test.go; hubConn.sent
// says what the hub would know).
type frameConn struct{ net.Conn }

func (f *frameConn) Write(p []byte) (int, error) { return len(p), nil }

func (f *frameConn) SetWriteDeadline(time.Time) error { return nil }

func (f *frameConn) Close() error { return nil }

// offerRig is a worker's offers with idle connections to some hub
// addresses, one per address unless said otherwise.
type offerRig struct {
	w     *Worker
	eps   []*endpoint
	conns [][]*hubConn
}

func newOfferRig(t *testing.T, slots int, gated bool, perEndpoint ...int) *offerRig {
	t.Helper()
	w := &Worker{log: testLogger(t)}
	w.offers = newOffers(w, slots, gated)
	r := &offerRig{w: w}
	for i := range perEndpoint {
		ep := &endpoint{name: "hub", addr: string(rune('a' + i)), ctx: context.Background(), score: 1}
		w.offers.addEndpoint(ep)
		r.eps = append(r.eps, ep)
		r.conns = append(r.conns, nil)
	}
	// Connections become idle in turn across the addresses, as dials
	// to several hubs end.
	for k := 0; ; k++ {
		more := false
		for i, n := range perEndpoint {
			if k >= n {
				continue
			}
			more = true
			c := &hubConn{Conn: &frameConn{}, w: w, ep: r.eps[i], ready: true, released: make(chan struct{})}
			c.becomeIdle()
			r.conns[i] = append(r.conns[i], c)
		}
		if !more {
			break
		}
	}
	t.Cleanup(func() {
		for _, ep := range r.eps {
			w.offers.removeEndpoint(ep)
		}
	})
	return r
}

// ready returns, per hub address, how many of its connections the hub
// holds ready: idle ones whose last frame since the last response said
// so.
func (r *offerRig) ready() []int {
	out := make([]int, len(r.conns))
	for i, cs := range r.conns {
		for _, c := range cs {
			c.wmu.Lock()
			ready := c.idle && c.sent == FrameReady
			c.wmu.Unlock()
			if ready {
				out[i]++
			}
		}
	}
	return out
}

func isReady(c *hubConn) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.idle && c.sent == FrameReady
}

// arrive has a job arrive on c, as its first bytes do, and returns the
// decision on it.
func arrive(c *hubConn) int32 {
	c.arrived()
	return c.slot.Load()
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestOffersParkedWhenUnused: one free slot and three hub addresses:
// offered to one, then, unused, to all three.
func TestOffersParkedWhenUnused(t *testing.T) {
	defer func(d time.Duration) { offerMoveMin = d }(offerMoveMin)
	offerMoveMin = 30 * time.Millisecond
	r := newOfferRig(t, 1, false, 1, 1, 1)
	if got := r.ready(); sum(got) != 1 {
		t.Fatalf("ready %v, want one hub offered the slot", got)
	}
	eventually(t, "the offer to be parked", func() bool { return equal(r.ready(), []int{1, 1, 1}) })

	// Hub b takes it: the others' offers are withdrawn.
	b := r.conns[1][0]
	if s := arrive(b); s != slotTaken {
		t.Fatalf("arrival: %d, want the slot", s)
	}
	if got := r.ready(); !equal(got, []int{0, 0, 0}) {
		t.Fatalf("ready %v while the only slot is busy", got)
	}
	// Another hub's job crossed the withdrawal: refused.
	if s := arrive(r.conns[0][0]); s != slotRefused {
		t.Fatalf("crossing arrival: %d, want refused", s)
	}
	r.conns[0][0].becomeIdle()
	// The job ends: the slot goes to one hub alone again, the next in
	// turn among those that took offers lately (a was first): b.
	r.w.offers.done(b)
	b.becomeIdle()
	if got := r.ready(); !equal(got, []int{0, 1, 0}) {
		t.Fatalf("ready %v after b's job, want b offered the slot", got)
	}
}

// TestOffersCrossingTakesFreeSlot: a job that arrives on a connection not
// offered (a withdrawal crossed it) takes a slot that is free elsewhere.
func TestOffersCrossingTakesFreeSlot(t *testing.T) {
	defer func(d time.Duration) { offerMoveMin = d }(offerMoveMin)
	offerMoveMin = time.Hour
	r := newOfferRig(t, 1, false, 1, 1)
	got := r.ready()
	other := r.conns[0][0]
	if got[0] == 1 {
		other = r.conns[1][0]
	}
	if s := arrive(other); s != slotTaken {
		t.Fatalf("arrival on the connection not offered: %d, want the free slot", s)
	}
	if got := r.ready(); sum(got) != 0 {
		t.Fatalf("ready %v with no slot free", got)
	}
}

// TestOffersSlotsAcrossHubs: two slots, two hub addresses with two
// connections each: never more offers than free slots, and as many.
func TestOffersSlotsAcrossHubs(t *testing.T) {
	defer func(d time.Duration) { offerMoveMin = d }(offerMoveMin)
	offerMoveMin = time.Hour
	r := newOfferRig(t, 2, false, 2, 2)
	if got := r.ready(); sum(got) != 2 || got[0] != 1 || got[1] != 1 {
		t.Fatalf("ready %v, want one slot offered to each hub", got)
	}
	c := r.conns[0][0]
	if r.ready()[0] == 1 && !isReady(c) {
		c = r.conns[0][1]
	}
	arrive(c)
	if got := r.ready(); sum(got) != 1 {
		t.Fatalf("ready %v with one slot free", got)
	}
	c.Close()
	if got := r.ready(); sum(got) != 2 {
		t.Fatalf("ready %v after a connection whose job never ran closed, want its slot offered again", got)
	}
}

// TestOffersGateOneAtATime: behind a gate, one slot is offered at a time,
// and after a job takes it the next waits for the gate's next verdict.
func TestOffersGateOneAtATime(t *testing.T) {
	r := newOfferRig(t, 3, true, 3)
	if got := r.ready(); sum(got) != 0 {
		t.Fatalf("ready %v before the gate said anything", got)
	}
	r.w.offers.setGate(true)
	if got := r.ready(); sum(got) != 1 {
		t.Fatalf("ready %v behind an open gate, want one", got)
	}
	var offered *hubConn
	for _, c := range r.conns[0] {
		if isReady(c) {
			offered = c
		}
	}
	arrive(offered)
	if got := r.ready(); sum(got) != 0 {
		t.Fatalf("ready %v before the gate's next verdict", got)
	}
	r.w.offers.setGate(true)
	if got := r.ready(); sum(got) != 1 {
		t.Fatalf("ready %v after it, want one", got)
	}
	r.w.offers.setGate(false)
	if got := r.ready(); sum(got) != 0 {
		t.Fatalf("ready %v behind a closed gate", got)
	}
}

// TestOffersFollowDemand: a hub address that lets its offers go unused
// gets new ones only every exploreEvery offers; one that takes them gets
// the others.
func TestOffersFollowDemand(t *testing.T) {
	defer func(d time.Duration) { offerMoveMin = d }(offerMoveMin)
	offerMoveMin = time.Hour
	r := newOfferRig(t, 1, false, 1, 1)
	r.eps[1].score = 0.1 // b has let its offers go unused
	first := [2]int{}
	for range 4 * exploreEvery {
		got := r.ready()
		c := r.conns[0][0]
		if got[1] == 1 {
			c = r.conns[1][0]
			first[1]++
		} else {
			first[0]++
		}
		if s := arrive(c); s != slotTaken {
			t.Fatalf("arrival: %d", s)
		}
		r.eps[1].score = 0.1
		r.w.offers.done(c)
		c.becomeIdle()
	}
	if first[1] != 4 || first[0] != 4*exploreEvery-4 {
		t.Errorf("offers to a and b: %v, want b only every %d", first, exploreEvery)
	}
}

// TestOffersSharedAmongBusyHubs: three hub addresses that each take every
// offer they get at once (each has a queue) share the slots about evenly:
// a hub that has taken offers lately must not keep every slot it frees
// while the others wait for one offer in exploreEvery (seen starving a hub
// of three in TestSeveralHubProcesses).
func TestOffersSharedAmongBusyHubs(t *testing.T) {
	defer func(d time.Duration) { offerMoveMin = d }(offerMoveMin)
	offerMoveMin = time.Hour
	const hubs, slots, jobs = 3, 2, 600
	r := newOfferRig(t, slots, false, slots, slots, slots)
	r.eps[1].score, r.eps[2].score = 0.3, 0 // b and c are new to demand
	served := make([]int, hubs)
	var running []*hubConn
	for k := range jobs {
		// Every hub takes each offer it sees; where two see one, the
		// one in turn is first.
		for len(running) < slots {
			var taken *hubConn
			for i := range hubs {
				h := (k + i) % hubs
				for _, c := range r.conns[h] {
					if isReady(c) {
						taken = c
						break
					}
				}
				if taken != nil {
					break
				}
			}
			if taken == nil {
				t.Fatalf("job %d: %d slots running and none offered", k, len(running))
			}
			if s := arrive(taken); s != slotTaken {
				t.Fatalf("job %d: arrival refused: %d", k, s)
			}
			served[slices.Index(r.eps, taken.ep)]++
			running = append(running, taken)
		}
		// The oldest job ends.
		c := running[0]
		running = running[1:]
		r.w.offers.done(c)
		c.becomeIdle()
	}
	t.Logf("jobs per hub: %v", served)
	for i, n := range served {
		if n < jobs/hubs*3/4 {
			t.Errorf("hub %d served %d of %d jobs, want about a third: %v", i, n, jobs, served)
		}
	}
}
