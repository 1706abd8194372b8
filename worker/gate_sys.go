package worker

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// Tunables of the CPU gate; variables so that tests may shorten them.
var (
	// cpuWindow is the shortest stretch a CPU reading covers: the gate
	// waits this long when its last reading is too old to compare with.
	cpuWindow = 100 * time.Millisecond
	// cpuStale is the age beyond which a reading is not compared with.
	cpuStale = 2 * time.Second
)

// NewCPUGate returns a gate that is closed while the CPUs this process may
// use are busy for maxPercent or more of the time since the gate was last
// asked: with a cgroup CPU quota (v2, or v1 with cpu and cpuacct mounted
// together or apart), the cgroup's use of its quota; without one, the
// whole host's use of its CPUs (/proc/stat), which the process shares. It
// fails where none of these files can be read (only Linux has them).
func NewCPUGate(maxPercent float64) (func(ctx context.Context) error, error) {
	return newCPUGate(sysfs{root: "/", ncpu: runtime.NumCPU()}, maxPercent)
}

func newCPUGate(s sysfs, maxPercent float64) (func(ctx context.Context) error, error) {
	if maxPercent <= 0 || maxPercent > 100 {
		return nil, fmt.Errorf("worker: CPU gate: %g%% is not a percentage in (0, 100]", maxPercent)
	}
	src, err := s.cpuSource()
	if err != nil {
		return nil, fmt.Errorf("worker: CPU gate: %w", err)
	}
	if _, err := src.usage(); err != nil {
		return nil, fmt.Errorf("worker: CPU gate: %s: %w", src.name, err)
	}
	g := &cpuGate{src: src, max: maxPercent}
	return g.check, nil
}

// cpuGate compares each reading of the CPU time used with the previous.
type cpuGate struct {
	src cpuSource
	max float64

	mu    sync.Mutex
	used  time.Duration
	taken time.Time
}

func (g *cpuGate) check(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if g.taken.IsZero() || now.Sub(g.taken) > cpuStale {
		if err := g.sample(now); err != nil {
			return err
		}
		if !sleepCtx(ctx, cpuWindow) {
			return ctx.Err()
		}
		now = time.Now()
	}
	used0, taken0 := g.used, g.taken
	if err := g.sample(now); err != nil {
		return err
	}
	pct := percent(g.used-used0, now.Sub(taken0), g.src.cpus)
	if pct >= g.max {
		return fmt.Errorf("CPU at %.0f%% of %.1f CPUs (%s), not below %g%%", pct, g.src.cpus, g.src.name, g.max)
	}
	return nil
}

func (g *cpuGate) sample(now time.Time) error {
	used, err := g.src.usage()
	if err != nil {
		return fmt.Errorf("reading CPU use (%s): %w", g.src.name, err)
	}
	g.used, g.taken = used, now
	return nil
}

// percent is CPU time used over elapsed wall time on cpus CPUs.
func percent(used, elapsed time.Duration, cpus float64) float64 {
	if elapsed <= 0 || cpus <= 0 {
		return 0
	}
	return 100 * used.Seconds() / (elapsed.Seconds() * cpus)
}

// NewMemoryGate returns a gate that is closed while less than minFree
// bytes of memory are free for more jobs: the least of what the process's
// cgroup and its parents leave below their limits (v2 memory.max, v1
// memory.limit_in_bytes; the inactive file cache counts as free) and the
// host's MemAvailable. It fails where none of these files can be read.
func NewMemoryGate(minFree int64) (func(ctx context.Context) error, error) {
	return newMemoryGate(sysfs{root: "/", ncpu: runtime.NumCPU()}, minFree)
}

func newMemoryGate(s sysfs, minFree int64) (func(ctx context.Context) error, error) {
	if minFree <= 0 {
		return nil, fmt.Errorf("worker: memory gate: %d bytes is not a positive size", minFree)
	}
	if _, err := s.memFree(); err != nil {
		return nil, fmt.Errorf("worker: memory gate: %w", err)
	}
	return func(context.Context) error {
		free, err := s.memFree()
		if err != nil {
			return fmt.Errorf("reading free memory: %w", err)
		}
		if free < minFree {
			return fmt.Errorf("%d bytes of memory free, fewer than %d", free, minFree)
		}
		return nil
	}, nil
}
