package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The cgroup layouts in testdata/cgroup are small file trees as a process
// sees them: /proc/self/cgroup, /proc/self/mountinfo, the controller
// files, and the host's /proc/stat and /proc/meminfo.
func layout(name string) sysfs {
	return sysfs{root: filepath.Join("testdata", "cgroup", name), ncpu: 4}
}

func TestCgroupReaders(t *testing.T) {
	const MiB = 1 << 20
	cases := []struct {
		layout string
		source string // what the CPU gate measures
		cpus   float64
		used   time.Duration
		free   int64
	}{
		// v2: quota 1.5 CPUs; 1 GiB limit, 512 MiB used of which 100 MiB
		// inactive file cache.
		{"v2", "cgroup v2 /sys/fs/cgroup/system.slice/worker.service", 1.5, 5 * time.Second, 612 * MiB},
		// v2 without limits: the host's four CPUs, and its MemAvailable.
		{"v2-unlimited", "host", 4, 4 * time.Second, 2048 * MiB},
		// v1 with cpu,cpuacct in one hierarchy: quota 2 CPUs in the
		// container's cgroup (its parents have none); 2 GiB limit.
		{"v1-together", "cgroup v1 /sys/fs/cgroup/cpu,cpuacct/docker/abc", 2, 12345678900, 1024 * MiB},
		// v1 with cpu and cpuacct mounted apart, each hierarchy's root at
		// the container's cgroup: quota 0.5 CPUs; no memory limit.
		{"v1-apart", "cgroup v1 /sys/fs/cgroup/cpuacct", 0.5, 987654321, 1024 * MiB},
		// No cgroup files: the host's.
		{"host", "host", 2, 11 * time.Second, 512 * MiB},
	}
	for _, c := range cases {
		t.Run(c.layout, func(t *testing.T) {
			s := layout(c.layout)
			src, err := s.cpuSource()
			if err != nil {
				t.Fatal(err)
			}
			used, err := src.usage()
			if err != nil {
				t.Fatal(err)
			}
			if src.name != c.source || src.cpus != c.cpus || used != c.used {
				t.Errorf("CPU: %s, %g CPUs, %v used; want %s, %g, %v", src.name, src.cpus, used, c.source, c.cpus, c.used)
			}
			free, err := s.memFree()
			if err != nil {
				t.Fatal(err)
			}
			if free != c.free {
				t.Errorf("free memory %d MiB, want %d MiB", free/MiB, c.free/MiB)
			}
		})
	}
}

// TestCgroupQuotaBelowCPUs: a quota larger than the CPUs the process may
// run on counts those CPUs.
func TestCgroupQuotaBelowCPUs(t *testing.T) {
	s := layout("v1-together")
	s.ncpu = 1
	src, err := s.cpuSource()
	if err != nil || src.cpus != 1 {
		t.Fatalf("%+v %v, want 1 CPU", src, err)
	}
}

func TestMountinfoEscapes(t *testing.T) {
	ms := parseMountinfo([]byte(`40 25 0:40 / /sys/fs/cgroup/my\040cpu rw,relatime - cgroup cgroup rw,cpu` + "\n" +
		`41 25 0:41 / /mnt/x rw - ext4 /dev/sdb rw` + "\nnot a line\n"))
	if len(ms) != 1 || ms[0].point != "/sys/fs/cgroup/my cpu" || len(ms[0].controllers) != 2 {
		t.Fatalf("%+v", ms)
	}
}

func TestNoSource(t *testing.T) {
	s := sysfs{root: t.TempDir(), ncpu: 1}
	if _, err := newCPUGate(s, 50); !errors.Is(err, errNoSource) {
		t.Errorf("CPU gate without files: %v", err)
	}
	if _, err := newMemoryGate(s, 1); !errors.Is(err, errNoSource) {
		t.Errorf("memory gate without files: %v", err)
	}
	if _, err := newCPUGate(layout("v2"), 0); err == nil {
		t.Error("a CPU gate at 0% was accepted")
	}
	if _, err := newMemoryGate(layout("v2"), 0); err == nil {
		t.Error("a memory gate of 0 bytes was accepted")
	}
}

