package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// The soak's tokens: the workers hold soakToken, which every config
// allows; soakNewToken is the one a rotation adds beside it; soakAuxToken
// admits to the second pool only.
const (
	soakToken    = "soak-token-1"
	soakNewToken = "soak-token-2"
	soakAuxToken = "soak-aux-token"
)

// soakAddrs are the loopback addresses of a soak.
type soakAddrs struct {
	admin   string // Caddy's admin API
	site    string // the consumers' site
	workers string // the pools' worker listener
	app     string // the application behind the worker binaries
}

// soakPaths are the files of a soak in its scratch directory.
type soakPaths struct {
	storage string // Caddy's storage
	access  string // Caddy's access log
	hub     string // the reverse_http app's debug log
	exec    string // the execution log of the job handlers
}

func newSoakPaths(dir string) soakPaths {
	return soakPaths{
		storage: filepath.Join(dir, "caddy-storage"),
		access:  filepath.Join(dir, "access.log"),
		hub:     filepath.Join(dir, "hub.log"),
		exec:    filepath.Join(dir, "executions.log"),
	}
}

// soakVariant is one of the configs the reloads alternate between. Every
// one keeps the pool "soak" and its workers' token: none should cost a
// request.
type soakVariant struct {
	name             string
	tokens           []string
	maxQueue         int
	queueTimeout     time.Duration
	handshakeTimeout time.Duration
	aux              bool // a second pool "aux" on the same listener, with a route of its own
}

var soakVariants = []soakVariant{
	{name: "base", tokens: []string{soakToken}, maxQueue: 200, queueTimeout: 5 * time.Second, handshakeTimeout: 2 * time.Second},
	{name: "rotation begun, aux added", tokens: []string{soakToken, soakNewToken}, maxQueue: 100, queueTimeout: 8 * time.Second,
		handshakeTimeout: 3 * time.Second, aux: true},
	{name: "tokens reordered, aux removed", tokens: []string{soakNewToken, soakToken}, maxQueue: 300, queueTimeout: 6 * time.Second,
		handshakeTimeout: 2 * time.Second},
	{name: "aux added, smaller queue", tokens: []string{soakToken}, maxQueue: 150, queueTimeout: 5 * time.Second,
		handshakeTimeout: 2 * time.Second, aux: true},
}

// maxQueueTimeout is the longest queue timeout of any variant: the
// consumers' timeout must be well above it.
func maxQueueTimeout() time.Duration {
	var m time.Duration
	for _, v := range soakVariants {
		m = max(m, v.queueTimeout)
	}
	return m
}

