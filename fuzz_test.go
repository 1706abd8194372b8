package reversehttp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The seed corpora are in testdata/fuzz/<FuzzName>/; `make fuzz` runs each
// target for a while, `make fuzz-quick` briefly.

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// fuzzPools are the pools the handshake fuzz targets admit to: one with a
// token, one without.
func fuzzPools() map[string]*PoolConfig {
	return map[string]*PoolConfig{
		"jobs": {Tokens: []string{"secret"}},
		"open": {},
	}
}

// verdict is what the hub answers a handshake made of data: 101 when it is
// admitted, 0 when nothing is answered.
func verdict(t *testing.T, pools map[string]*poolEntry, data []byte) int {
	src := &countingReader{r: bytes.NewReader(data)}
	hs, br, rej := readHandshake(src)
	if src.n > maxHandshakeBytes {
		t.Fatalf("the handshake parser read %d bytes, beyond the bound of %d", src.n, maxHandshakeBytes)
	}
	if br == nil {
		t.Fatal("no reader returned")
	}
	if rej == nil {
		var entry *poolEntry
		if entry, rej = admitTo(pools, hs); rej == nil {
			if len(entry.config.tokens) > 0 && bearerToken(hs.authz) != "secret" {
				t.Fatalf("admitted to %s with authorization %q", hs.pool, hs.authz)
			}
			return http.StatusSwitchingProtocols
		}
	}
	switch {
	case rej.status == 0:
		if len(data) != 0 {
			t.Fatalf("no answer to %d bytes", len(data))
		}
	case rej.status < 400 || rej.status > 499 || rej.reason == "":
		t.Fatalf("refused with %d %q, want a 4xx and a reason", rej.status, rej.reason)
	}
	return rej.status
}

// FuzzHandshake feeds the handshake parser and admission arbitrary bytes:
// they never panic, never read beyond the bound, and refuse what they do
// not admit with a 4xx and a reason.
func FuzzHandshake(f *testing.F) {
	pools := make(map[string]*poolEntry)
	for name, pc := range fuzzPools() {
		pc.Listen = []string{"127.0.0.1:0"}
		if err := pc.provision(name, caddy.NewReplacer()); err != nil {
			f.Fatal(err)
		}
		pools[name] = &poolEntry{config: pc}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		verdict(t, pools, data)
	})
}

// FuzzHandshakeListener sends arbitrary bytes to a real worker listener on
// a loopback port: it answers as the parser decides, 101 only to what the
// parser admits, and a 4xx with a reason otherwise.
func FuzzHandshakeListener(f *testing.F) {
	tl := startTestListener(f, listenerOptions{pools: fuzzPools(), timeout: 2 * time.Second})
	pools := tl.workerListener.pools
	f.Fuzz(func(t *testing.T, data []byte) {
		want := verdict(t, pools, data)
		conn := tl.dial(t).(*net.TCPConn)
		if _, err := conn.Write(data); err != nil && want != 0 {
			// The hub may answer and close before it has read it all.
			t.Logf("writing: %v", err)
		}
		_ = conn.CloseWrite()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if want == 0 {
			if err == nil {
				t.Fatalf("got %d to nothing", resp.StatusCode)
			}
			return
		}
		if err != nil {
			t.Fatalf("no answer (want %d): %v", want, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("the listener answered %d %q, the parser %d", resp.StatusCode, body, want)
		}
		if want != http.StatusSwitchingProtocols && len(bytes.TrimSpace(body)) == 0 {
			t.Fatalf("refused with %d and no reason", want)
		}
	})
}

// FuzzCaddyfile adapts Caddyfiles whose reverse_http global option and
// handler directive are arbitrary: adapting never panics; what adapts is a
// config whose pools validate, and what does not gives an error message.
func FuzzCaddyfile(f *testing.F) {
	f.Fuzz(func(t *testing.T, option, directive string) {
		// Caddy's import and file-reading directives would read whatever
		// files the fuzzer names: they are Caddy's, not ours.
		if strings.Contains(option+directive, "import") || strings.Contains(option+directive, "_file") {
			t.Skip()
		}
		cf := "{\n\treverse_http {\n" + option + "\n\t}\n}\n:8080 {\n\treverse_http " + directive + "\n}\n"
		out, err := adapt(cf)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		var cfg struct {
			Apps struct {
				ReverseHTTP *App `json:"reverse_http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("adapted to JSON that does not decode: %v\n%s", err, out)
		}
		if cfg.Apps.ReverseHTTP == nil {
			return
		}
		for name, pc := range cfg.Apps.ReverseHTTP.Pools {
			if err := pc.validate(name); err != nil {
				t.Fatalf("adapted a pool that does not validate: %v\n%s", err, cf)
			}
		}
	})
}
