package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// env is what every scenario shares: the binaries and a scratch directory.
type env struct {
	caddy  string // Caddy built with the plugin
	worker string // the reverse-http-worker binary
	self   string // this program, re-run for the "serve" role
	admin  string // the admin address of the Caddy started last
	dir    string // scratch directory for configs and logs

	mu    sync.Mutex
	seq   int
	procs []*proc // every child started, so that killAll can reach them
}

// proc is a child process of the benchmark.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the child has exited
}

// start runs a child with its output in a log file. If ready is set, it
// waits for the child to print a line "ready".
func (e *env) start(name string, ready bool, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(e.dir, fmt.Sprintf("%03d-%s.log", e.next(), name))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = childAttr()
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(e.dir, "xdg-config"),
		"XDG_DATA_HOME="+filepath.Join(e.dir, "xdg-data"),
		"HOME="+e.dir,
	)
	var out *bufio.Reader
	if ready {
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		out = bufio.NewReader(pipe)
	} else {
		cmd.Stdout = logf
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	if ready {
		line := make(chan string, 1)
		go func() {
			s, _ := out.ReadString('\n')
			line <- s
			// Keep draining so the child never blocks on stdout.
			buf := make([]byte, 4096)
			for {
				if _, err := out.Read(buf); err != nil {
					break
				}
			}
			cmd.Wait()
			logf.Close()
			close(p.done)
		}()
		select {
		case s := <-line:
			if strings.TrimSpace(s) != "ready" {
				p.kill()
				return nil, fmt.Errorf("%s did not start: %s", name, p.tail())
			}
		case <-time.After(60 * time.Second):
			p.kill()
			return nil, fmt.Errorf("%s not ready after 60s: %s", name, p.tail())
		}
	} else {
		go func() {
			cmd.Wait()
			logf.Close()
			close(p.done)
		}()
	}
	return p, nil
}

// next numbers the files of the scratch directory in the order they are
// made.
func (e *env) next() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	return e.seq
}

// killAll kills every child still running and waits for each to exit. It is
// the last line of defence of a run that fails or is interrupted.
func (e *env) killAll() {
	e.mu.Lock()
	procs := slices.Clone(e.procs)
	e.mu.Unlock()
	for _, p := range procs {
		if !p.exited() {
			p.cmd.Process.Kill()
		}
	}
	for _, p := range procs {
		<-p.done
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop asks the child to leave (SIGTERM), then kills it after the grace
// period.
func (p *proc) stop(grace time.Duration) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the end of the child's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// memory reads a process's resident set size and its peak (VmHWM), in
// bytes.
func memory(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, errors.New("no VmRSS/VmHWM in /proc status")
	}
	return rss, hwm, nil
}

// resetPeak sets a process's VmHWM back to its current RSS.
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// freePorts finds n loopback ports nobody listens on.
func freePorts(n int) ([]int, error) {
	// Hold them all open at once so that no port is handed out twice.
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// waitListening waits until every address accepts TCP connections.
func waitListening(p *proc, addrs ...string) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if p.exited() {
				return fmt.Errorf("%s exited: %s", p.name, p.tail())
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: nothing listens on %s after 30s", p.name, a)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// startCaddy runs Caddy with a Caddyfile and waits for the addresses. Its
// admin endpoint, on a loopback port, serves /debug/vars and /debug/pprof/
// for the memory figures and profiles.
func (e *env) startCaddy(name, caddyfile string, addrs ...string) (*proc, error) {
	path := filepath.Join(e.dir, fmt.Sprintf("%03d-%s.Caddyfile", e.next(), name))
	port, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	e.admin = fmt.Sprintf("127.0.0.1:%d", port[0])
	global := fmt.Sprintf(`{
	admin %s
	storage file_system %s
	skip_install_trust
	auto_https off
	log {
		level ERROR
	}
	grace_period 2s
`, e.admin, filepath.Join(e.dir, "caddy-storage"))
	if err := os.WriteFile(path, []byte(global+caddyfile), 0o644); err != nil {
		return nil, err
	}
	p, err := e.start(name, false, e.caddy, "run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	if err := waitListening(p, append(addrs, e.admin)...); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// goMemory is what Caddy's Go runtime says of its memory.
type goMemory struct {
	HeapInuse, StackInuse uint64
}

// caddyMemory reads the memory statistics of the Caddy started last.
func (e *env) caddyMemory() (goMemory, error) {
	var v struct{ Memstats goMemory }
	resp, err := http.Get("http://" + e.admin + "/debug/vars")
	if err != nil {
		return v.Memstats, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&v)
	return v.Memstats, err
}

// saveProfile saves one of the pprof profiles of the Caddy started last
// (e.g. "heap") to path.
func (e *env) saveProfile(kind, path string) error {
	resp, err := http.Get("http://" + e.admin + "/debug/pprof/" + kind)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("pprof %s: status %d", kind, resp.StatusCode)
	}
	return os.WriteFile(path, b, 0o644)
}

// startHAProxy runs HAProxy in the foreground with a config.
func (e *env) startHAProxy(config string, addrs ...string) (*proc, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(e.dir, fmt.Sprintf("%03d-haproxy.cfg", e.next()))
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return nil, err
	}
	p, err := e.start("haproxy", false, bin, "-db", "-f", path)
	if err != nil {
		return nil, err
	}
	if err := waitListening(p, addrs...); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// serve starts the benchmark's application in a child process.
func (e *env) serve(name string, args ...string) (*proc, error) {
	return e.start(name, true, e.self, append([]string{"serve"}, args...)...)
}

// cpuTime reads the CPU time (user and system, all threads) a process has
// used so far, from /proc/PID/stat, at the kernel's clock tick (10 ms).
// (The threads' schedstat would give nanoseconds, but on a virtual machine
// it counts the time the host gave to others, which a shared machine
// makes large and uneven.)
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields are
	// counted from after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc stat times")
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(ut+st) * tick, nil
}

// waitConnections waits, for up to 30 s, until the pool of the Caddy
// started last holds n idle worker connections.
func (e *env) waitConnections(pool string, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st struct{ Idle, Busy int }
		resp, err := http.Get("http://" + e.admin + "/reverse_http/pools/" + pool)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if err == nil && st.Idle >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool %s: %d of %d worker connections after 30s (%v)", pool, st.Idle, n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
