package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
