package worker

import "sync"

// stderrTail is how much of a command's stderr the worker keeps for its
// log: the last 4 KiB, where the reason for a failure usually is.
const stderrTail = 4 << 10

// tailBuffer is an io.Writer that keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte // at most 2*max bytes; the tail is its last max
	dropped bool   // something was written before the tail
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > t.max {
		p = p[len(p)-t.max:]
		t.dropped = true
	}
	if len(t.buf)+len(p) > 2*t.max {
		keep := t.max - len(p)
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-keep:]...)
		t.dropped = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// String returns the tail, marked with a leading "…" when bytes before it
// were dropped.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	dropped := t.dropped
	if len(b) > t.max {
		b = b[len(b)-t.max:]
		dropped = true
	}
	if dropped {
		return "…" + string(b)
	}
	return string(b)
}