// caddyConfig is the JSON config of a variant.
func (v soakVariant) caddyConfig(a soakAddrs, l soakPaths) []byte {
	pool := func(tokens []string) map[string]any {
		return map[string]any{
			"listen":            []string{a.workers},
			"tokens":            tokens,
			"max_queue":         v.maxQueue,
			"queue_timeout":     v.queueTimeout,
			"handshake_timeout": v.handshakeTimeout,
		}
	}
	pools := map[string]any{"soak": pool(v.tokens)}
	routes := []any{}
	if v.aux {
		pools["aux"] = pool([]string{soakAuxToken})
		routes = append(routes, map[string]any{
			"match":  []any{map[string]any{"path": []string{"/aux/*"}}},
			"handle": []any{map[string]any{"handler": "reverse_http", "pool": "aux"}},
		})
	}
	routes = append(routes, map[string]any{
		"handle": []any{map[string]any{"handler": "reverse_http", "pool": "soak"}},
	})
	cfg := map[string]any{
		"admin":   map[string]any{"listen": a.admin},
		"storage": map[string]any{"module": "file_system", "root": l.storage},
		// The access log tells which consumer requests Caddy's HTTP server
		// read at all; the hub's debug log, which worker connection had
		// which address.
		"logging": map[string]any{"logs": map[string]any{
			"default": map[string]any{"level": "WARN", "exclude": []string{"http.log.access", "reverse_http"}},
			"access": map[string]any{
				"include": []string{"http.log.access"},
				"writer":  map[string]any{"output": "file", "filename": l.access, "roll": false},
			},
			"hub": map[string]any{
				"include": []string{"reverse_http"},
				"level":   "DEBUG",
				"writer":  map[string]any{"output": "file", "filename": l.hub, "roll": false},
			},
		}},
		"apps": map[string]any{
			"reverse_http": map[string]any{"pools": pools},
			"http": map[string]any{
				// Long enough for any request of the old config to finish.
				"grace_period": 20 * time.Second,
				"servers": map[string]any{"soak": map[string]any{
					"listen":          []string{a.site},
					"logs":            map[string]any{},
					"automatic_https": map[string]any{"disable": true},
					"routes":          routes,
				}},
			},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // only maps, strings and numbers
	}
	return b
}

// reload is one POST /load and how it went.
type reload struct {
	variant string
	start   time.Time
	took    time.Duration
	err     error
}

// load posts a config to Caddy's admin API; it returns when Caddy has
// switched to it.
func load(ctx context.Context, admin string, cfg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+admin+"/load", bytes.NewReader(cfg))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	// Reload even where Caddy might take the config for unchanged.
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

// reloads loads n configs, the variants in turn starting with the second,
// spread evenly from start over d.
func reloads(ctx context.Context, a soakAddrs, l soakPaths, n int, start time.Time, d time.Duration) []reload {
	var out []reload
	step := d / time.Duration(n)
	for i := range n {
		if !sleepUntil(ctx, start.Add(step/2+time.Duration(i)*step)) {
			break
		}
		v := soakVariants[(i+1)%len(soakVariants)]
		t0 := time.Now()
		err := load(ctx, a.admin, v.caddyConfig(a, l))
		out = append(out, reload{variant: v.name, start: t0, took: time.Since(t0), err: err})
	}
	return out
}

// sleepUntil waits until t; it reports false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// readAccessLog returns the X-Request-Id of every request in Caddy's
// access log: the requests its HTTP server read.
func readAccessLog(r io.Reader) (map[string]bool, error) {
	seen := make(map[string]bool)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Request struct {
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil {
			continue
		}
		for _, id := range entry.Request.Headers["X-Request-Id"] {
			seen[id] = true
		}
	}
	return seen, sc.Err()
}

// readHandlerErrors returns, by job id, the error Caddy's log gives for
// each request that failed in the reverse_http handler.
func readHandlerErrors(r io.Reader) (map[string]string, error) {
	errs := make(map[string]string)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Logger  string `json:"logger"`
			Msg     string `json:"msg"`
			Request struct {
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil || entry.Logger != "http.log.error" {
			continue
		}
		for _, id := range entry.Request.Headers["X-Request-Id"] {
			errs[id] = entry.Msg
		}
	}
	return errs, sc.Err()
}

// hubConn is a worker connection the hub's debug log tells of.
type hubConn struct {
	at     time.Time
	worker string // the name it gave: the soak's worker tag
}

// hubLog is what the hub's log tells the soak.
type hubLog struct {
	conns    map[string][]hubConn // by the worker's address, oldest first (a port is used again in time)
	warnings map[string]int       // lines at WARN or above, by message
}

// readHubLog reads the worker connections the hub admitted and counts its
// warnings.
func readHubLog(r io.Reader) (hubLog, error) {
	l := hubLog{conns: make(map[string][]hubConn), warnings: make(map[string]int)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Level  string  `json:"level"`
			TS     float64 `json:"ts"`
			Msg    string  `json:"msg"`
			Remote string  `json:"remote"`
			Worker string  `json:"worker"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil {
			continue
		}
		switch entry.Level {
		case "debug", "info":
		default:
			l.warnings[entry.Msg]++
		}
		if entry.Msg == "worker connected" {
			at := time.Unix(0, int64(entry.TS*1e9))
			l.conns[entry.Remote] = append(l.conns[entry.Remote], hubConn{at: at, worker: entry.Worker})
		}
	}
	return l, sc.Err()
}

// workerOf names the worker whose connection an error of the hub names
// ("read tcp HUB->WORKER: ..."), as it was at t; "" if it names none.
func workerOf(msg string, t time.Time, conns map[string][]hubConn) string {
	i := strings.Index(msg, "->")
	if i < 0 {
		return ""
	}
	addr, _, _ := strings.Cut(msg[i+2:], ":")
	rest := msg[i+2+len(addr):]
	port, _, _ := strings.Cut(strings.TrimPrefix(rest, ":"), ":")
	worker := ""
	for _, c := range conns[addr+":"+port] {
		if !c.at.After(t) {
			worker = c.worker
		}
	}
	return worker
}
