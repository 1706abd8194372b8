// Command bench measures reverse_http against Caddy's reverse_proxy,
// HAProxy, a direct call and an ideal queue, side by side in one run, and
// writes the figures as Markdown (results/RESULTS.md), plots of the time in
// system (results/latency*.png) and Caddy's memory profiles at the peak of
// scenario 4 (results/scale-*.pprof). `make bench` in the repository root
// builds what it needs and runs it; see README.md, "Performance".
//
//	bin/bench -caddy bin/caddy -worker bin/reverse-http-worker -out bench/results
//
// It re-runs itself with the argument "serve" for the application, backend
// and worker processes (see serve.go).
//
//	bin/bench soak [-quick] -caddy bin/caddy -worker bin/reverse-http-worker
//
// runs the soak instead (`make soak`, see soak.go), with the role
// "soak-serve" for its application and worker processes (soakapp.go).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	quick   bool
	out     string
	profile bool // CPU profiles of Caddy during the reverse_http runs

	conc       int
	tinyWarm   time.Duration
	tinyRun    time.Duration
	tinyRounds int
	seqJobs    int // scenario 1's sequential 5 ms jobs per system

	schedJobs int
	seed      uint64

	largeBytes int64

	scaleIdle    int
	scaleWaiting int
	scaleSlots   int
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "serve":
			if err := serveMain(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "serve:", err)
				os.Exit(1)
			}
			return
		case "soak-serve":
			if err := soakServeMain(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "soak-serve:", err)
				os.Exit(1)
			}
			return
		case "soak":
			os.Exit(soakMain(os.Args[2:]))
		case "echo":
			if err := echoMain(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "echo:", err)
				os.Exit(1)
			}
			return
		}
	}
	// The defaults suit a run from the repository root, as make runs it.
	caddyBin := flag.String("caddy", "bin/caddy", "Caddy binary built with the plugin")
	workerBin := flag.String("worker", "bin/reverse-http-worker", "reverse-http-worker binary")
	out := flag.String("out", "bench/results", "`DIR` for RESULTS.md, the plots and the profiles")
	only := flag.String("only", "tiny,sched,large,scale,multihub,classes,retry,share", "comma-separated `SCENARIOS` to run")
	quick := flag.Bool("quick", false, "short runs, to check the harness (figures are not meaningful)")
	profile := flag.Bool("profile", false, "save Caddy's CPU profiles during scenario 1's first round, and the worker binary's over the scenario, in the -out directory")
	readme := flag.String("readme", "", "`FILE` (README.md) whose table between the bench markers is replaced with the results; not with -quick")
	flag.Parse()

	o := &options{
		conc: 64, tinyWarm: time.Second, tinyRun: 3 * time.Second, tinyRounds: 3, seqJobs: 400,
		schedJobs: 3000, seed: 20261122,
		largeBytes: 1 << 30,
		scaleIdle:  10000, scaleWaiting: 10000, scaleSlots: 1000,
	}
	if *quick {
		o.quick = true
		o.tinyWarm, o.tinyRun, o.tinyRounds = 200*time.Millisecond, 500*time.Millisecond, 1
		o.seqJobs = 50
		o.schedJobs = 400
		o.largeBytes = 64 << 20
		o.scaleIdle, o.scaleWaiting, o.scaleSlots = 500, 500, 100
	}
	o.out = *out
	o.profile = *profile
	if err := run(o, *caddyBin, *workerBin, *readme, strings.Split(*only, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o *options, caddyBin, workerBin, readme string, only []string) error {
	raiseFileLimit()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, p := range []*string{&caddyBin, &workerBin} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
		if _, err := os.Stat(*p); err != nil {
			return fmt.Errorf("%v (run 'make build' in the repository root first)", err)
		}
	}
	dir, err := os.MkdirTemp("", "reverse-http-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &env{caddy: caddyBin, worker: workerBin, self: self, dir: dir}

	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	started := time.Now()
	var report strings.Builder
	fmt.Fprintf(&report, "%s\n\n", machine(caddyBin))
	if o.quick {
		report.WriteString("**Quick run (-quick): runs too short for the figures to mean anything.**\n\n")
	}
	scenarios := []struct {
		name string
		run  func(*env, *options) ([]*table, error)
	}{
		{"tiny", tinyJobs},
		{"sched", scheduling},
		{"large", largeBodies},
		{"scale", scale},
		{"multihub", multiHub},
		{"classes", classes},
		{"retry", func(e *env, o *options) ([]*table, error) {
			t, err := retryAfterScenario(e, o)
			return []*table{t}, err
		}},
		{"share", sharing},
	}
	ran := 0
	for _, s := range scenarios {
		if !slices.Contains(only, s.name) {
			continue
		}
		ran++
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "bench: %s...\n", s.name)
		tables, err := s.run(e, o)
		if err != nil {
			return fmt.Errorf("%s: %v", s.name, err)
		}
		for _, t := range tables {
			md := t.markdown()
			fmt.Print(md)
			report.WriteString(md)
		}
		fmt.Fprintf(os.Stderr, "bench: %s took %v\n", s.name, time.Since(t0).Round(time.Second))
	}
	fmt.Fprintf(&report, "Whole run: %v.\n", time.Since(started).Round(time.Second))
	path := filepath.Join(o.out, "RESULTS.md")
	if err := os.WriteFile(path, []byte("# Benchmark results\n\n"+report.String()), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s in %v\n", path, time.Since(started).Round(time.Second))
	// Only a full run replaces the README's tables.
	if readme != "" && !o.quick && ran == len(scenarios) {
		if err := updateReadme(readme, report.String()); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bench: updated the results in %s\n", readme)
	}
	return nil
}

const (
	beginMarker = "<!-- bench results: begin (make bench writes this part) -->"
	endMarker   = "<!-- bench results: end -->"
)

// updateReadme replaces the part of path between the markers with results.
func updateReadme(path, results string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no bench result markers", path)
	}
	s = s[:i+len(beginMarker)] + "\n\n" + results + "\n" + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// machine describes what the figures were measured on.
func machine(caddyBin string) string {
	parts := []string{
		fmt.Sprintf("Measured %s on %s/%s, %d CPUs, %s",
			time.Now().UTC().Format("2006-01-02"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				parts = append(parts, strings.TrimSpace(strings.SplitN(line, ":", 2)[1]))
				break
			}
		}
	}
	if v, err := exec.Command(caddyBin, "version").Output(); err == nil {
		parts = append(parts, "Caddy "+strings.Fields(string(v))[0])
	}
	if v, err := exec.Command("haproxy", "-v").Output(); err == nil {
		f := strings.Fields(string(v))
		if len(f) > 2 {
			parts = append(parts, "HAProxy "+f[2])
		}
	}
	return strings.Join(parts, "; ") + "."
}

// raiseFileLimit lifts the soft limit on open files to the hard limit, for
// this process and the children it starts.
func raiseFileLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func fileLimit() uint64 {
	var l syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}
