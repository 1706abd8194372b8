package reversehttp

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// schedConfig is a pool with one route whose handler options are opts;
// poolOpts go in the pool's block.
func schedConfig(poolOpts, opts string) string {
	return fmt.Sprintf(`{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			%s
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs {
		%s
	}
}`, poolOpts, opts)
}

// jobLog is a worker's handler that notes the X-Name of each job as it
// starts it. The job named "blocker" holds its slot until release is
// closed; the others take sleep.
type orderLog struct {
	mu      sync.Mutex
	order   []string
	started map[string]time.Time
	release chan struct{}
	sleep   time.Duration
}

func newOrderLog(sleep time.Duration) *orderLog {
	return &orderLog{release: make(chan struct{}), sleep: sleep, started: map[string]time.Time{}}
}

func (l *orderLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.Header.Get("X-Name")
	l.mu.Lock()
	l.order = append(l.order, name)
	l.started[name] = time.Now()
	l.mu.Unlock()
	if name == "blocker" {
		<-l.release
	} else {
		time.Sleep(l.sleep)
	}
	w.Write([]byte("ok"))
}

func (l *orderLog) served() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order...)
}

// sendAsync sends a GET with the X-Name and other headers (name: value
// pairs) and returns where its status (0 for a transport error) arrives.
func sendAsync(ctx context.Context, h *hub, name string, headers ...string) <-chan int {
	done := make(chan int, 1)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.site+"/", nil)
	req.Header.Set("X-Name", name)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	go func() {
		resp, err := testClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	return done
}

// queueBehindBlocker takes the worker's one slot with the blocker, then
// queues the requests named, one after the other, each with its headers.
func queueBehindBlocker(t *testing.T, h *hub, p *Pool, reqs [][]string) []<-chan int {
	t.Helper()
	dones := []<-chan int{sendAsync(t.Context(), h, "blocker")}
	waitFor(t, "the blocker to take the slot", func() bool { return p.Stats().Busy == 1 && p.Stats().Idle == 0 })
	for i, r := range reqs {
		dones = append(dones, sendAsync(t.Context(), h, r[0], r[1:]...))
		waitFor(t, "request "+r[0]+" to queue", func() bool { return p.Stats().Waiting == i+1 })
	}
	return dones
}

func waitAll(t *testing.T, dones []<-chan int) {
	t.Helper()
	for i, d := range dones {
		if code := <-d; code != http.StatusOK {
			t.Errorf("request %d: status %d", i, code)
		}
	}
}

// TestPriorityServedFirst: with one slot, the waiting requests are served
// highest priority first, in arrival order within a class.
func TestPriorityServedFirst(t *testing.T) {
	h := newHub(t, schedConfig("", "priority {http.request.header.X-Priority}"))
	p := livePool(t, "jobs")
	log := newOrderLog(0)
	startWorker(t, h, "jobs", "secret", 1, log)
	dones := queueBehindBlocker(t, h, p, [][]string{
		{"p0", "X-Priority", "0"}, {"p1", "X-Priority", "1"}, {"p2", "X-Priority", "2"},
		{"p1b", "X-Priority", "1"}, {"none"}, {"junk", "X-Priority", "high"},
	})
	close(log.release)
	waitAll(t, dones)
	got := strings.Join(log.served(), " ")
	if want := "blocker p2 p1 p1b p0 none junk"; got != want {
		t.Fatalf("served %q, want %q", got, want)
	}
}

