package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// attackKind is one way of dialling the worker port wrongly.
type attackKind struct {
	name string
	// bad: the connection carries no valid credential for the pool it
	// names, so the hub must never admit it (answer 101) nor give it a
	// job. The others hold a valid token and misbehave after it.
	bad bool
	run func(a *attack) attackResult
}

// attack is one connection of an attacker.
type attack struct {
	conn     net.Conn
	start    time.Time
	deadline time.Time
	limit    time.Duration // deadline - start
	rng      *rand.Rand
}

// attackResult is what the hub did with one attacker connection.
type attackResult struct {
	kind     string
	bad      bool
	admitted bool     // answered 101 or given a job
	jobs     []string // the ids of the jobs it was given
	outcome  string   // what it saw, briefly, so that alike ones count together
}

// attackDeadline bounds each attacker connection: well past any variant's
// handshake timeout, so that one still open then was not timed out.
const attackDeadline = 8 * time.Second

var attackKinds = []attackKind{
	{name: "silent (no handshake)", bad: true, run: func(a *attack) attackResult {
		return a.judge(<-a.listen())
	}},
	{name: "garbage bytes", bad: true, run: func(a *attack) attackResult {
		b := make([]byte, 64+a.rng.IntN(4033))
		for i := range b {
			b[i] = byte(a.rng.UintN(256))
		}
		return a.send(b)
	}},
	{name: "huge header (1-8 MiB), no token", bad: true, run: (*attack).hugeHeader},
	{name: "many headers (5000), no token", bad: true, run: func(a *attack) attackResult {
		var sb strings.Builder
		for i := range 5000 {
			fmt.Fprintf(&sb, "X-Many-%d: v\r\n", i)
		}
		return a.send([]byte(handshake("soak", "", sb.String())))
	}},
	{name: "bad token", bad: true, run: func(a *attack) attackResult {
		return a.send([]byte(handshake("soak", fmt.Sprintf("Bearer wrong-%x", a.rng.Uint64()), "")))
	}},
	{name: "no token", bad: true, run: func(a *attack) attackResult {
		return a.send([]byte(handshake("soak", "", "")))
	}},
	{name: "token in the Basic scheme", bad: true, run: func(a *attack) attackResult {
		basic := base64.StdEncoding.EncodeToString([]byte("worker:" + soakToken))
		return a.send([]byte(handshake("soak", "Basic "+basic, "")))
	}},
	{name: "wrong pool (valid token)", bad: true, run: func(a *attack) attackResult {
		return a.send([]byte(handshake("nosuch", "Bearer "+soakToken, "")))
	}},
	{name: "other pool's token", bad: true, run: func(a *attack) attackResult {
		// aux admits only its own token, and is absent from half the configs.
		return a.send([]byte(handshake("aux", "Bearer "+soakToken, "")))
	}},
	{name: "handshake with a body, no token", bad: true, run: func(a *attack) attackResult {
		return a.send([]byte(handshake("soak", "", "Content-Length: 5\r\n") + "hello"))
	}},
	{name: "HTTP/2 preface", bad: true, run: func(a *attack) attackResult {
		return a.send([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	}},
	{name: "TLS ClientHello to the plain port", bad: true, run: (*attack).tlsHello},
	{name: "slowloris (a byte per 100 ms), no token", bad: true, run: (*attack).slowloris},
	{name: "connect and reset", bad: true, run: func(a *attack) attackResult {
		a.conn.Write([]byte("GET /soak HTTP/1.1\r\nHost: so"))
		if tc, ok := a.conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		a.conn.Close()
		return attackResult{outcome: "reset by the attacker"}
	}},
	{name: "bytes before its 101 (valid token)", run: func(a *attack) attackResult {
		return a.authenticated(handshake("soak", "Bearer "+soakToken, "")+"EARLY "+strayMarker+"\r\n", false, false)
	}},
	{name: "bytes while idle (valid token)", run: func(a *attack) attackResult {
		return a.authenticated(handshake("soak", "Bearer "+soakToken, ""), true, false)
	}},
	{name: "garbage answer to its first job (valid token)", run: func(a *attack) attackResult {
		return a.authenticated(handshake("soak", "Bearer "+soakToken, ""), false, true)
	}},
}

// strayMarker is in the bytes attackers send out of turn. A hub that reads
// them as a job's response names them in its error log
// (`malformed HTTP status code "..."`), which tells the soak whose job
// that was even when the attacker never saw the job's request.
const strayMarker = "SOAK-STRAY-BYTES"

// handshake is a ptth handshake request; authz and extra header lines are
// optional.
func handshake(pool, authz, extra string) string {
	s := "GET /" + pool + " HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\nUpgrade: PTTH/1.0\r\n"
	if authz != "" {
		s += "Authorization: " + authz + "\r\n"
	}
	return s + extra + "\r\n"
}

// heard is what the hub sent an attacker connection until it closed it.
type heard struct {
	data  []byte        // the first heardCap bytes
	after time.Duration // from the dial to the end
	open  bool          // still open at the deadline
	reset bool
}

const heardCap = 64 << 10

// listen reads all the hub sends until it closes the connection or the
// deadline passes.
func (a *attack) listen() <-chan heard {
	ch := make(chan heard, 1)
	go func() {
		a.conn.SetReadDeadline(a.deadline)
		var h heard
		buf := make([]byte, 4096)
		for {
			n, err := a.conn.Read(buf)
			if room := heardCap - len(h.data); room > 0 {
				h.data = append(h.data, buf[:min(n, room)]...)
			}
			if err != nil {
				h.after = time.Since(a.start)
				var ne net.Error
				h.open = errors.As(err, &ne) && ne.Timeout()
				h.reset = errors.Is(err, syscall.ECONNRESET)
				ch <- h
				return
			}
		}
	}()
	return ch
}

// send writes b and listens to the answer.
func (a *attack) send(b []byte) attackResult {
	heardc := a.listen()
	a.conn.SetWriteDeadline(a.deadline)
	a.conn.Write(b)
	return a.judge(<-heardc)
}

// judge tells from what the hub sent whether it admitted the connection.
func (a *attack) judge(h heard) attackResult {
	r := attackResult{jobs: jobIDs(h.data)}
	r.admitted = bytes.HasPrefix(h.data, []byte("HTTP/1.1 101")) || len(r.jobs) > 0
	switch {
	case len(h.data) >= 12 && bytes.HasPrefix(h.data, []byte("HTTP/1.")):
		r.outcome = "answered " + string(h.data[9:12])
	case len(h.data) > 0:
		r.outcome = "sent other bytes"
	case h.open:
		r.outcome = fmt.Sprintf("still open after %v", a.limit)
	case h.reset:
		r.outcome = "reset by the hub"
	default:
		r.outcome = "closed without an answer"
	}
	if !h.open && h.after >= time.Second {
		r.outcome += fmt.Sprintf(" after %ds", int(h.after.Seconds()+0.5))
	}
	if len(r.jobs) > 0 {
		r.outcome += ", then given a job"
	}
	return r
}

// jobIDs finds the X-Request-Id of each job request in b.
func jobIDs(b []byte) []string {
	var ids []string
	key := []byte("\r\nX-Request-Id: ")
	for {
		i := bytes.Index(b, key)
		if i < 0 {
			return ids
		}
		b = b[i+len(key):]
		end := bytes.IndexByte(b, '\r')
		if end < 0 {
			return ids
		}
		ids = append(ids, string(b[:end]))
	}
}

// hugeHeader sends a handshake with a header line of 1 to 8 MiB and no
// token.
func (a *attack) hugeHeader() attackResult {
	heardc := a.listen()
	a.conn.SetWriteDeadline(a.deadline)
	size := (1 + a.rng.IntN(8)) << 20
	if _, err := a.conn.Write([]byte("GET /soak HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\nUpgrade: PTTH/1.0\r\nX-Pad: ")); err == nil {
		chunk := bytes.Repeat([]byte("p"), 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := a.conn.Write(chunk); err != nil {
				break
			}
		}
		a.conn.Write([]byte("\r\n\r\n"))
	}
	return a.judge(<-heardc)
}

// slowloris sends a never-ending handshake (no token) a byte every 100 ms
// until the hub closes the connection or the deadline passes.
func (a *attack) slowloris() attackResult {
	heardc := a.listen()
	a.conn.SetWriteDeadline(a.deadline)
	msg := handshake("soak", "", "")
	msg = msg[:len(msg)-2] + "X-Slow: " // never ends
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case h := <-heardc:
			return a.judge(h)
		case <-t.C:
			b := byte('s')
			if i < len(msg) {
				b = msg[i]
			}
			a.conn.Write([]byte{b})
		}
	}
}

