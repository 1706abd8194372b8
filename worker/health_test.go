package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// closedPort returns a loopback address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// serveOn starts an HTTP server on addr, which must be free.
func serveOn(t *testing.T, addr string, h http.Handler) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s again: %v", addr, err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
}

// TestForwarderAccepts: the forwarder's 100 Continue comes once it holds
// an upstream connection, once, and the body then flows upstream.
func TestForwarderAccepts(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(echoBody))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	hub := newAcceptHub(t)
	startWorker(t, hub, Config{Handler: NewForwarder(u, testLogger(t))})
	s := hub.next(t)
	for i := range 2 {
		postExpect(s, "/up")
		if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
			t.Fatalf("round %d: got %d, want 100", i, resp.StatusCode)
		}
		io.WriteString(s.c, "hello")
		if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "got hello" {
			t.Fatalf("round %d: got %d %q, want one 100 and then 200", i, resp.StatusCode, body)
		}
	}
	// Without a body, only the acceptance sends the 100.
	fmt.Fprintf(s.c, "GET /x HTTP/1.1\r\nHost: job.example\r\nExpect: 100-continue\r\n\r\n")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("bodiless: got %d, want 100", resp.StatusCode)
	}
	if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "got " {
		t.Fatalf("bodiless: got %d %q", resp.StatusCode, body)
	}
}

