package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// caddyFigures are Caddy's RSS (from /proc), goroutines (from its pprof
// endpoint) and Go heap in use (from expvar) at one moment.
type caddyFigures struct {
	rss        int64
	goroutines int
	heap       uint64
}

func (e *env) caddyFigures(pid int) (caddyFigures, error) {
	var f caddyFigures
	var err error
	if f.rss, _, err = memory(pid); err != nil {
		return f, err
	}
	if f.goroutines, err = e.goroutines(); err != nil {
		return f, err
	}
	m, err := e.caddyMemory()
	f.heap = m.HeapInuse
	return f, err
}

// goroutines reads the count in the first line of Caddy's goroutine
// profile, "goroutine profile: total N".
func (e *env) goroutines() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+e.admin+"/debug/pprof/goroutine?debug=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, err
	}
	return parseGoroutineTotal(line)
}

func parseGoroutineTotal(line string) (int, error) {
	s, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("goroutine profile begins %q", line)
	}
	return strconv.Atoi(s)
}

// collectGarbage has Caddy run a GC (through its heap profile), so that the
// heap in use counts only what is still referenced.
func (e *env) collectGarbage() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+e.admin+"/debug/pprof/heap?gc=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// peakSampler samples Caddy's figures every interval until stopped and
// keeps the highest of each.
type peakSampler struct {
	mu   sync.Mutex
	peak caddyFigures
	stop chan struct{}
	done chan struct{}
}

func (e *env) samplePeaks(pid int, interval time.Duration) *peakSampler {
	s := &peakSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			f, err := e.caddyFigures(pid)
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.peak.rss = max(s.peak.rss, f.rss)
			s.peak.goroutines = max(s.peak.goroutines, f.goroutines)
			s.peak.heap = max(s.peak.heap, f.heap)
			s.mu.Unlock()
		}
	}()
	return s
}

// end stops the sampler and returns the peaks; the RSS peak is the
// kernel's (VmHWM), which no sampling can miss.
func (s *peakSampler) end(pid int) caddyFigures {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, hwm, err := memory(pid); err == nil {
		s.peak.rss = max(s.peak.rss, hwm)
	}
	return s.peak
}
