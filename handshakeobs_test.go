package reversehttp

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestHandshakeResultsCounted sends each kind of bad handshake to a
// listener and checks what it counts as, and under which pool: the pool
// it named, else the listener's first pool by name.
func TestHandshakeResultsCounted(t *testing.T) {
	twoPools := map[string]*PoolConfig{"alpha": {Tokens: []string{"secret"}}, "beta": {Tokens: []string{"secret"}}}
	for _, tc := range []struct {
		name   string
		tls    bool
		send   func(t *testing.T, conn net.Conn)
		pool   string
		result handshakeResult
	}{
		{"ok", false, sendHead(handshakeHead("/beta")), "beta", resultOK},
		{"malformed", false, sendHead("HELLO\r\n\r\n"), "alpha", resultBadRequest},
		{"no token", false, sendHead(strings.Replace(handshakeHead("/beta"), "Authorization: Bearer secret\r\n", "", 1)), "beta", resultUnauthorized},
		{"wrong token", false, sendHead(strings.Replace(handshakeHead("/beta"), "secret", "wrong", 1)), "beta", resultForbidden},
		{"unknown pool", false, sendHead(handshakeHead("/gamma")), "alpha", resultNotFound},
		{"too large", false, sendHead(handshakeHead("/beta", "X-Pad: "+strings.Repeat("p", maxHandshakeBytes))), "alpha", resultTooLarge},
		{"silent", false, func(*testing.T, net.Conn) {}, "alpha", resultTimeout},
		{"cut short", false, sendHead("GET /beta HTTP/1.1\r\nHost: hub\r\n"), "alpha", resultTimeout},
		{"TLS silent", true, func(*testing.T, net.Conn) {}, "alpha", resultTimeout},
		{"TLS garbage", true, sendHead("\x16\x03\x01\x00\x05hello"), "alpha", resultTLSError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := listenerOptions{pools: copyPools(twoPools), timeout: 300 * time.Millisecond}
			if tc.tls {
				o.tls = newTestPKI(t).serverConfig(t)
			}
			tl := startTestListener(t, o)
			conn := tl.dial(t)
			tc.send(t, conn)
			counter := &tl.pools[tc.pool].obs.handshakes[tc.result]
			waitFor(t, handshakeNames[tc.result]+" counted under "+tc.pool, func() bool { return counter.Load() == 1 })
			for name, p := range tl.pools {
				for r := range p.obs.handshakes {
					if n := p.obs.handshakes[r].Load(); n != 0 && (name != tc.pool || handshakeResult(r) != tc.result) {
						t.Errorf("%s also counted %d under %s", handshakeNames[r], n, name)
					}
				}
			}
		})
	}
}

func sendHead(head string) func(t *testing.T, conn net.Conn) {
	return func(t *testing.T, conn net.Conn) {
		go io.WriteString(conn, head) // a too large one blocks once the hub stops reading
	}
}

func copyPools(m map[string]*PoolConfig) map[string]*PoolConfig {
	out := make(map[string]*PoolConfig, len(m))
	for k, v := range m {
		c := *v
		out[k] = &c
	}
	return out
}