// copyLayout copies a layout to a temporary directory, where a test may
// change its files.
func copyLayout(t *testing.T, name string) sysfs {
	t.Helper()
	src := filepath.Join("testdata", "cgroup", name)
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return sysfs{root: dst, ncpu: 4}
}

// TestCPUGate measures the CPU use between two readings of each layout's
// counter: closed after a burst far above the limit, open again when the
// counter stands still.
func TestCPUGate(t *testing.T) {
	counters := map[string]struct {
		file   string
		format func(d time.Duration) string
	}{
		"v2": {"sys/fs/cgroup/system.slice/worker.service/cpu.stat",
			func(d time.Duration) string { return fmt.Sprintf("usage_usec %d\n", d.Microseconds()) }},
		"v1-together": {"sys/fs/cgroup/cpu,cpuacct/docker/abc/cpuacct.usage",
			func(d time.Duration) string { return fmt.Sprintf("%d\n", d.Nanoseconds()) }},
		"v1-apart": {"sys/fs/cgroup/cpuacct/cpuacct.usage",
			func(d time.Duration) string { return fmt.Sprintf("%d\n", d.Nanoseconds()) }},
		"host": {"proc/stat",
			func(d time.Duration) string {
				return fmt.Sprintf("cpu  %d 0 0 0 0 0 0 0 0 0\ncpu0 0\ncpu1 0\n", d/(time.Second/userHZ))
			}},
	}
	for name, ctr := range counters {
		t.Run(name, func(t *testing.T) {
			s := copyLayout(t, name)
			set := func(d time.Duration) {
				if err := os.WriteFile(filepath.Join(s.root, ctr.file), []byte(ctr.format(d)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			set(time.Second)
			gate, err := newCPUGate(s, 80)
			if err != nil {
				t.Fatal(err)
			}
			// The first call waits for a reading to compare with.
			if err := gate(t.Context()); err != nil {
				t.Fatalf("idle: %v", err)
			}
			set(time.Hour) // far more than any CPUs can use meanwhile
			err = gate(t.Context())
			if err == nil || !strings.Contains(err.Error(), "not below 80%") {
				t.Fatalf("after a burst: %v, want closed", err)
			}
			if err := gate(t.Context()); err != nil {
				t.Fatalf("idle again: %v", err)
			}
		})
	}
}

func TestMemoryGate(t *testing.T) {
	s := layout("v2")
	const free = 612 << 20
	for _, c := range []struct {
		min  int64
		open bool
	}{{free, true}, {free + 1, false}} {
		gate, err := newMemoryGate(s, c.min)
		if err != nil {
			t.Fatal(err)
		}
		if err := gate(t.Context()); (err == nil) != c.open {
			t.Errorf("min %d: %v, want open %v", c.min, err, c.open)
		}
	}
}

// TestURLGate asks a real application: 200 opens, any other status, a
// refused connection and a slow answer close.
func TestURLGate(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	slow := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-slow:
			case <-r.Context().Done():
			}
		}
		w.WriteHeader(int(status.Load()))
		fmt.Fprintln(w, "slot?")
	}))
	defer app.Close()
	defer close(slow)

	gate, err := NewURLGate(app.URL+"/slot", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gate(t.Context()); err != nil {
		t.Errorf("200: %v", err)
	}
	status.Store(http.StatusTooManyRequests)
	if err := gate(t.Context()); err == nil || !strings.Contains(err.Error(), "429") {
		t.Errorf("429: %v, want closed", err)
	}
	status.Store(200)
	slowGate, _ := NewURLGate(app.URL+"/slow", nil)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := slowGate(ctx); err == nil {
		t.Error("a gate that does not answer in time should be closed")
	}
	refused, _ := NewURLGate("http://"+closedPort(t)+"/slot", nil)
	if err := refused(t.Context()); err == nil {
		t.Error("a gate that cannot be reached should be closed")
	}
	if _, err := NewURLGate("ftp://x/", nil); err == nil {
		t.Error("an ftp URL was accepted")
	}
	if err := AllGates(gate, nil, refused)(t.Context()); err == nil {
		t.Error("AllGates: open although one gate is closed")
	}
	if err := AllGates(gate, nil)(t.Context()); err != nil {
		t.Errorf("AllGates: %v", err)
	}
}
