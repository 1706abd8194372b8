package reversehttp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/reversehttp/reverse_http/worker"
)

// testDataDir holds Caddy's storage and config for the tests.
var testDataDir string

// TestMain points Caddy's storage at a temporary directory, so tests neither
// read nor write the user's Caddy state. (Caddy reads XDG_DATA_HOME for its
// default storage when its package initialises, before TestMain runs, so
// the harness also names the storage in every config it loads.)
func TestMain(m *testing.M) {
	if cf := os.Getenv(hubProcessEnv); cf != "" {
		os.Exit(runHubProcess(cf)) // a hub of TestSeveralHubProcesses
	}
	dir, err := os.MkdirTemp("", "reverse-http-test-")
	if err != nil {
		panic(err)
	}
	testDataDir = dir
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	code := m.Run()
	caddy.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback port that was free a moment ago, and that no
// earlier call in this process returned: the kernel may hand out a port
// again as soon as the listener that found it is closed, so two ports a
// test asks for before binding either could otherwise be the same one
// (seen: a pool's second listen address equal to the site's).
func freePort(t testing.TB) int {
	t.Helper()
	givenPorts.Lock()
	defer givenPorts.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !givenPorts.m[port] {
			givenPorts.m[port] = true
			return port
		}
	}
	t.Fatal("no loopback port that was not given out before")
	return 0
}

var givenPorts = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// hub is Caddy running in this process with a reverse_http config.
type hub struct {
	t      testing.TB
	site   string // http://127.0.0.1:PORT
	worker string // 127.0.0.1:PORT of the default pool's listener
	admin  string // 127.0.0.1:PORT of Caddy's admin endpoint; "" for none
}

// newHub loads Caddy with a Caddyfile template in which {siteport} and
// {workers} stand for a free port for the consumer site and a free loopback
// address for the worker listener.
func newHub(t testing.TB, template string) *hub {
	t.Helper()
	return newHubAdmin(t, template, "")
}

// newHubAdmin is newHub with Caddy's admin endpoint on admin ("" for none).
func newHubAdmin(t testing.TB, template, admin string) *hub {
	t.Helper()
	h := &hub{
		t:      t,
		site:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		worker: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		admin:  admin,
	}
	h.load(template)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	h.site = "http://" + h.site
	return h
}

// load (re)loads Caddy with the template; a failure ends the test.
func (h *hub) load(template string) {
	h.t.Helper()
	if err := h.tryLoad(template); err != nil {
		h.t.Fatalf("loading config: %v", err)
	}
	h.waitOneListener()
}

// waitOneListener waits until the old config's sockets on the site and
// worker ports have closed. Caddy opens a new socket (SO_REUSEPORT) for
// each config and, when a reload returns, may not have closed the old one
// yet: a connection the kernel hands to the old socket meanwhile is reset
// when it closes, which has nothing to do with what a test checks.
func (h *hub) waitOneListener() {
	h.t.Helper()
	for _, addr := range []string{strings.TrimPrefix(h.site, "http://"), h.worker} {
		_, port, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(port)
		waitFor(h.t, "one listening socket on port "+port, func() bool { return listeningSockets(n) <= 1 })
	}
}

// listeningSockets counts this process's TCP sockets listening on port
// (Linux; -1 where /proc does not tell). Other processes' sockets do not
// count: with SO_REUSEPORT another test binary may listen on the same port.
func listeningSockets(port int) int {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return -1
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	mine := make(map[string]bool, len(fds))
	for _, fd := range fds {
		if link, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil {
			mine[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	want := fmt.Sprintf(":%04X", port)
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && strings.HasSuffix(f[1], want) && f[3] == "0A" && mine[f[9]] {
			n++
		}
	}
	return n
}

func (h *hub) tryLoad(template string) error {
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(h.site, "http://"))
	cf := strings.NewReplacer("{siteport}", port, "{workers}", h.worker).Replace(template)
	admin := "off"
	if h.admin != "" {
		admin = h.admin
	}
	cf = fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tgrace_period 5s\n\tstorage file_system %s\n", admin, testStorage()) +
		strings.TrimPrefix(strings.TrimSpace(cf), "{") + "\n"
	cfg, err := adapt(cf)
	if err != nil {
		return fmt.Errorf("adapt: %w\n%s", err, cf)
	}
	return caddy.Load(cfg, true)
}

func testStorage() string { return filepath.Join(testDataDir, "storage") }

// livePool returns the live pool with that name.
func livePool(t testing.TB, name string) *Pool {
	t.Helper()
	var p *Pool
	pools.Range(func(k, v any) bool {
		if k == name {
			p = v.(*Pool)
			return false
		}
		return true
	})
	if p == nil {
		t.Fatalf("no live pool %q", name)
	}
	return p
}

// startWorker runs an in-process worker serving handler and waits until
// the pool holds all its connections idle.
func startWorker(t testing.TB, h *hub, pool, token string, slots int, handler http.Handler) context.CancelFunc {
	t.Helper()
	p := livePool(t, pool)
	// The hub takes a connection into the pool after it has written the
	// 101, so the worker may count it connected first: wait for the pool
	// to have taken in this worker's connections, not just to hold as
	// many as it has slots (another worker's may be there already).
	joined := p.Stats().Joined
	w, stop, done := newWorker(t, worker.Config{
		Hub: h.worker, Pool: pool, Token: token, Slots: slots, Name: "test-worker", Handler: handler,
	})
	deadline := time.Now().Add(10 * time.Second)
	for w.Connected() < slots || p.Stats().Joined-joined < uint64(slots) || p.Stats().Idle+p.Stats().Busy < slots {
		select {
		case err := <-done:
			t.Fatalf("worker ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker connected %d of %d slots; pool %+v", w.Connected(), slots, p.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return stop
}

// runWorker runs an in-process worker with cfg (quiet, a short drain) and
// returns the function that stops it, which the test's cleanup calls too.
// Unlike startWorker, it neither waits for its connections nor minds the
// hub turning it away.
func runWorker(t testing.TB, cfg worker.Config) func() {
	t.Helper()
	_, stop, _ := newWorkerRun(t, cfg, false)
	return stop
}

func newWorker(t testing.TB, cfg worker.Config) (*worker.Worker, func(), <-chan error) {
	return newWorkerRun(t, cfg, true)
}

// newWorkerRun starts a worker; strict reports an error Run returns.
func newWorkerRun(t testing.TB, cfg worker.Config, strict bool) (*worker.Worker, func(), <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg.DrainTimeout = 5 * time.Second
	cfg.Logger = slog.New(slog.DiscardHandler)
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil && strict {
					t.Errorf("worker: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("worker did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return w, stop, done
}

// get sends a request to the hub's site and returns status, headers and body.
func (h *hub) do(req *http.Request) (*http.Response, string) {
	h.t.Helper()
	resp, err := testClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, string(body)
}

func (h *hub) get(path string) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.site+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.do(req)
}

var testClient = &http.Client{
	Timeout: 30 * time.Second,
	Transport: &http.Transport{
		MaxIdleConnsPerHost: 100,
		DisableCompression:  true,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