// TestPriorityAging: a low-priority request behind a stream of higher ones
// is served once it has waited priority_aging, ahead of those still
// waiting, and not before.
func TestPriorityAging(t *testing.T) {
	const aging = 300 * time.Millisecond
	h := newHub(t, schedConfig("priority_aging 300ms", "priority {http.request.header.X-Priority}"))
	p := livePool(t, "jobs")
	log := newOrderLog(100 * time.Millisecond)
	startWorker(t, h, "jobs", "secret", 1, log)
	reqs := [][]string{{"low", "X-Priority", "0"}}
	for i := range 8 {
		reqs = append(reqs, []string{fmt.Sprint("high", i), "X-Priority", "5"})
	}
	lowQueued := time.Now()
	dones := queueBehindBlocker(t, h, p, reqs)
	released := time.Now()
	close(log.release)
	waitAll(t, dones)
	served := log.served()[1:]
	pos := 0
	for served[pos] != "low" {
		pos++
	}
	t.Logf("served %v", served)
	if pos == len(served)-1 {
		t.Fatalf("the low request was served last: aging did not promote it")
	}
	if pos == 0 && released.Sub(lowQueued) < aging {
		t.Fatalf("the low request went before higher ones before it had waited %v", aging)
	}
	log.mu.Lock()
	waited := log.started["low"].Sub(lowQueued)
	log.mu.Unlock()
	if waited < aging {
		t.Fatalf("the low request went ahead of higher ones after %v, before the bound %v", waited, aging)
	}
}

