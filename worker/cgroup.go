package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The readers behind the CPU and memory gates: the process's cgroup (v2,
// or v1 with its controllers mounted together or apart), and the host's
// /proc files where no cgroup limits it. They read files only, below a
// root that is "/" except in tests, which give them committed file trees.

// sysfs reads the files of one system.
type sysfs struct {
	root string
	ncpu int // CPUs the process may run on, without a quota
}

func (s sysfs) read(path string) ([]byte, error) {
	return os.ReadFile(filepath.Join(s.root, path))
}

// cgroupDirs are the process's cgroup directories (absolute paths as the
// system sees them): the unified hierarchy's, and v1's by controller.
type cgroupDirs struct {
	v2 string
	v1 map[string]string
	// mounts are the mount points of the hierarchies, where walking up
	// from a directory stops.
	mounts map[string]bool
}

// mount is a cgroup file system in mountinfo.
type mount struct {
	root, point string
	v2          bool
	controllers []string // v1: the controllers it carries
}

// cgroups finds the process's cgroup directories from /proc/self/cgroup
// and /proc/self/mountinfo. A system without cgroups has none.
func (s sysfs) cgroups() cgroupDirs {
	d := cgroupDirs{v1: make(map[string]string), mounts: make(map[string]bool)}
	cg, err := s.read("/proc/self/cgroup")
	if err != nil {
		return d
	}
	mi, err := s.read("/proc/self/mountinfo")
	if err != nil {
		return d
	}
	mounts := parseMountinfo(mi)
	for _, m := range mounts {
		d.mounts[m.point] = true
	}
	for line := range strings.SplitSeq(string(cg), "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		path := parts[2]
		if parts[0] == "0" && parts[1] == "" {
			for _, m := range mounts {
				if m.v2 {
					d.v2 = under(m, path)
					break
				}
			}
			continue
		}
		for ctl := range strings.SplitSeq(parts[1], ",") {
			for _, m := range mounts {
				if !m.v2 && slices.Contains(m.controllers, ctl) {
					d.v1[ctl] = under(m, path)
					break
				}
			}
		}
	}
	return d
}

// under is the directory of cgroup path in m: the mount point and the
// path below the mount's root.
func under(m mount, path string) string {
	rel := ""
	if strings.HasPrefix(path, m.root) {
		rel = strings.TrimPrefix(path, m.root)
	}
	return filepath.Join(m.point, rel)
}

