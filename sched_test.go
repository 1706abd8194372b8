package reversehttp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// schedWaiter makes a waiter for the scheduler's tests; names tells them
// apart in what the tests expect.
func schedWaiter(name string, prio int, key string, weight int, arrived time.Time) *waiter {
	w := &waiter{since: arrived, tk: &ticket{prio: prio, key: key, weight: weight, arrived: arrived}}
	w.node.val = w
	w.ch = make(chan *workerConn, 1)
	names[w] = name
	return w
}

var names = map[*waiter]string{}

// popAll pops every waiter from q at now and names them in order.
func popAll(q *waitQueue, now time.Time, aging time.Duration) string {
	var got []string
	for {
		var w *waiter
		if q.sched != nil {
			w = q.sched.pop(now, aging)
			if q.sched.n == 0 {
				q.sched = nil
			}
		} else if e, ok := q.fifo.popFront(); ok {
			w = e
		}
		if w == nil {
			return strings.Join(got, " ")
		}
		q.uncount(w)
		got = append(got, names[w])
	}
}

func TestSchedulerPriorityOrder(t *testing.T) {
	var q waitQueue
	t0 := time.Now()
	for i, p := range []int{0, 5, 2, 5, -3, 0} {
		q.push(schedWaiter(fmt.Sprint(p, "#", i), p, "", 0, t0), false)
	}
	if got, want := popAll(&q, t0, time.Hour), "5#1 5#3 2#2 0#0 0#5 -3#4"; got != want {
		t.Fatalf("served %q, want %q: higher classes first, arrival order within one", got, want)
	}
	if q.sched != nil || q.len() != 0 || q.cost != 0 || q.unknown != 0 {
		t.Fatalf("an empty queue keeps state: %+v", q)
	}
}

// TestSchedulerAging: a request that has waited the aging bound goes ahead
// of every higher class, and not before.
func TestSchedulerAging(t *testing.T) {
	var q waitQueue
	t0 := time.Now()
	q.push(schedWaiter("low", 0, "", 0, t0), false)
	for i := range 3 {
		q.push(schedWaiter(fmt.Sprint("high", i), 9, "", 0, t0.Add(time.Millisecond)), false)
	}
	const aging = time.Second
	if w := q.sched.pop(t0.Add(aging-time.Millisecond), aging); names[w] != "high0" {
		t.Fatalf("before the bound %s went first, want high0", names[w])
	}
	if w := q.sched.pop(t0.Add(aging), aging); names[w] != "low" {
		t.Fatalf("at the bound %s went first, want low", names[w])
	}
	if w := q.sched.pop(t0.Add(aging), aging); names[w] != "high1" {
		t.Fatalf("then %s, want high1", names[w])
	}
}

// TestSchedulerRoundRobin: within a class, keys take turns, each as many
// at a time as its weight, whoever sent more.
func TestSchedulerRoundRobin(t *testing.T) {
	for _, tc := range []struct {
		weightA int
		want    string
	}{
		{0, "A B A B A A A A"},
		{2, "A A B A A B A A"},
	} {
		var q waitQueue
		t0 := time.Now()
		for range 6 {
			q.push(schedWaiter("A", 0, "a", tc.weightA, t0), false)
		}
		for range 2 {
			q.push(schedWaiter("B", 0, "b", 0, t0), false)
		}
		if got := popAll(&q, t0, time.Hour); got != tc.want {
			t.Errorf("weight %d: served %q, want %q", tc.weightA, got, tc.want)
		}
	}
}

// TestSchedulerRequeueKeepsPlace: a request offered to a worker that could
// not start it goes back to the head of its flow, in its class.
func TestSchedulerRequeueKeepsPlace(t *testing.T) {
	var q waitQueue
	t0 := time.Now()
	first := schedWaiter("first", 1, "a", 0, t0)
	q.push(first, false)
	q.push(schedWaiter("second", 1, "a", 0, t0), false)
	q.push(schedWaiter("other", 1, "b", 0, t0), false)
	w, _ := q.pop(time.Hour)
	if w != first {
		t.Fatalf("%s went first", names[w])
	}
	q.push(first, true)
	if got, want := popAll(&q, t0, time.Hour), "first other second"; got != want {
		t.Fatalf("after the requeue: %q, want %q", got, want)
	}
}

// TestSchedulerKeysBounded: however many keys consumers send, the
// scheduler tracks no more flows than requests wait, and none once they
// are gone; the queue goes back to the plain list.
func TestSchedulerKeysBounded(t *testing.T) {
	var q waitQueue
	t0 := time.Now()
	var ws []*waiter
	for i := range 1000 {
		w := schedWaiter("x", i%7, fmt.Sprint("tenant-", i), 0, t0)
		ws = append(ws, w)
		q.push(w, false)
	}
	if n := q.sched.flows(); n != 1000 {
		t.Fatalf("%d flows for 1000 keys", n)
	}
	// Those that leave the queue (timeouts, cancels) take their flow along.
	for _, w := range ws[:500] {
		q.remove(w)
	}
	if n := q.sched.flows(); n != 500 || q.len() != 500 {
		t.Fatalf("%d flows for %d waiting", n, q.len())
	}
	popAll(&q, t0, time.Hour)
	if q.sched != nil || q.len() != 0 {
		t.Fatal("an empty scheduler stays")
	}
	// Plain requests go to the list again.
	q.push(schedWaiter("plain", 0, "", 0, t0), false)
	if q.sched != nil || q.fifo.len() != 1 {
		t.Fatal("a plain request after the scheduler emptied did not go to the list")
	}
}