// TestForwarderUpstreamDown: a worker whose upstream is down declines the
// job without a 100, closes its idle connections, does not redial while
// the upstream stays down, and is back (and logs both changes) once the
// upstream listens again.
func TestForwarderUpstreamDown(t *testing.T) {
	addr := closedPort(t)
	u, _ := url.Parse("http://" + addr)
	hub := newAcceptHub(t)
	fwd := NewForwarder(u, testLogger(t))
	rw := startWorker(t, hub, Config{Slots: 2, Handler: fwd})
	a, b := hub.next(t), hub.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })

	postExpect(a, "/x")
	resp, _ := a.read(t, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(DeclinedHeader) != "1" {
		t.Fatalf("got %d %v, want a decline before any 100", resp.StatusCode, resp.Header)
	}
	a.expectEOF(t, waitLimit)
	b.expectEOF(t, waitLimit) // the idle one too
	if fwd.Health().Err() == nil {
		t.Fatal("health still up")
	}
	eventually(t, "no connections", func() bool { return rw.Connected() == 0 })
	hub.expectNone(t, 3*probeBackoffMin) // a few failed probes, no redial

	changed := fwd.Health().Changed()
	began := time.Now()
	serveOn(t, addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up again") }))
	a, b = hub.next(t), hub.next(t)
	t.Logf("slots back %v after the upstream came up", time.Since(began).Round(time.Millisecond))
	select {
	case <-changed:
	default:
		t.Error("health did not change")
	}
	if err := fwd.Health().Err(); err != nil {
		t.Errorf("health still down: %v", err)
	}
	fmt.Fprintf(a.c, "GET /x HTTP/1.1\r\nHost: job.example\r\nExpect: 100-continue\r\n\r\n")
	if resp, _ := a.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	if resp, body := a.read(t, nil); resp.StatusCode != 200 || body != "up again" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestForwarderDeclinesWhileDown: a job that reaches a forwarder whose
// upstream is known to be down is declined without a dial.
func TestForwarderDeclinesWhileDown(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the upstream was asked")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	fwd := NewForwarder(u, testLogger(t))
	fwd.Health().Fail(errors.New("test"))
	rec := httptest.NewRecorder()
	fwd.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get(DeclinedHeader) != "1" {
		t.Errorf("got %d %v, want a decline", rec.Code, rec.Header())
	}
}

// TestHealthOfHandler: a Config.Health of one's own works the same way, and
// a probe that keeps failing keeps the slots away.
func TestHealthOfHandler(t *testing.T) {
	ok := make(chan struct{})
	probes := make(chan struct{}, 100)
	h := NewHealth(func(ctx context.Context) error {
		probes <- struct{}{}
		select {
		case <-ok:
			return nil
		default:
			return errors.New("not yet")
		}
	})
	hub := newTestHub(t)
	rw := startWorker(t, hub, Config{Health: h, Handler: pathHandler()})
	s := hub.next(t)
	h.Fail(errors.New("test"))
	s.expectEOF(t, waitLimit)
	for range 3 {
		select {
		case <-probes:
		case <-time.After(waitLimit):
			t.Fatal("no probe")
		}
	}
	if rw.Connected() != 0 {
		t.Fatalf("%d connections while down", rw.Connected())
	}
	hub.expectNone(t, 0)
	close(ok)
	s = hub.next(t)
	if _, body := s.send(t, get("/back")); body != "job /back" {
		t.Errorf("body %q", body)
	}
}

func TestProbeBackoff(t *testing.T) {
	for attempt := range 40 {
		ceiling := min(probeBackoffMin<<min(attempt, 20), probeBackoffMax)
		for range 20 {
			if d := probeBackoff(attempt); d < ceiling/2 || d > ceiling {
				t.Fatalf("probeBackoff(%d) = %v, want in [%v, %v]", attempt, d, ceiling/2, ceiling)
			}
		}
	}
}

// downHealth is a Health whose probe fails until the test ends, for a
// worker that is to go down and stay down.
func downHealth() *Health {
	return NewHealth(func(ctx context.Context) error { return errors.New("still down") })
}

// offeredWithHealth starts a one-connection worker with a Health that
// stays down once failed, and returns the hub's side of its connection,
// offered (its ready frame read), and the Health.
func offeredWithHealth(t *testing.T) (*hubSide, *Health) {
	t.Helper()
	hub := readyHub(t)
	h := downHealth()
	startWorker(t, hub, Config{Health: h, Handler: pathHandler()})
	s := hub.next(t)
	s.expectFrame(t, FrameReady)
	return s, h
}

// TestRetireServesCrossingJob: a worker whose Health goes down closes its
// idle connections, but the hub may be writing a job on one it was offered
// at that moment. The worker withdraws the offer with a not-ready frame
// and reads on for a grace period, so that the job which crossed the frame
// gets its response rather than a reset (a job the hub has written may
// have started, so it cannot send it elsewhere); then the connection
// closes.
func TestRetireServesCrossingJob(t *testing.T) {
	s, h := offeredWithHealth(t)
	h.Fail(errors.New("test"))
	// The withdrawal is on its way; the job, written as the hub read it,
	// crosses it (the worker cannot tell the two apart).
	s.expectFrame(t, FrameNotReady)
	resp, body := s.send(t, get("/crossed"))
	if resp.StatusCode != 200 || body != "job /crossed" {
		t.Fatalf("the job that crossed the withdrawal: %d %q", resp.StatusCode, body)
	}
	s.expectEOF(t, waitLimit)
}

// TestRetireClosesAfterGrace: with no job coming, the retiring connection
// sends its not-ready frame at once and closes when its grace ends, not
// before.
func TestRetireClosesAfterGrace(t *testing.T) {
	s, h := offeredWithHealth(t)
	began := time.Now()
	h.Fail(errors.New("test"))
	s.expectFrame(t, FrameNotReady)
	s.expectEOF(t, retireGraceMax+waitLimit)
	if d := time.Since(began); d < retireGraceMin {
		t.Fatalf("closed %v after the withdrawal, before the grace of %v", d, retireGraceMin)
	}
}

// TestDrainServesCrossingJob: the same on a drain. The job that crossed
// the withdrawal runs, and its response closes the connection.
func TestDrainServesCrossingJob(t *testing.T) {
	hub := readyHub(t)
	rw := startWorker(t, hub, Config{Handler: pathHandler()})
	s := hub.next(t)
	s.expectFrame(t, FrameReady)
	rw.cancel()
	s.expectFrame(t, FrameNotReady)
	resp, body := s.send(t, get("/crossed"))
	if resp.StatusCode != 200 || body != "job /crossed" {
		t.Fatalf("the job that crossed the withdrawal: %d %q", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("the last job's response lacks Connection: close")
	}
	s.expectEOF(t, waitLimit)
	if err := rw.wait(t); err != nil {
		t.Errorf("Run returned %v, want nil", err)
	}
}

// TestRetireGraceBounds: the grace is 16 round trips to the hub, but never
// below retireGraceMin (a hub on loopback) nor above retireGraceMax (a hub
// far away must not hold a drain for long).
func TestRetireGraceBounds(t *testing.T) {
	for _, tc := range []struct{ rtt, want time.Duration }{
		{0, retireGraceMin},
		{time.Millisecond, retireGraceMin},
		{20 * time.Millisecond, 320 * time.Millisecond},
		{time.Second, retireGraceMax},
	} {
		ep := &endpoint{}
		ep.rtt.Store(int64(tc.rtt))
		if got := (&hubConn{ep: ep}).retireGrace(); got != tc.want {
			t.Errorf("hub round trip %v: grace %v, want %v", tc.rtt, got, tc.want)
		}
	}
}
