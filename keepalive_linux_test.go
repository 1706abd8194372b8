//go:build linux

package reversehttp

import (
	"net"
	"net/http"
	"testing"

	"github.com/reversehttp/reverse_http/worker"
)

// hubSideConns returns the hub's ends of p's worker connections.
func hubSideConns(p *Pool) []net.Conn {
	var out []net.Conn
	p.retireIf(func(c *workerConn) bool {
		out = append(out, c.conn)
		return false
	})
	return out
}

// TestWorkerKeepAlive checks that every worker connection the hub accepts
// has the worker keepalive settings, whether its listening socket hands
// them on (the app's listeners, set once on the socket) or not (a listener
// opened elsewhere, where each connection is given them), for a ptth
// worker and for a POTHEAD one, which joins without a handshake goroutine.
func TestWorkerKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		name         string
		listenConfig bool
		pothead      bool
		inherits     int8
	}{
		{"set on the listener, ptth", true, false, 1},
		{"set on the listener, pothead", true, true, 1},
		{"set on each connection, ptth", false, false, -1},
		{"set on each connection, pothead", false, true, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := &PoolConfig{Tokens: []string{"secret"}}
			if tc.pothead {
				pc = &PoolConfig{Protocol: worker.ProtocolPothead}
			}
			tl := startTestListener(t, listenerOptions{pools: map[string]*PoolConfig{"jobs": pc}, listenConfig: tc.listenConfig})
			p := tl.pools["jobs"]
			for i := range 2 {
				if tc.pothead {
					tl.dial(t)
				} else if resp, _ := tl.exchange(t, handshakeHead("/jobs")); resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("handshake got %d", resp.StatusCode)
				}
				waitFor(t, "the connection in the pool", func() bool { return p.Stats().Idle == i+1 })
			}
			for _, c := range hubSideConns(p) {
				if !hasWorkerKeepAlive(c) {
					t.Errorf("hub's end %v lacks the keepalive settings", c.LocalAddr())
				}
			}
			if tl.inherits != tc.inherits {
				t.Errorf("listener's inherits = %d, want %d", tl.inherits, tc.inherits)
			}
		})
	}
}

// TestHasWorkerKeepAlive checks the check itself against a connection
// without the settings and one with them.
func TestHasWorkerKeepAlive(t *testing.T) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if hasWorkerKeepAlive(c) {
		t.Fatal("a connection without keepalive passed")
	}
	if err := c.(*net.TCPConn).SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: workerKeepAlive.Idle, Interval: workerKeepAlive.Interval, Count: workerKeepAlive.Count + 1}); err != nil {
		t.Fatal(err)
	}
	if hasWorkerKeepAlive(c) {
		t.Fatal("a connection with another probe count passed")
	}
	if err := c.(*net.TCPConn).SetKeepAliveConfig(workerKeepAlive); err != nil {
		t.Fatal(err)
	}
	if !hasWorkerKeepAlive(c) {
		t.Fatal("a connection with the settings failed")
	}
}
