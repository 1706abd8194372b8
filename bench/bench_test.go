package main

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"
)

func TestIdealFCFS(t *testing.T) {
	msd := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	jobs := []traceJob{
		{at: 0, ms: 10},
		{at: msd(1), ms: 10},
		{at: msd(2), ms: 5},  // both servers busy: waits for the first (free at 10)
		{at: msd(30), ms: 4}, // all idle again
	}
	got := idealFCFS(jobs, []server{{speed: 1}, {speed: 1}})
	want := []time.Duration{msd(10), msd(10), msd(13), msd(4)}
	if !slices.Equal(got, want) {
		t.Errorf("two equal servers: got %v, want %v", got, want)
	}

	// A tie between a slow and a fast idle server goes to the fast one.
	got = idealFCFS([]traceJob{{at: 0, ms: 10}}, []server{{speed: 2}, {speed: 1}})
	if got[0] != msd(10) {
		t.Errorf("tie: got %v, want 10ms on the fast server", got[0])
	}

	// A server that left takes nothing more; one that joins takes work
	// from when it joins.
	servers := []server{{speed: 1, till: msd(5)}, {speed: 1, from: msd(20)}}
	got = idealFCFS([]traceJob{{at: 0, ms: 10}, {at: msd(6), ms: 1}}, servers)
	want = []time.Duration{msd(10), msd(15)} // second: server 0 gone, server 1 from 20
	if !slices.Equal(got, want) {
		t.Errorf("join and leave: got %v, want %v", got, want)
	}
}

func TestMakeTrace(t *testing.T) {
	a := makeTrace(7, 20000, 500, 5, 100)
	b := makeTrace(7, 20000, 500, 5, 100)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave two traces")
	}
	if c := makeTrace(8, 20000, 500, 5, 100); slices.Equal(a, c) {
		t.Fatal("two seeds gave the same trace")
	}
	rate := float64(len(a)) / a[len(a)-1].at.Seconds()
	if math.Abs(rate-500)/500 > 0.05 {
		t.Errorf("arrival rate %.1f/s, want about 500", rate)
	}
	long := 0
	for i, j := range a {
		if i > 0 && j.at < a[i-1].at {
			t.Fatalf("arrivals out of order at %d", i)
		}
		if j.ms == 100 {
			long++
		} else if j.ms != 5 {
			t.Fatalf("job %d takes %g ms", i, j.ms)
		}
	}
	if share := float64(long) / float64(len(a)); math.Abs(share-0.1) > 0.01 {
		t.Errorf("%.3f of jobs are long, want about 0.1", share)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	s := sorted(d)
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {0, 1}, {99.9, 100}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("p%g = %d, want %d", c.p, got, c.want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestFIFOLockOrder(t *testing.T) {
	var l fifoLock
	ctx := context.Background()
	if !l.lock(ctx) {
		t.Fatal("free lock not taken")
	}
	order := make(chan int, 5)
	for i := range 5 {
		queued := make(chan struct{})
		go func() {
			close(queued)
			if l.lock(ctx) {
				order <- i
				l.unlock()
			}
		}()
		<-queued
		// Wait until goroutine i waits, so the arrival order is known.
		for {
			l.mu.Lock()
			n := len(l.waiting)
			l.mu.Unlock()
			if n == i+1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	// One gives up while waiting: the lock skips it.
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan bool)
	go func() { gaveUp <- l.lock(cctx) }()
	for {
		l.mu.Lock()
		n := len(l.waiting)
		l.mu.Unlock()
		if n == 6 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if <-gaveUp {
		t.Fatal("cancelled lock reported taken")
	}
	l.unlock()
	for want := range 5 {
		if got := <-order; got != want {
			t.Fatalf("waiter %d got the lock in turn %d", got, want)
		}
	}
}

func TestPattern(t *testing.T) {
	p := newPattern(200000)
	buf := make([]byte, 70000)
	var total int
	for {
		n, err := p.Read(buf)
		total += n
		if err != nil {
			break
		}
	}
	if total != 200000 {
		t.Fatalf("read %d bytes, want 200000", total)
	}
}

func TestGoalRatio(t *testing.T) {
	for _, tc := range []struct {
		v, line float64
		want    string
	}{
		{0.7974, 0.8, "0.797×"},
		{0.8, 0.8, "0.80×"},
		{0.47, 0.5, "0.47×"},
		{0.79996, 0.8, "0.79996×"},
		{1.5004, 1.5, "1.5004×"},
	} {
		if got := goalRatio(tc.v, tc.line); got != tc.want {
			t.Errorf("goalRatio(%v, %v) = %q, want %q", tc.v, tc.line, got, tc.want)
		}
	}
}
