package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// soakJob is one consumer request of the soak.
type soakJob struct {
	id     string
	method string
	body   []byte // POST only
	late   bool   // the handler reads the body after its work
	ms     int    // the handler's work
	out    int    // filler bytes in the response
}

// drawJob draws consumer c's n-th job: 60% POSTs with bodies from 4 KiB to
// 4 MiB (log-uniform), read early or late; 40% GETs, half of them with
// responses up to 512 KiB.
func drawJob(rng *rand.Rand, corpus []byte, c, n int) soakJob {
	j := soakJob{id: fmt.Sprintf("c%02d-%06d", c, n), ms: 5 + rng.IntN(36)}
	if rng.Float64() < 0.6 {
		j.method = "POST"
		size := int(4096 * math.Pow(1024, rng.Float64()))
		off := rng.IntN(len(corpus) - size + 1)
		j.body = corpus[off : off+size]
		j.late = rng.IntN(2) == 0
		return j
	}
	j.method = "GET"
	if rng.IntN(2) == 0 {
		j.out = int(1024 * math.Pow(512, rng.Float64()))
	}
	return j
}

// soakCorpus is the bytes request bodies are cut from.
func soakCorpus(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
	b := make([]byte, 4<<20)
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8 && i+k < len(b); k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func (j soakJob) url(site string) string {
	read := "early"
	if j.late {
		read = "late"
	}
	return fmt.Sprintf("http://%s/job?id=%s&ms=%d&read=%s&out=%d", site, j.id, j.ms, read, j.out)
}

// consumers runs n consumers against the site until stop is closed, each
// sending its next request when the last one is answered. Every request has
// its own timeout; one that passes it is hung. ctx ends the requests in
// flight (an interrupted run).
func consumers(ctx context.Context, stop <-chan struct{}, site string, n int, seed uint64, timeout time.Duration) []outcome {
	corpus := soakCorpus(seed)
	// A new connection per request: a reload closes idle keep-alive
	// connections, and a POST that Go's client has begun to send on one as
	// it closes is lost without having reached Caddy. That race is the
	// client's, not the hub's, and is left out.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	var mu sync.Mutex
	var all []outcome
	var wg sync.WaitGroup
	for c := range n {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(c+1)))
			var mine []outcome
			for i := 0; ; i++ {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, mine...)
					mu.Unlock()
					return
				default:
				}
				mine = append(mine, runJob(ctx, client, site, drawJob(rng, corpus, c, i), timeout))
			}
		})
	}
	wg.Wait()
	return all
}

// runJob sends one job and checks its answer.
func runJob(ctx context.Context, client *http.Client, site string, j soakJob, timeout time.Duration) outcome {
	o := outcome{id: j.id, method: j.method, late: j.late, start: time.Now()}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if j.body != nil {
		body = bytes.NewReader(j.body)
	}
	req, err := http.NewRequestWithContext(rctx, j.method, j.url(site), body)
	if err != nil {
		o.cause = "client: " + err.Error()
		return o
	}
	req.Header.Set("X-Request-Id", j.id)
	resp, err := client.Do(req)
	if err == nil {
		o.servedBy, o.cause, err = checkAnswer(resp, j)
		resp.Body.Close()
	}
	o.end = time.Now()
	switch {
	case err == nil:
	case ctx.Err() != nil:
		o.aborted = true
	case errors.Is(err, context.DeadlineExceeded):
		o.hung = true
	case o.cause == "":
		o.cause = clientCause(err)
	}
	return o
}

// checkAnswer reads a response to its end and checks that it is the
// answer to j: status 200, the first line naming j and the body it sent,
// the length promised. It returns the worker tag the answer names and the
// cause of a failure; err is a failure to read.
func checkAnswer(resp *http.Response, j soakJob) (servedBy, cause string, err error) {
	if resp.StatusCode != http.StatusOK {
		_, err = io.Copy(io.Discard, resp.Body)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			err = nil // the status says enough
		}
		return "", fmt.Sprintf("status %d", resp.StatusCode), err
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", cutCause(err), err
	}
	rest, err := io.Copy(io.Discard, br)
	if err != nil {
		return "", cutCause(err), err
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != j.id {
		return "", "answer for another request", nil
	}
	want := fmt.Sprintf("%d %08x", len(j.body), crc32.ChecksumIEEE(j.body))
	if f[2]+" "+f[3] != want {
		return f[1], "the worker saw another body", nil
	}
	if rest != int64(j.out) {
		return f[1], "response of the wrong length", nil
	}
	return f[1], "", nil
}

func cutCause(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return ""
	}
	return causeCut
}

// clientCause names a transport error briefly, so that alike ones count
// together.
func clientCause(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return causeReset
	case errors.Is(err, syscall.EPIPE):
		return causePipe
	case errors.Is(err, syscall.ECONNREFUSED):
		return "client: connection refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return causeEOF
	case errors.Is(err, net.ErrClosed):
		return causeClosed
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return "client: " + s
}