// tlsHello starts a TLS handshake on the plain worker port.
func (a *attack) tlsHello() attackResult {
	rc := &recordingConn{Conn: a.conn}
	a.conn.SetDeadline(a.deadline)
	tc := tls.Client(rc, &tls.Config{ServerName: "soak.invalid", InsecureSkipVerify: true})
	tc.Handshake()
	h := <-a.listen()
	h.data = append(rc.got, h.data...)
	return a.judge(h)
}

// recordingConn keeps the bytes read through it.
type recordingConn struct {
	net.Conn
	got []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if len(c.got) < heardCap {
		c.got = append(c.got, p[:n]...)
	}
	return n, err
}

// authenticated sends a valid handshake (msg, which may carry bytes beyond
// it) and then misbehaves: idleBytes sends bytes out of turn once it has
// its 101; garbage answers its first job with garbage. It records the jobs
// it is given; a job it gets fails for its consumer, as the job of a
// misbehaving worker should.
func (a *attack) authenticated(msg string, idleBytes, garbage bool) attackResult {
	r := attackResult{}
	a.conn.SetDeadline(a.deadline)
	if _, err := a.conn.Write([]byte(msg)); err != nil {
		r.outcome = "write failed"
		return r
	}
	br := bufio.NewReader(a.conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		r.outcome = "no answer to the handshake"
		return r
	}
	r.outcome = fmt.Sprintf("answered %d", resp.StatusCode)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return r
	}
	r.admitted = true
	if idleBytes {
		a.conn.Write([]byte("IDLE " + strayMarker + "\r\n"))
	}
	wait := 3 * time.Second
	if garbage {
		wait = 5 * time.Second
	}
	a.conn.SetDeadline(time.Now().Add(min(wait, time.Until(a.deadline))))
	req, err := http.ReadRequest(br)
	var ne net.Error
	switch {
	case err == nil:
		r.jobs = []string{req.Header.Get("X-Request-Id")}
		r.outcome += ", then given a job"
		if garbage {
			a.conn.SetDeadline(a.deadline)
			a.conn.Write([]byte("HTTP/1.1 2OO NOT OK\r\nContent-Length: zz\r\n\x00\x01\r\n\r\n"))
			r.outcome += " (answered garbage)"
		}
	case errors.As(err, &ne) && ne.Timeout():
		r.outcome += ", then no job"
	default:
		r.outcome += ", then closed"
	}
	return r
}

