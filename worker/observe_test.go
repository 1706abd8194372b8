package worker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu       sync.Mutex
	running  map[*Job]bool
	ended    []endedJob
	attempts []HubAttempt
}

// endedJob is what JobEnded saw of a job.
type endedJob struct {
	id, method, path, hub string
	outcome               Outcome
	in, out               int64
	status                int
	started               bool // JobStarted saw it first
	duration              time.Duration
}

func newRecorder() *recorder { return &recorder{running: make(map[*Job]bool)} }

func (r *recorder) JobStarted(j *Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running[j] = true
}

func (r *recorder) JobEnded(j *Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = append(r.ended, endedJob{j.RequestID, j.Method, j.Path, j.Hub, j.Outcome(),
		j.BytesIn(), j.BytesOut(), j.Status(), r.running[j], j.Duration()})
	delete(r.running, j)
}

func (r *recorder) HubAttempt(a HubAttempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, a)
}

// last waits until n jobs have ended and returns the last.
func (r *recorder) last(t *testing.T, n int) endedJob {
	t.Helper()
	var e endedJob
	eventually(t, fmt.Sprintf("%d ended jobs", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.ended) >= n {
			e = r.ended[n-1]
		}
		return len(r.ended) >= n
	})
	return e
}

// runningJobs returns the jobs started and not ended.
func (r *recorder) runningJobs() []*Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Job
	for j := range r.running {
		out = append(out, j)
	}
	return out
}

// brokenUpstream reads one request per connection and closes it without
// an answer: a Forwarder's request to it fails after it was sent.
func brokenUpstream(t *testing.T) *url.URL {
	t.Helper()
	u, _ := url.Parse(rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		c.Close()
	}))
	return u
}