// parseMountinfo returns the cgroup file systems of a mountinfo file.
func parseMountinfo(b []byte) []mount {
	var out []mount
	for line := range strings.SplitSeq(string(b), "\n") {
		// id parent major:minor root mount-point options [optional...] - type source super-options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		m := mount{root: unescapeMount(f[3]), point: unescapeMount(f[4])}
		switch g[0] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			m.controllers = strings.Split(g[2], ",")
		default:
			continue
		}
		out = append(out, m)
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ancestors returns dir and its parents up to the hierarchy's mount point:
// a limit on any of them applies.
func (d cgroupDirs) ancestors(dir string) []string {
	var out []string
	for {
		out = append(out, dir)
		if d.mounts[dir] || dir == "/" || dir == "." {
			return out
		}
		dir = filepath.Dir(dir)
	}
}

// readInt reads a file holding one integer.
func (s sysfs) readInt(path string) (int64, error) {
	b, err := s.read(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
}

// readKey reads the value of key in a "key value" file (cpu.stat,
// memory.stat).
func (s sysfs) readKey(path, key string) (int64, error) {
	b, err := s.read(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == key {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// cpuSource is what the CPU gate measures: cumulative CPU time used, and
// the CPUs it is measured against.
type cpuSource struct {
	name  string // for messages
	cpus  float64
	usage func() (time.Duration, error)
}

// errNoSource: neither a cgroup nor the host's files can be read.
var errNoSource = errors.New("no cgroup or /proc files to read")

// cpuSource picks what to measure: a cgroup with a CPU quota (v2 cpu.max,
// v1 cpu.cfs_quota_us; the tightest of the cgroup's and its parents'),
// measured by its usage (v2 cpu.stat, v1 cpuacct.usage, from wherever the
// cpuacct controller is mounted) against the quota; without a quota the
// CPUs are shared with the whole host, whose use /proc/stat gives.
func (s sysfs) cpuSource() (cpuSource, error) {
	d := s.cgroups()
	if d.v2 != "" {
		if q := s.quotaV2(d); q > 0 {
			dir := d.v2
			return cpuSource{name: "cgroup v2 " + dir, cpus: min(q, float64(s.ncpu)), usage: func() (time.Duration, error) {
				us, err := s.readKey(filepath.Join(dir, "cpu.stat"), "usage_usec")
				return time.Duration(us) * time.Microsecond, err
			}}, nil
		}
	}
	if cpu, acct := d.v1["cpu"], d.v1["cpuacct"]; cpu != "" && acct != "" {
		if q := s.quotaV1(d, cpu); q > 0 {
			return cpuSource{name: "cgroup v1 " + acct, cpus: min(q, float64(s.ncpu)), usage: func() (time.Duration, error) {
				ns, err := s.readInt(filepath.Join(acct, "cpuacct.usage"))
				return time.Duration(ns), err
			}}, nil
		}
	}
	_, n, err := s.hostCPU()
	if err != nil {
		return cpuSource{}, fmt.Errorf("%w: %v", errNoSource, err)
	}
	return cpuSource{name: "host", cpus: float64(n), usage: func() (time.Duration, error) {
		b, _, err := s.hostCPU()
		return b, err
	}}, nil
}

// quotaV2 is the tightest cpu.max of dir and its parents, in CPUs; 0 for
// none.
func (s sysfs) quotaV2(d cgroupDirs) float64 {
	best := 0.0
	for _, dir := range d.ancestors(d.v2) {
		b, err := s.read(filepath.Join(dir, "cpu.max"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) != 2 || f[0] == "max" {
			continue
		}
		q, err1 := strconv.ParseFloat(f[0], 64)
		p, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
			continue
		}
		if c := q / p; best == 0 || c < best {
			best = c
		}
	}
	return best
}

// quotaV1 is the tightest cpu.cfs_quota_us / cpu.cfs_period_us of dir and
// its parents, in CPUs; 0 for none (a quota of -1).
func (s sysfs) quotaV1(d cgroupDirs, dir string) float64 {
	best := 0.0
	for _, dir := range d.ancestors(dir) {
		q, err1 := s.readInt(filepath.Join(dir, "cpu.cfs_quota_us"))
		p, err2 := s.readInt(filepath.Join(dir, "cpu.cfs_period_us"))
		if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
			continue
		}
		if c := float64(q) / float64(p); best == 0 || c < best {
			best = c
		}
	}
	return best
}

// userHZ is the unit of /proc/stat's times.
const userHZ = 100

// hostCPU reads /proc/stat: the CPU time spent busy by all CPUs, and how
// many CPUs there are.
func (s sysfs) hostCPU() (time.Duration, int, error) {
	b, err := s.read("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	var busy int64
	n, found := 0, false
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			n++
			continue
		}
		// user nice system idle iowait irq softirq steal ...
		if len(f) < 9 {
			return 0, 0, errors.New("/proc/stat: short cpu line")
		}
		for i, v := range f[1:9] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("/proc/stat: %v", err)
			}
			busy += x
		}
		found = true
	}
	if !found || n == 0 {
		return 0, 0, errors.New("/proc/stat: no cpu lines")
	}
	return time.Duration(busy) * time.Second / userHZ, n, nil
}

// memFree is how much memory more jobs may use: the least of what the
// cgroup and its parents leave below their limits (v2 memory.max and
// memory.current, v1 memory.limit_in_bytes and memory.usage_in_bytes,
// counting the inactive file cache as free, since the kernel reclaims it)
// and the host's MemAvailable.
func (s sysfs) memFree() (int64, error) {
	free, err := s.hostMemAvailable()
	if err != nil {
		free = math.MaxInt64
	}
	d := s.cgroups()
	limited := false
	if d.v2 != "" {
		for _, dir := range d.ancestors(d.v2) {
			if f, ok := s.cgroupFree(dir, "memory.max", "memory.current", "inactive_file"); ok {
				free, limited = min(free, f), true
			}
		}
	}
	if dir := d.v1["memory"]; dir != "" {
		for _, dir := range d.ancestors(dir) {
			if f, ok := s.cgroupFree(dir, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"); ok {
				free, limited = min(free, f), true
			}
		}
	}
	if err != nil && !limited {
		return 0, fmt.Errorf("%w: %v", errNoSource, err)
	}
	return free, nil
}

// noLimit is where v1 limits start to mean none (the page counter's
// maximum, rounded to pages, is just below 2^63).
const noLimit = 1 << 62

// cgroupFree is limit minus usage (less the inactive file cache) in dir,
// and whether dir has a limit.
func (s sysfs) cgroupFree(dir, limitFile, usageFile, inactiveKey string) (int64, bool) {
	b, err := s.read(filepath.Join(dir, limitFile))
	if err != nil {
		return 0, false
	}
	limit, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || limit >= noLimit { // "max", or v1's "no limit"
		return 0, false
	}
	usage, err := s.readInt(filepath.Join(dir, usageFile))
	if err != nil {
		return 0, false
	}
	if inactive, err := s.readKey(filepath.Join(dir, "memory.stat"), inactiveKey); err == nil {
		usage = max(0, usage-inactive)
	}
	return max(0, limit-usage), true
}

// hostMemAvailable reads MemAvailable from /proc/meminfo.
func (s sysfs) hostMemAvailable() (int64, error) {
	b, err := s.read("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: %v", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo: no MemAvailable")
}