// TestFairByTurns: within a class, tenants take turns, whichever queued
// more, each as many at a time as its weight.
func TestFairByTurns(t *testing.T) {
	for _, tc := range []struct {
		heavy string
		want  string
	}{
		{"a", "a b a b a a a a"},
		{"gold", "gold gold b gold gold b gold gold"},
	} {
		t.Run(tc.heavy, func(t *testing.T) {
			h := newHub(t, schedConfig("", `fair_by {http.request.header.X-Tenant} {
			weight gold 2
		}`))
			p := livePool(t, "jobs")
			log := newOrderLog(0)
			startWorker(t, h, "jobs", "secret", 1, log)
			var reqs [][]string
			for range 6 {
				reqs = append(reqs, []string{tc.heavy, "X-Tenant", tc.heavy})
			}
			for range 2 {
				reqs = append(reqs, []string{"b", "X-Tenant", "b"})
			}
			dones := queueBehindBlocker(t, h, p, reqs)
			close(log.release)
			waitAll(t, dones)
			if got := strings.Join(log.served()[1:], " "); got != tc.want {
				t.Fatalf("served %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFairByKeysForgotten: requests with ever new keys make the pool track
// no more keys than requests wait, and none once they have gone, whether
// served or given up.
func TestFairByKeysForgotten(t *testing.T) {
	h := newHub(t, schedConfig("", "fair_by {http.request.header.X-Tenant}"))
	p := livePool(t, "jobs")
	log := newOrderLog(0)
	startWorker(t, h, "jobs", "secret", 1, log)
	flows := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.waiting.sched == nil {
			return 0
		}
		return p.waiting.sched.flows()
	}
	var reqs [][]string
	for i := range 40 {
		reqs = append(reqs, []string{"r", "X-Tenant", fmt.Sprint("served-", i)})
	}
	dones := queueBehindBlocker(t, h, p, reqs)
	// These give up while they wait.
	ctx, cancel := context.WithCancel(t.Context())
	var gone []<-chan int
	for i := range 40 {
		gone = append(gone, sendAsync(ctx, h, "x", "X-Tenant", fmt.Sprint("gone-", i)))
	}
	waitFor(t, "80 waiting", func() bool { return p.Stats().Waiting == 80 })
	if n := flows(); n != 80 {
		t.Fatalf("%d keys tracked for 80 waiting requests of distinct keys", n)
	}
	cancel()
	for _, d := range gone {
		<-d
	}
	waitFor(t, "the cancelled requests to leave", func() bool { return p.Stats().Waiting == 40 })
	if n := flows(); n != 40 {
		t.Fatalf("%d keys tracked for 40 waiting", n)
	}
	close(log.release)
	waitAll(t, dones)
	p.mu.Lock()
	sched := p.waiting.sched
	p.mu.Unlock()
	if sched != nil {
		t.Fatalf("the scheduler stays with %d keys after the queue emptied", sched.flows())
	}
}

// warmEstimate runs n jobs one after the other, so that the pool's
// service-time estimate has samples.
func warmEstimate(t *testing.T, h *hub, n int) {
	t.Helper()
	for range n {
		if code := <-sendAsync(t.Context(), h, "warm"); code != http.StatusOK {
			t.Fatalf("warm-up job: %d", code)
		}
	}
}

// TestRetryAfterEstimate: the Retry-After of a full queue's 503 is the
// estimated wait of a request that joined it: the waiting requests' and
// the running job's service times, from the jobs observed, over the slots.
func TestRetryAfterEstimate(t *testing.T) {
	const job = 250 * time.Millisecond
	h := newHub(t, schedConfig("max_queue 5", ""))
	p := livePool(t, "jobs")
	startWorker(t, h, "jobs", "secret", 1, newOrderLog(job))
	warmEstimate(t, h, 3)
	if s := p.service.get(); s < job {
		t.Fatalf("service estimate %v for jobs of %v", s, job)
	}
	var dones []<-chan int
	for i := range 6 {
		dones = append(dones, sendAsync(t.Context(), h, fmt.Sprint("job", i)))
		if i > 0 {
			waitFor(t, "queued", func() bool { return p.Stats().Waiting == i })
		} else {
			waitFor(t, "running", func() bool { return p.Stats().Busy == 1 })
		}
	}
	before := p.service.get()
	resp, _ := h.get("/")
	after := p.service.get()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("full queue: %d", resp.StatusCode)
	}
	got, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	// Five waiting and one running, all of this one route, on one slot.
	want1, want2 := retryAfterOf(6*before), retryAfterOf(6*after)
	if got != want1 && got != want2 {
		t.Fatalf("Retry-After %q; the estimate of 6 × %v says %d", resp.Header.Get("Retry-After"), before, want1)
	}
	t.Logf("Retry-After %d s for 6 jobs of %v (estimated %v each)", got, job, before)
	waitAll(t, dones)
}

// TestAdmitByEstimate: with admit_by_estimate, a request the estimate says
// would wait past its queue timeout gets 503 at once, counted as
// refused_estimate; one it says would be served in time is queued. Another
// route without the option fills the queue.
func TestAdmitByEstimate(t *testing.T) {
	const job = 250 * time.Millisecond
	h := newHub(t, `{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	handle /admit {
		reverse_http jobs {
			queue_timeout 1200ms
			admit_by_estimate
		}
	}
	reverse_http jobs
}`)
	p := livePool(t, "jobs")
	log := newOrderLog(job)
	startWorker(t, h, "jobs", "secret", 1, log)
	warmEstimate(t, h, 3)
	admit := func(ctx context.Context) <-chan int {
		done := make(chan int, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.site+"/admit", nil)
			req.Header.Set("X-Name", "admit")
			resp, err := testClient.Do(req)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
		return done
	}
	// The blocker runs and one waits: the estimate is two jobs, about
	// 0.5 s, within 1.2 s.
	dones := queueBehindBlocker(t, h, p, [][]string{{"q1"}})
	ctx, cancel := context.WithCancel(t.Context())
	admitted := admit(ctx)
	waitFor(t, "the admitted request to queue", func() bool { return p.Stats().Waiting == 2 })
	cancel()
	<-admitted
	waitFor(t, "the admitted request to leave", func() bool { return p.Stats().Waiting == 1 })
	// Seven waiting: eight jobs, about 2 s, past 1.2 s.
	for i := 2; i <= 7; i++ {
		dones = append(dones, sendAsync(t.Context(), h, fmt.Sprint("q", i)))
		waitFor(t, "queued", func() bool { return p.Stats().Waiting == i })
	}
	s := p.service.get()
	resp, _ := h.do(func() *http.Request { r, _ := http.NewRequest(http.MethodGet, h.site+"/admit", nil); return r }())
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a request estimated to wait 8 × %v past a 1.2 s timeout: %d, want 503", s, resp.StatusCode)
	}
	if n := p.obs.requests[outcomeRefusedEstimate].Load(); n != 1 {
		t.Fatalf("refused_estimate counts %d", n)
	}
	if n := p.obs.requests[outcomeQueueTimeout].Load(); n != 0 {
		t.Fatalf("the refusal counted as a queue timeout")
	}
	if got, want := resp.Header.Get("Retry-After"), strconv.Itoa(retryAfterOf(8*s)); got != want {
		t.Fatalf("Retry-After %q, want %s from the estimate", got, want)
	}
	close(log.release)
	waitAll(t, dones)
}

// TestFairByFullQueue: a key that fills the queue gives up its newest
// requests to make room for another key's, down to an even share; past
// that, the full queue refuses as ever.
func TestFairByFullQueue(t *testing.T) {
	h := newHub(t, schedConfig("max_queue 4", "fair_by {http.request.header.X-Tenant}"))
	p := livePool(t, "jobs")
	log := newOrderLog(0)
	startWorker(t, h, "jobs", "secret", 1, log)
	var reqs [][]string
	for i := range 4 {
		reqs = append(reqs, []string{fmt.Sprint("a", i+1), "X-Tenant", "a"})
	}
	dones := queueBehindBlocker(t, h, p, reqs)
	b1 := sendAsync(t.Context(), h, "b1", "X-Tenant", "b")
	if code := <-dones[4]; code != http.StatusServiceUnavailable {
		t.Fatalf("a4, the flood's newest, got %d when b1 came to the full queue; want 503", code)
	}
	b2 := sendAsync(t.Context(), h, "b2", "X-Tenant", "b")
	if code := <-dones[3]; code != http.StatusServiceUnavailable {
		t.Fatalf("a3 got %d when b2 came; want 503", code)
	}
	waitFor(t, "b1 and b2 queued", func() bool { return p.Stats().Waiting == 4 })
	// Two each: the next of b is refused itself.
	if code := <-sendAsync(t.Context(), h, "b3", "X-Tenant", "b"); code != http.StatusServiceUnavailable {
		t.Fatalf("b3 got %d from a queue evenly shared; want 503", code)
	}
	if n := p.obs.requests[outcomeQueueFull].Load(); n != 3 {
		t.Fatalf("queue_full counts %d, want 3", n)
	}
	close(log.release)
	waitAll(t, []<-chan int{dones[0], dones[1], dones[2], b1, b2})
	if got := strings.Join(log.served(), " "); got != "blocker a1 b1 a2 b2" {
		t.Fatalf("served %q", got)
	}
}

// TestRequeueKeepsPriority: a request a worker declines goes back to the
// head of its own class, ahead of a lower class that waited meanwhile.
func TestRequeueKeepsPriority(t *testing.T) {
	h := newHub(t, schedConfig("", "priority {http.request.header.X-Priority}"))
	p := livePool(t, "jobs")
	log := newOrderLog(0)
	startWorker(t, h, "jobs", "secret", 1, log)
	dones := queueBehindBlocker(t, h, p, [][]string{{"mid", "X-Priority", "3"}, {"high", "X-Priority", "5"}})
	// A raw worker joins: it gets the high one, and declines it.
	conn, br := rawWorker(t, h)
	req, err := http.ReadRequest(br)
	if err != nil {
		t.Fatal(err)
	}
	if got := req.Header.Get("X-Name"); got != "high" {
		t.Fatalf("the new connection got %q, want high", got)
	}
	decline(conn)
	waitFor(t, "the declined request back in the queue", func() bool { return p.Stats().Declined == 1 && p.Stats().Waiting == 2 })
	close(log.release)
	waitAll(t, dones)
	if got, want := strings.Join(log.served(), " "), "blocker high mid"; got != want {
		t.Fatalf("served %q, want %q", got, want)
	}
}