// TestObserverOutcomes runs a known sequence of jobs and checks what the
// Observer is told of each: its outcome, its bytes and status, and the
// running job while it runs. No slot is freed between a job on hub A and
// one on hub B, which the latter shows.
func TestObserverOutcomes(t *testing.T) {
	a, b := newTestHub(t), newTestHub(t)
	obs := newRecorder()
	hold := make(chan struct{})
	holding := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %d bytes", len(body))
	})
	mux.HandleFunc("/decline", func(w http.ResponseWriter, r *http.Request) { Decline(w) })
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "working")
		http.NewResponseController(w).Flush()
		holding <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-hold:
		}
	})
	mux.Handle("/fail", NewForwarder(brokenUpstream(t), slog.New(slog.DiscardHandler)))
	// /length/N declares N bytes, sends 5, and returns once the hub has
	// closed the connection.
	mux.HandleFunc("/length/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strings.TrimPrefix(r.URL.Path, "/length/"))
		io.WriteString(w, "hello")
		http.NewResponseController(w).Flush()
		holding <- struct{}{}
		<-r.Context().Done()
	})
	rw := startWorker(t, a, Config{Hubs: []string{b.addr()}, Observer: obs, Handler: mux,
		Logger: slog.New(slog.DiscardHandler)})
	sa, sb := a.next(t), b.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })

	req, _ := http.NewRequest("POST", "http://job.example/ok?secret=1", strings.NewReader("12345678"))
	req.Header.Set("X-Request-Id", "id-ok")
	if resp, body := sa.send(t, req); resp.StatusCode != 200 || body != "got 8 bytes" {
		t.Fatalf("/ok: %d %q", resp.StatusCode, body)
	}
	want := endedJob{id: "id-ok", method: "POST", path: "/ok", hub: a.addr(), outcome: OutcomeOK,
		in: 8, out: 11, status: 200, started: true}
	if e := obs.last(t, 1); e.duration <= 0 || (e != endedJob{want.id, want.method, want.path, want.hub,
		want.outcome, want.in, want.out, want.status, true, e.duration}) {
		t.Errorf("/ok: %+v, want %+v", e, want)
	}

	// A job held on hub A is listed while it runs; one that hub B sends
	// meanwhile finds no free slot.
	hreq := get("/hold")
	hreq.Header.Set("X-Request-Id", "id-hold")
	hreq.Write(sa.c)
	<-holding
	run := obs.runningJobs()
	if len(run) != 1 || run[0].RequestID != "id-hold" || run[0].Path != "/hold" || run[0].Status() != 202 ||
		run[0].BytesOut() != 7 || run[0].Outcome() != "" || run[0].Duration() != 0 {
		t.Errorf("running: %+v", run)
	}
	if n := rw.Busy(); n != 1 {
		t.Errorf("Busy %d while a job runs, want 1", n)
	}
	if resp, _ := sb.send(t, get("/ok")); resp.StatusCode != 503 {
		t.Fatalf("job beyond the slots: %d", resp.StatusCode)
	}
	if e := obs.last(t, 2); e.outcome != OutcomeNoSlot || e.started || e.hub != b.addr() || e.path != "/ok" {
		t.Errorf("job beyond the slots: %+v", e)
	}
	close(hold)
	if resp, body := sa.read(t, hreq); resp.StatusCode != 202 || body != "working" {
		t.Fatalf("/hold: %d %q", resp.StatusCode, body)
	}
	if e := obs.last(t, 3); e.outcome != OutcomeOK || e.id != "id-hold" {
		t.Errorf("/hold: %+v", e)
	}

	// The hub closes the connection of a running job: cancelled.
	hold = make(chan struct{})
	get("/hold").Write(sa.c)
	<-holding
	sa.c.Close()
	if e := obs.last(t, 4); e.outcome != OutcomeCancelled || e.status != 202 {
		t.Errorf("cancelled job: %+v", e)
	}
	sa = a.next(t)

	if resp, _ := sa.send(t, get("/decline")); resp.StatusCode != 503 {
		t.Fatalf("/decline: %d", resp.StatusCode)
	}
	if e := obs.last(t, 5); e.outcome != OutcomeDeclined || !e.started {
		t.Errorf("declined job: %+v", e)
	}
	sa = a.next(t)

	// A panic, and an upstream that hangs up on the request: failed.
	get("/panic").Write(sa.c)
	sa.expectEOF(t, waitLimit)
	if e := obs.last(t, 6); e.outcome != OutcomeFailed {
		t.Errorf("panicking job: %+v", e)
	}
	sa = a.next(t)
	if resp, _ := sa.send(t, get("/fail")); resp.StatusCode != 502 {
		t.Fatalf("/fail: %d", resp.StatusCode)
	}
	if e := obs.last(t, 7); e.outcome != OutcomeFailed || e.status != 502 {
		t.Errorf("failed job: %+v", e)
	}

	// The hub closes the connection once it has the whole response, before
	// the Handler returns (as for a reload): ok. Closed before the
	// declared length was sent: cancelled.
	req = get("/length/5")
	req.Write(sa.c)
	<-holding
	if resp, body := sa.read(t, req); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("/length/5: %d %q", resp.StatusCode, body)
	}
	sa.c.Close()
	if e := obs.last(t, 8); e.outcome != OutcomeOK || e.out != 5 {
		t.Errorf("a whole response, then the hub hung up: %+v", e)
	}
	sa = a.next(t)
	get("/length/10").Write(sa.c)
	<-holding
	sa.c.Close()
	if e := obs.last(t, 9); e.outcome != OutcomeCancelled || e.out != 5 {
		t.Errorf("half a response, then the hub hung up: %+v", e)
	}
	if run := obs.runningJobs(); len(run) != 0 {
		t.Errorf("still running: %+v", run)
	}
	eventually(t, "no busy slot", func() bool { return rw.Busy() == 0 })
	// Every job has left the package's map of running jobs (an observed
	// job once stayed there, with its request, for ever).
	eventually(t, "no job in the map of running jobs", func() bool {
		n := 0
		jobs.Range(func(k, v any) bool {
			if v.(*job).worker == rw.Worker {
				n++
			}
			return true
		})
		return n == 0
	})
	hubs := rw.Hubs()
	if len(hubs) != 2 || hubs[0].Hub != a.addr() || hubs[1].Hub != b.addr() || hubs[1].Connections != 1 {
		t.Errorf("Hubs: %+v", hubs)
	}
}

