package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// gateOptions are the flags that gate jobs on the machine's state.
type gateOptions struct {
	maxCPU   float64
	minFree  int64
	url      string
	timeout  time.Duration
	interval time.Duration
}

func (g *gateOptions) addFlags(fs *flag.FlagSet) {
	fs.Float64Var(&g.maxCPU, "max-cpu", 0, "take a job only while the CPUs this worker may use (its cgroup's quota, or the host's) are busy less than `PERCENT`")
	fs.Func("min-free-memory", "take a job only while at least `SIZE` of memory is free (cgroup-aware; e.g. 512M, 2G: binary multiples)", func(s string) error {
		n, err := parseSize(s)
		g.minFree = n
		return err
	})
	fs.StringVar(&g.url, "gate-url", "", "take a job only while a GET of `URL` answers 200 (the app can take one more)")
	fs.DurationVar(&g.timeout, "gate-timeout", time.Second, "how long --gate-url may take to answer before it counts as no")
	fs.DurationVar(&g.interval, "gate-interval", worker.DefaultGateInterval, "how often the gates are asked while a slot is free")
}

// check returns what is wrong with the gate flags; "" if nothing.
func (g *gateOptions) check() string {
	switch {
	case g.maxCPU < 0 || g.maxCPU > 100:
		return "--max-cpu must be a percentage between 0 and 100"
	case g.minFree < 0:
		return "--min-free-memory must not be negative"
	case g.timeout <= 0 || g.interval <= 0:
		return "--gate-timeout and --gate-interval must be positive"
	}
	return ""
}

// gate builds the gate the flags ask for; nil for none.
func (g *gateOptions) gate() (func(context.Context) error, error) {
	var gates []func(context.Context) error
	if g.maxCPU > 0 {
		cpu, err := worker.NewCPUGate(g.maxCPU)
		if err != nil {
			return nil, fmt.Errorf("--max-cpu: %v", err)
		}
		gates = append(gates, cpu)
	}
	if g.minFree > 0 {
		mem, err := worker.NewMemoryGate(g.minFree)
		if err != nil {
			return nil, fmt.Errorf("--min-free-memory: %v", err)
		}
		gates = append(gates, mem)
	}
	if g.url != "" {
		u, err := worker.NewURLGate(g.url, nil)
		if err != nil {
			return nil, fmt.Errorf("--gate-url: %v", err)
		}
		timeout := g.timeout
		gates = append(gates, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return u(ctx)
		})
	}
	if len(gates) == 0 {
		return nil, nil
	}
	return worker.AllGates(gates...), nil
}

func (g *gateOptions) String() string {
	var parts []string
	if g.maxCPU > 0 {
		parts = append(parts, fmt.Sprintf("cpu<%g%%", g.maxCPU))
	}
	if g.minFree > 0 {
		parts = append(parts, fmt.Sprintf("free>=%d", g.minFree))
	}
	if g.url != "" {
		parts = append(parts, "url="+g.url)
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// parseSize reads a size in bytes, with an optional binary multiple: K, M,
// G or T, alone or followed by "i", "B" or "iB" (512M, 2GiB, 64KB).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "B")
	u = strings.TrimSuffix(u, "I")
	if n := len(u); n > 0 {
		if i := strings.IndexByte("KMGT", u[n-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			u = u[:n-1]
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(u), 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, errors.New("want a size such as 512M or 2G")
	}
	return int64(f * float64(mult)), nil
}