// TestSchedulerTakesOverFIFO: the requests waiting in the list when the
// first one with a class arrives keep their order, as class 0.
func TestSchedulerTakesOverFIFO(t *testing.T) {
	var q waitQueue
	t0 := time.Now()
	q.push(schedWaiter("p1", 0, "", 0, t0), false)
	q.push(schedWaiter("p2", 0, "", 0, t0), false)
	q.push(schedWaiter("hi", 3, "", 0, t0), false)
	q.push(schedWaiter("p3", 0, "", 0, t0), false)
	if got, want := popAll(&q, t0, time.Hour), "hi p1 p2 p3"; got != want {
		t.Fatalf("served %q, want %q", got, want)
	}
}

// TestEstimate checks the wait estimate's arithmetic on a known queue.
func TestEstimate(t *testing.T) {
	p := newPool("est")
	for range 4 {
		p.conns[new(workerConn)] = struct{}{}
	}
	if _, ok := p.estimateLocked(nil); ok {
		t.Fatal("an estimate before any job completed")
	}
	p.service.add(200 * time.Millisecond)
	t0 := time.Now()
	// Six waiting: four of a route whose jobs take 1 s, two of one
	// without an estimate (the pool's 200 ms counts for them).
	for range 4 {
		w := schedWaiter("slow", 0, "", 0, t0)
		w.tk.cost = time.Second
		p.waiting.push(w, false)
	}
	for range 2 {
		p.waiting.push(schedWaiter("new", 0, "", 0, t0), false)
	}
	est, ok := p.estimateLocked(&ticket{})
	// (4×1 s + 2×200 ms + 200 ms running) / 4 slots
	if want := (4*time.Second + 600*time.Millisecond) / 4; !ok || est != want {
		t.Fatalf("estimate %v, %v; want %v", est, ok, want)
	}
	if got := retryAfterOf(est); got != 2 {
		t.Fatalf("Retry-After %d for %v, want 2", got, est)
	}
	// Requests refused one after the other are told to come back a
	// job's share of a slot (50 ms) apart.
	var advised []int
	for range 20 {
		advised = append(advised, p.retryAfter(&ticket{}, errQueueFull))
	}
	if advised[0] != 2 || advised[19] != 3 || !slices.IsSorted(advised) {
		t.Fatalf("Retry-After of 20 refusals in a row: %v; want 2 (1.15 s) rising to 3 (2.1 s)", advised)
	}
	if retryAfterOf(time.Millisecond) != 1 || retryAfterOf(time.Hour) != maxRetryAfter {
		t.Fatal("Retry-After out of its bounds")
	}
}

// TestSchedulerSparseKeyGoesNext: a key with nothing waiting is served
// next when a request of it arrives, ahead of a flooding key's turn.
func TestSchedulerSparseKeyGoesNext(t *testing.T) {
	var q waitQueue
	t0 := time.Now()
	for range 5 {
		q.push(schedWaiter("A", 0, "a", 0, t0), false)
	}
	q.pop(time.Hour)
	q.push(schedWaiter("B", 0, "b", 0, t0), false)
	if got, want := popAll(&q, t0, time.Hour), "B A A A A"; got != want {
		t.Fatalf("served %q, want %q", got, want)
	}
}

// BenchmarkQueuePushPop measures one request through the queue (pop the
// next, push it back, with 1,000 waiting): the plain list, and the
// scheduler with keys and classes.
func BenchmarkQueuePushPop(b *testing.B) {
	for _, tc := range []struct {
		name        string
		keys, prios int
	}{{"fifo", 0, 0}, {"keys=100", 100, 0}, {"keys=100/classes=4", 100, 4}} {
		b.Run(tc.name, func(b *testing.B) {
			var q waitQueue
			t0 := time.Now()
			ws := make([]*waiter, 1000)
			for i := range ws {
				tk := &ticket{arrived: t0}
				if tc.keys > 0 {
					tk.key = fmt.Sprint("k", i%tc.keys)
				}
				if tc.prios > 0 {
					tk.prio = i % tc.prios
				}
				ws[i] = &waiter{since: t0, tk: tk}
				ws[i].node.val = ws[i]
			}
			for _, w := range ws {
				q.push(w, false)
			}
			b.ResetTimer()
			for range b.N {
				w, _ := q.pop(time.Hour)
				q.push(w, false)
			}
		})
	}
}

