package reversehttp

import (
	"sort"
	"sync/atomic"
	"time"
)

// queueState is a pool's queue and connections at one moment.
type queueState struct {
	waiting, idle, busy int
	oldest              time.Duration // how long the head of the queue has waited
}

func (p *Pool) queueState(now time.Time) queueState {
	s := p.Stats()
	q := queueState{waiting: s.Waiting, idle: s.Idle, busy: s.Busy}
	p.mu.Lock()
	if w, ok := p.waiting.front(); ok {
		q.oldest = now.Sub(w.since)
	}
	p.mu.Unlock()
	return q
}

// poolStatus is what the admin API and the status page say about a pool.
type poolStatus struct {
	Name     string      `json:"name"`
	Protocol string      `json:"protocol,omitempty"`
	Listen   []string    `json:"listen"`
	Limits   limitStatus `json:"limits"`

	QueueDepth int `json:"queue_depth"`
	// How long the request at the head of the queue has waited (since it
	// last joined the queue).
	OldestWait float64 `json:"oldest_wait_seconds"`
	// Worker connections.
	Idle int `json:"idle"`
	Busy int `json:"busy"`

	Workers []workerStatus `json:"workers"`
	// Workers drained by the operator, as the drain named them.
	Drained []string `json:"drained"`

	// Counters since the pool was created.
	Requests    map[string]uint64 `json:"requests"`
	Requeues    map[string]uint64 `json:"requeues"`
	Handshakes  map[string]uint64 `json:"handshakes"`
	Disconnects map[string]uint64 `json:"disconnects"`

	History []sample `json:"history,omitempty"`
}

type limitStatus struct {
	MaxQueue        int    `json:"max_queue"`
	QueueTimeout    string `json:"queue_timeout"`
	ResponseTimeout string `json:"response_timeout,omitempty"`
	MaxAttempts     int    `json:"max_attempts"`
	MaxHandshakes   int    `json:"max_handshakes"`
}

// workerStatus is one worker (a name on a host) in a poolStatus.
type workerStatus struct {
	// The worker's name and host: what a drain may name to drain this
	// host's connections only (its name drains them on every host).
	ID          string `json:"id"`
	Name        string `json:"name"`
	Remote      string `json:"remote"`
	Connections int    `json:"connections"`
	Busy        int    `json:"busy"`
	Idle        int    `json:"idle"`
	Jobs        uint64 `json:"jobs"`
	Failures    uint64 `json:"failures"`
	// Since it last went from no connection to one; absent while it holds
	// none.
	ConnectedSince *time.Time `json:"connected_since,omitempty"`
	// When it last went to no connection; absent while it holds one.
	DisconnectedAt *time.Time `json:"disconnected_at,omitempty"`
	Drained        bool       `json:"drained"`
}

// status returns the pool's status now.
func (p *Pool) status(now time.Time) poolStatus {
	q := p.queueState(now)
	o := p.obs
	st := poolStatus{
		Name: p.name, QueueDepth: q.waiting, OldestWait: q.oldest.Seconds(), Idle: q.idle, Busy: q.busy,
		Listen:      []string{},
		Drained:     []string{},
		Requests:    counterMap(o.requests[:], outcomeNames[:]),
		Requeues:    counterMap(o.requeues[:], requeueNames[:]),
		Handshakes:  counterMap(o.handshakes[resultOK:], handshakeNames[resultOK:]),
		Disconnects: counterMap(o.leaves[:], leaveNames[:]),
	}
	if pc := o.getView().config; pc != nil {
		st.Protocol, st.Listen = pc.Protocol, pc.Listen
		st.Limits = limitStatus{
			MaxQueue: pc.MaxQueue, QueueTimeout: time.Duration(pc.QueueTimeout).String(),
			MaxAttempts: pc.MaxAttempts, MaxHandshakes: pc.MaxHandshakes,
		}
		if pc.ResponseTimeout > 0 {
			st.Limits.ResponseTimeout = time.Duration(pc.ResponseTimeout).String()
		}
	}
	st.Workers = p.workerStatuses()
	o.mu.Lock()
	for target := range o.drained {
		st.Drained = append(st.Drained, target)
	}
	o.mu.Unlock()
	sort.Strings(st.Drained)
	return st
}

// workerStatuses returns the pool's workers, those holding connections
// first, each group by name and host.
func (p *Pool) workerStatuses() []workerStatus {
	type slots struct{ busy, idle int }
	held := make(map[*workerRecord]slots)
	o := p.obs
	p.mu.Lock()
	for c := range p.conns {
		if c.obs.w == nil {
			continue
		}
		s := held[c.obs.w]
		switch c.getState() {
		case stateClosed:
			continue
		case stateIdle:
			s.idle++
		default:
			s.busy++
		}
		held[c.obs.w] = s
	}
	p.mu.Unlock()

	o.mu.Lock()
	out := make([]workerStatus, 0, len(o.workers))
	for _, w := range o.workers {
		s := held[w]
		ws := workerStatus{
			ID: w.key, Name: w.name, Remote: w.host, Connections: w.conns, Busy: s.busy, Idle: s.idle,
			Jobs: w.jobs.Load(), Failures: w.failures.Load(), Drained: o.drainedLocked(w.name, w.key),
		}
		if w.conns > 0 {
			since := w.since
			ws.ConnectedSince = &since
		} else {
			gone := w.lastSeen
			ws.DisconnectedAt = &gone
		}
		out = append(out, ws)
	}
	o.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if (out[i].Connections > 0) != (out[j].Connections > 0) {
			return out[i].Connections > 0
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func counterMap(counters []atomic.Uint64, names []string) map[string]uint64 {
	m := make(map[string]uint64, len(counters))
	for i := range counters {
		m[names[i]] = counters[i].Load()
	}
	return m
}
