package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// pattern is the upload body: a fixed 64 KiB block, repeated.
type pattern struct {
	block []byte
	left  int64
	off   int
}

func newPattern(n int64) *pattern {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return &pattern{block: b, left: n}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	total := 0
	for len(b) > 0 && p.left > 0 {
		n := copy(b, p.block[p.off:])
		if int64(n) > p.left {
			n = int(p.left)
		}
		b = b[n:]
		p.left -= int64(n)
		p.off = (p.off + n) % len(p.block)
		total += n
	}
	return total, nil
}

// largeBodies is scenario 3: a streamed upload whose digest the app
// returns, and a download, through reverse_proxy and reverse_http, with
// Caddy's peak memory growth over each transfer.
func largeBodies(e *env, o *options) ([]*table, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	app := fmt.Sprintf("127.0.0.1:%d", ports[0])
	rp := fmt.Sprintf("127.0.0.1:%d", ports[1])
	rh := fmt.Sprintf("127.0.0.1:%d", ports[2])
	hub := fmt.Sprintf("127.0.0.1:%d", ports[3])
	caddy, err := e.startCaddy("large-caddy", fmt.Sprintf(`
	reverse_http {
		pool large {
			listen %s
			token %s
		}
	}
}

http://%s {
	bind 127.0.0.1
	reverse_proxy %s
}
http://%s {
	bind 127.0.0.1
	reverse_http large
}
`, hub, benchToken, rp, app, rh), rp, rh, hub)
	if err != nil {
		return nil, err
	}
	defer caddy.stop(10 * time.Second)
	appProc, err := e.serve("large-app", "--listen", app, "--hub", hub, "--pool", "large", "--token", benchToken, "--slots", "2")
	if err != nil {
		return nil, err
	}
	defer appProc.stop(10 * time.Second)

	h := sha256.New()
	io.Copy(h, newPattern(o.largeBytes))
	want := fmt.Sprintf("%d %s", o.largeBytes, hex.EncodeToString(h.Sum(nil)))

	type system struct {
		name, base string
		viaCaddy   bool
		up, down   time.Duration
		upRSS      int64 // largest peak RSS growth over a transfer
		downRSS    int64
		failures   []string
	}
	systems := []*system{
		{name: "direct to the app", base: "http://" + app},
		{name: "Caddy `reverse_proxy`", base: "http://" + rp, viaCaddy: true},
		{name: "`reverse_http` (worker package in the app)", base: "http://" + rh, viaCaddy: true},
	}
	rounds := 2
	if o.quick {
		rounds = 1
	}
	c := newClient(2)
	defer c.CloseIdleConnections()
	// measure runs f and returns how long it took and how far Caddy's
	// peak RSS rose above its RSS before it.
	measure := func(s *system, f func() error) (time.Duration, int64) {
		var rss0 int64
		if s.viaCaddy {
			resetPeak(caddy.pid())
			rss0, _, _ = memory(caddy.pid())
		}
		t0 := time.Now()
		if err := f(); err != nil {
			s.failures = append(s.failures, err.Error())
		}
		d := time.Since(t0)
		if !s.viaCaddy {
			return d, 0
		}
		_, hwm, _ := memory(caddy.pid())
		return d, hwm - rss0
	}
	for round := range rounds {
		for i := range systems {
			s := systems[(i+round)%len(systems)]
			d, g := measure(s, func() error {
				req, _ := http.NewRequest("POST", s.base+"/upload", newPattern(o.largeBytes))
				req.ContentLength = o.largeBytes
				resp, err := c.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				if got := strings.TrimSpace(string(b)); resp.StatusCode != 200 || got != want {
					return fmt.Errorf("upload: status %d, digest %q, want %q", resp.StatusCode, got, want)
				}
				return nil
			})
			s.up += d
			s.upRSS = max(s.upRSS, g)
			d, g = measure(s, func() error {
				resp, err := c.Get(fmt.Sprintf("%s/download?bytes=%d", s.base, o.largeBytes))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				n, err := io.Copy(io.Discard, resp.Body)
				if err != nil {
					return err
				}
				if resp.StatusCode != 200 || n != o.largeBytes {
					return fmt.Errorf("download: status %d, %d bytes", resp.StatusCode, n)
				}
				return nil
			})
			s.down += d
			s.downRSS = max(s.downRSS, g)
		}
	}
	mbps := func(d time.Duration) float64 {
		return float64(o.largeBytes) * float64(rounds) / d.Seconds() / 1e6
	}
	t := &table{
		title: "3. Large bodies",
		intro: fmt.Sprintf("A %s MiB upload (streamed; the app answers its SHA-256, which is checked) and a %s MiB download, one at a time, %d rounds interleaved. "+
			"RSS growth = Caddy's peak RSS (VmHWM, reset before each transfer) minus its RSS before the transfer; the larger of the rounds.",
			mib(o.largeBytes), mib(o.largeBytes), rounds),
		header: []string{"path", "upload MB/s", "download MB/s", "upload vs reverse_proxy", "download vs reverse_proxy", "RSS growth up / down MiB", "failures"},
	}
	base := systems[1]
	for _, s := range systems {
		rss := "–"
		if s.viaCaddy {
			rss = mib(s.upRSS) + " / " + mib(s.downRSS)
		}
		t.add(s.name, fmt.Sprintf("%.0f", mbps(s.up)), fmt.Sprintf("%.0f", mbps(s.down)),
			ratio(mbps(s.up), mbps(base.up)), ratio(mbps(s.down), mbps(base.down)), rss, fmt.Sprint(len(s.failures)))
		for _, f := range s.failures {
			t.notes = append(t.notes, s.name+": "+f)
		}
	}
	return []*table{t}, nil
}