// BenchmarkRouteBookkeeping times what a route without scheduling options
// adds to each request: filling its ticket and, once it is served,
// updating the pool's and the route's service-time averages.
func BenchmarkRouteBookkeeping(b *testing.B) {
	h := &Handler{}
	if err := h.provisionSched(); err != nil {
		b.Fatal(err)
	}
	p := newPool("bench")
	r, _ := http.NewRequest(http.MethodGet, "http://example.com/", nil)
	now := time.Now()
	b.ReportAllocs()
	for range b.N {
		var tk ticket
		h.ticket(r, now, &tk)
		h.served(p, 5*time.Millisecond)
	}
}

// TestSchedJSONErrors: the handler's scheduling options in JSON are
// checked when it is provisioned, as the Caddyfile checks them.
func TestSchedJSONErrors(t *testing.T) {
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{Priority: "urgent"}, `priority must be an integer from -1000 to 1000, or placeholders, not "urgent"`},
		{Handler{Priority: "-1001"}, `not "-1001"`},
		{Handler{FairWeights: map[string]int{"gold": 2}}, "fair_weights need fair_by"},
		{Handler{FairBy: "{remote_host}", FairWeights: map[string]int{"gold": 1001}}, `fair_by weight of "gold" must be from 1 to 1000, not 1001`},
	} {
		err := tc.h.provisionSched()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.h, err, tc.want)
		}
	}
	ok := Handler{Priority: "{http.request.header.X-Priority}", FairBy: "{remote_host}", FairWeights: map[string]int{"gold": 1000}}
	if err := ok.provisionSched(); err != nil || !ok.sched.prioExpr {
		t.Fatalf("valid options: %v", err)
	}
	c := Handler{Priority: "-7"}
	if err := c.provisionSched(); err != nil || c.sched.prio != -7 || c.sched.prioExpr {
		t.Fatalf("constant priority: %v %+v", err, c.sched)
	}
}

// TestPoolFullQueueMakesRoomForHigherClass: in a full queue a request of a
// higher class takes the place of the newest of the lower class; one of
// the same class is refused.
func TestPoolFullQueueMakesRoomForHigherClass(t *testing.T) {
	p := testPool(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make([]chan error, 2)
	for i := range errs {
		errs[i] = make(chan error, 1)
		go func() {
			_, err := p.acquireFor(ctx, far(), &ticket{}, false)
			errs[i] <- err
		}()
		waitFor(t, "queued", func() bool { return p.Stats().Waiting == i+1 })
	}
	if _, err := p.acquireFor(ctx, far(), &ticket{}, false); !errors.Is(err, errQueueFull) {
		t.Fatalf("a third of the same class: %v, want errQueueFull", err)
	}
	go p.acquireFor(ctx, far(), &ticket{prio: 5}, false)
	if err := <-errs[1]; !errors.Is(err, errQueueFull) {
		t.Fatalf("the newest of the lower class: %v, want errQueueFull", err)
	}
	waitFor(t, "the higher one queued", func() bool { return p.Stats().Waiting == 2 })
	select {
	case err := <-errs[0]:
		t.Fatalf("the oldest left the queue: %v", err)
	default:
	}
}

// TestRetryAfterSpreadBounded: refusals one after the other are told times
// a job's share of a slot apart, but a flood of them (consumers that do
// not obey come back and are counted again) must not push the promise
// beyond a full queue's worth of spread, nor beyond what Retry-After may
// say (it ran 2h46m ahead after 100,000 refusals, so that every later 503
// said 300 s for a wait of 0.1 s).
func TestRetryAfterSpreadBounded(t *testing.T) {
	for _, tc := range []struct {
		maxQueue int
		want     int // the most Retry-After may say after the flood
	}{
		{10, 2},  // 0.1 s of wait, 10 × 0.1 s of spread
		{0, 300}, // no queue limit: Retry-After's own bound
		{1000, 101},
	} {
		p := &Pool{conns: map[*workerConn]struct{}{{}: {}}}
		p.limits.maxQueue = tc.maxQueue
		p.service.add(100 * time.Millisecond)
		for range 100000 {
			p.retryAfter(nil, errQueueFull)
		}
		ahead := time.Until(p.promised)
		got := p.retryAfter(nil, errQueueFull)
		t.Logf("max_queue %d: promise %v ahead, Retry-After %d", tc.maxQueue, ahead.Round(time.Millisecond), got)
		if got > tc.want || ahead > maxRetryAfter*time.Second {
			t.Errorf("max_queue %d: Retry-After %d (want at most %d), promise %v ahead", tc.maxQueue, got, tc.want, ahead)
		}
	}
}

// TestPriorityOfPlaceholder: a priority taken from a placeholder's value is
// 0 when it is no integer and the nearest bound beyond the bounds.
func TestPriorityOfPlaceholder(t *testing.T) {
	for in, want := range map[string]int{
		"7": 7, " -3 ": -3, "": 0, "high": 0, "1.5": 0,
		"5000": maxPriority, "-5000": minPriority,
	} {
		if got := priorityOf(in); got != want {
			t.Errorf("priorityOf(%q) = %d, want %d", in, got, want)
		}
	}
}
