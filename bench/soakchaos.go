package main

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// soakWorker is one worker of the soak, restarted under a new tag each
// time the chaos kills it.
type soakWorker struct {
	group  string // its tag without the generation, e.g. "chaos-bin"
	binary bool   // the reverse-http-worker binary forwarding to the app; else the worker package
	slots  int
	gen    int
	tag    string
	p      *proc
}

// soakWorkers starts the processes.
type soakWorkers struct {
	e       *env
	addrs   soakAddrs
	execLog string
}

// start runs w's next generation. A worker package process is waited for
// until all its slots are connected; a binary is not (it has no way to
// say), its first connections follow within milliseconds.
func (s *soakWorkers) start(w *soakWorker) error {
	w.gen++
	w.tag = w.group + "." + strconv.Itoa(w.gen)
	var err error
	if w.binary {
		w.p, err = s.e.start(w.tag, false, s.e.worker, "--hub", s.addrs.workers, "--pool", "soak", "--token", soakToken,
			"--slots", strconv.Itoa(w.slots), "--upstream", "http://"+s.addrs.app+"/w/"+w.tag, "--name", w.tag,
			"--log-level", "error")
	} else {
		w.p, err = s.e.start(w.tag, true, s.e.self, "soak-serve", "--hub", s.addrs.workers, "--pool", "soak",
			"--token", soakToken, "--slots", strconv.Itoa(w.slots), "--tag", w.tag, "--log", s.execLog)
	}
	if err != nil {
		return fmt.Errorf("starting worker %s: %v", w.tag, err)
	}
	return nil
}

// chaos SIGKILLs one of the victims every interval, in turn, and restarts
// it at once, until stop is closed. It returns the kills; every victim is
// running when it returns.
func (s *soakWorkers) chaos(ctx context.Context, stop <-chan struct{}, victims []*soakWorker, interval time.Duration) ([]kill, error) {
	var kills []kill
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return kills, nil
		case <-ctx.Done():
			return kills, ctx.Err()
		case <-t.C:
		}
		w := victims[i%len(victims)]
		if w.p.exited() {
			return kills, fmt.Errorf("worker %s exited by itself: %s", w.tag, w.p.tail())
		}
		at := time.Now()
		w.p.kill()
		kills = append(kills, kill{tag: w.tag, slots: w.slots, at: at, died: time.Now()})
		if err := s.start(w); err != nil {
			return kills, err
		}
	}
}