// attacks dials n attacker connections of every kind in turn, in a seeded
// random order, spread evenly from start over d, at most parallel at once.
func attacks(ctx context.Context, addr string, n, parallel int, seed uint64, start time.Time, d time.Duration) []attackResult {
	order := make([]int, n)
	for i := range order {
		order[i] = i % len(attackKinds)
	}
	rand.New(rand.NewPCG(seed, 0xa77ac)).Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
	results := make([]attackResult, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, k := range order {
		if !sleepUntil(ctx, start.Add(time.Duration(i)*d/time.Duration(n))) {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = runAttack(addr, attackKinds[k], rand.New(rand.NewPCG(seed, uint64(1_000_000+i))), attackDeadline)
		})
	}
	wg.Wait()
	var done []attackResult
	for _, r := range results {
		if r.kind != "" {
			done = append(done, r)
		}
	}
	return done
}

// runAttack makes one attacker connection of kind k, which lasts at most
// limit.
func runAttack(addr string, k attackKind, rng *rand.Rand, limit time.Duration) attackResult {
	start := time.Now()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return attackResult{kind: k.name, bad: k.bad, outcome: "dial failed: " + clientCause(err)}
	}
	defer conn.Close()
	a := &attack{conn: conn, start: start, deadline: start.Add(limit), limit: limit, rng: rng}
	r := k.run(a)
	r.kind, r.bad = k.name, k.bad
	return r
}