// syncLog is a log destination the worker and the test share.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConnectedLog: the worker logs at INFO when it first connects to a
// hub address, after how many attempts, and when it connects again after
// failed attempts, but not for every connection; the Observer is told of
// every attempt.
func TestConnectedLog(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var out syncLog
	obs := newRecorder()
	count := func(ok bool) int {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		n := 0
		for _, a := range obs.attempts {
			if (a.Err == nil) == ok {
				n++
			}
		}
		return n
	}
	failed := func() int { return count(false) }
	// The worker counts a connection (Connected) before it logs it and
	// tells the Observer: a test that waited for Connected waits for
	// these too.
	succeeded := func(n int) {
		t.Helper()
		eventually(t, fmt.Sprintf("%d successful attempts", n), func() bool { return count(true) >= n })
	}
	rw := startWorkerAt(t, addr, Config{Slots: 2, Observer: obs, Handler: pathHandler(),
		Logger: slog.New(slog.NewTextHandler(&out, nil))})
	eventually(t, "3 failed attempts", func() bool { return failed() >= 3 })

	relisten := func() *testHub {
		t.Helper()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on %s again: %v", addr, err)
		}
		return startTestHub(t, ln)
	}
	hub := relisten()
	s1, s2 := hub.next(t), hub.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })
	succeeded(2)
	n := failed()
	obs.mu.Lock()
	var ok []HubAttempt
	for _, a := range obs.attempts {
		if a.Err == nil {
			ok = append(ok, a)
		}
	}
	obs.mu.Unlock()
	if len(ok) == 2 && ok[1].First { // two slots: either may tell first
		ok[0], ok[1] = ok[1], ok[0]
	}
	if len(ok) != 2 || !ok[0].First || ok[0].Failures != n || ok[1].First || ok[1].Failures != 0 ||
		ok[0].Hub != addr || ok[0].Address != addr {
		t.Errorf("successful attempts %+v after %d failures", ok, n)
	}
	want := fmt.Sprintf(`level=INFO msg="connected to hub" hub=%s address=%s pool=test attempts=%d`, addr, addr, n+1)
	if got := out.String(); strings.Count(got, "connected to hub") != 1 || !strings.Contains(got, want) {
		t.Errorf("log lacks one %q:\n%s", want, got)
	}

	// A connection the hub closes after a job is redialled at once: no
	// line.
	s1.send(t, get("/a"))
	s1.c.Close()
	hub.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })
	succeeded(3)
	if got := out.String(); strings.Contains(got, "reconnected") {
		t.Errorf("a redial that succeeded at once was logged:\n%s", got)
	}

	// The hub goes away and comes back: one line, once it answers.
	hub.ln.Close()
	hub.mu.Lock()
	for _, c := range hub.all {
		c.Close()
	}
	hub.mu.Unlock()
	_ = s2
	before := failed()
	eventually(t, "failed attempts to the hub that went away", func() bool { return failed() >= before+2 })
	hub = relisten()
	hub.next(t)
	hub.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })
	succeeded(5)
	got := out.String()
	if strings.Count(got, `msg="reconnected to hub"`) != 1 || !strings.Contains(got, "down_for=") {
		t.Errorf("log lacks one reconnect line:\n%s", got)
	}
	if strings.Count(got, `msg="connected to hub"`) != 1 {
		t.Errorf("the first connection was logged again:\n%s", got)
	}
}

// BenchmarkObservedJob is what an Observer adds to a tiny job, against
// BenchmarkServeJob below: run both with -benchmem.
func BenchmarkObservedJob(b *testing.B) { benchJob(b, newRecorder()) }

func BenchmarkServeJob(b *testing.B) { benchJob(b, nil) }

func benchJob(b *testing.B, obs Observer) {
	w, err := New(Config{Hub: "127.0.0.1:1", Pool: "p", Observer: obs, Logger: slog.New(slog.DiscardHandler),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })})
	if err != nil {
		b.Fatal(err)
	}
	c := &hubConn{w: w, ep: &endpoint{name: "h"}}
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("GET", "/x", nil)
		r = r.WithContext(context.WithValue(r.Context(), hubConnKey{}, c))
		c.slot.Store(slotTaken)
		w.offers.running++
		w.serveJob(httptest.NewRecorder(), r)
		if rec, ok := obs.(*recorder); ok {
			rec.mu.Lock()
			rec.ended = rec.ended[:0]
			rec.mu.Unlock()
		}
	}
}
