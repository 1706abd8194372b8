package reversehttp

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// Defaults of a listener's logSampler: a flood of bad connections logs
// this many lines per interval, then one line that counts the rest.
const (
	sampleBurst    = 10
	sampleInterval = 10 * time.Second
)

// logSampler passes the first burst lines of each interval to its logger
// and counts the others; when an interval that dropped lines ends, one
// line says how many of each kind it dropped. A listener logs through it
// what any peer can make it log, so that a flood of bad handshakes cannot
// flood the log.
type logSampler struct {
	logger   *zap.Logger
	burst    int
	interval time.Duration

	mu      sync.Mutex
	start   time.Time      // of the current interval
	logged  int            // lines passed in the current interval
	dropped map[string]int // by kind, since the last summary
	timer   *time.Timer    // fires the summary; nil when none is due
}

func newLogSampler(logger *zap.Logger, burst int, interval time.Duration) *logSampler {
	return &logSampler{logger: logger, burst: burst, interval: interval}
}

// Warn logs msg at Warn level unless this interval's lines are used up;
// the summary counts a dropped line under kind.
func (s *logSampler) Warn(kind, msg string, fields ...zap.Field) {
	if s.allow(kind) {
		s.logger.Warn(msg, fields...)
	}
}

func (s *logSampler) allow(kind string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Sub(s.start) >= s.interval {
		s.start, s.logged = now, 0
	}
	if s.logged < s.burst {
		s.logged++
		return true
	}
	if s.dropped == nil {
		s.dropped = make(map[string]int)
	}
	s.dropped[kind]++
	if s.timer == nil {
		s.timer = time.AfterFunc(s.start.Add(s.interval).Sub(now), s.summarize)
	}
	return false
}

// summarize logs how many lines were dropped since the last summary.
func (s *logSampler) summarize() {
	s.mu.Lock()
	dropped := s.dropped
	s.dropped, s.timer = nil, nil
	s.mu.Unlock()
	if len(dropped) == 0 {
		return
	}
	total := 0
	fields := make([]zap.Field, 0, len(dropped)+2)
	for _, kind := range sortedKeys(dropped) {
		total += dropped[kind]
		fields = append(fields, zap.Int(kind, dropped[kind]))
	}
	fields = append(fields, zap.Int("suppressed", total), zap.Duration("interval", s.interval))
	s.logger.Warn("worker connection log lines suppressed", fields...)
}

// stop logs a summary now if one is due.
func (s *logSampler) stop() {
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.summarize()
}
