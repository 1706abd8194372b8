package reversehttp

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/reversehttp/reverse_http/worker"
)

// Regression tests for the defects of issue 7 that live in the pool and the
// transport; each failed before its fix.

// rawWorkerAnswer has a raw worker on h read one job and write reply.
func rawWorkerAnswer(t *testing.T, h *hub, reply func(w io.Writer)) {
	t.Helper()
	conn, br := rawWorker(t, h)
	waitFor(t, "the raw worker's connection", func() bool { return livePool(t, "jobs").Stats().Idle >= 1 })
	go func() {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		reply(conn)
	}()
}

// TestResponseHeadIsBounded has a worker send a response head larger than
// the pool's bound (the default, 10 MiB, as reverse_proxy's): the consumer
// gets 502, and the head is neither buffered whole nor forwarded.
func TestResponseHeadIsBounded(t *testing.T) {
	h := newHub(t, basicConfig)
	rawWorkerAnswer(t, h, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 200 OK\r\nX-Big: ")
		chunk := strings.Repeat("a", 64<<10)
		for range (DefaultMaxResponseHeader / len(chunk)) + 16 {
			if _, err := io.WriteString(w, chunk); err != nil {
				return // the hub gave up, as it should
			}
		}
		io.WriteString(w, "\r\nContent-Length: 2\r\n\r\nok")
	})
	if resp, body := h.get("/"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d (%d bytes of body); want 502 for a head over the bound", resp.StatusCode, len(body))
	}
}

// TestInformationalResponsesAreBounded has a worker send more 1xx responses
// than a job may relay before its final one: the consumer gets the ones
// allowed, then 502.
func TestInformationalResponsesAreBounded(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want int
	}{{max1xxResponses, http.StatusOK}, {max1xxResponses + 1, http.StatusBadGateway}} {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) {
			h := newHub(t, basicConfig)
			rawWorkerAnswer(t, h, func(w io.Writer) {
				io.WriteString(w, strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", tc.n)+
					"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			})
			// A raw consumer: Go's client gives up after five 1xx.
			conn, err := net.Dial("tcp", strings.TrimPrefix(h.site, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			br := bufio.NewReader(conn)
			for hints := 0; ; hints++ {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode == http.StatusEarlyHints {
					continue
				}
				if resp.StatusCode != tc.want {
					t.Fatalf("final status %d after %d hints; want %d", resp.StatusCode, hints, tc.want)
				}
				return
			}
		})
	}
}

// TestStartedPostRunsOnce sends a POST to a worker whose handler starts the
// job without reading the body, then dies: the job may have run, so it must
// not run on the second worker; the consumer gets 502.
func TestStartedPostRunsOnce(t *testing.T) {
	h := newHub(t, basicConfig)
	var ran atomic.Int32
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		// The worker dies mid-job: its connection closes under the handler.
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	}))
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ran again")
	}))
	req, _ := http.NewRequest(http.MethodPost, h.site+"/", strings.NewReader("payload"))
	resp, body := h.do(req)
	if resp.StatusCode != http.StatusBadGateway || ran.Load() != 1 {
		t.Fatalf("got %d %q with the job run %d times; want 502 and once", resp.StatusCode, body, ran.Load())
	}
}

// TestDeclinesHonourDeadlineAndCap has every worker decline every job: a
// request is offered to at most max_attempts of them and ends within its
// queue timeout, with 503.
func TestDeclinesHonourDeadlineAndCap(t *testing.T) {
	h := newHub(t, strings.Replace(basicConfig, "token secret", "token secret\n\t\t\tqueue_timeout 1s", 1))
	var offers atomic.Int32
	decliner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		offers.Add(1)
		worker.Decline(w)
	})
	startWorker(t, h, "jobs", "secret", 2, decliner)
	startWorker(t, h, "jobs", "secret", 2, decliner)
	start := time.Now()
	resp, _ := h.get("/")
	took := time.Since(start)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d; want 503 with Retry-After", resp.StatusCode)
	}
	if n := offers.Load(); n > DefaultMaxAttempts {
		t.Fatalf("the request was offered %d times; want at most max_attempts (%d)", n, DefaultMaxAttempts)
	}
	if took > 3*time.Second {
		t.Fatalf("the request took %v; want it to end within its 1s queue timeout", took)
	}
}

// TestRetryPrefersAnotherWorker has the oldest idle connections belong to a
// worker that declines: a declined request goes next to another worker's
// connection, not to the same worker's other one.
func TestRetryPrefersAnotherWorker(t *testing.T) {
	h := newHub(t, basicConfig)
	var declined atomic.Int32
	startWorker(t, h, "jobs", "secret", 3, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		declined.Add(1)
		worker.Decline(w)
	}))
	good := startWorkerNamed(t, h, "good", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "done")
	}))
	defer good()
	if resp, body := h.get("/"); resp.StatusCode != 200 || body != "done" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if n := declined.Load(); n != 1 {
		t.Fatalf("the declining worker was offered the job %d times; want once", n)
	}
}

// startWorkerNamed is startWorker with another worker name.
func startWorkerNamed(t *testing.T, h *hub, name string, slots int, handler http.Handler) func() {
	t.Helper()
	p := livePool(t, "jobs")
	before := p.Stats()
	stop := runWorker(t, worker.Config{Hub: h.worker, Pool: "jobs", Token: "secret", Slots: slots, Name: name, Handler: handler})
	waitFor(t, "the worker's connections", func() bool {
		s := p.Stats()
		return s.Idle+s.Busy >= before.Idle+before.Busy+slots
	})
	return stop
}

// TestResponseTimeoutAfterUpload sends an upload that takes longer than the
// response timeout while the worker reads it throughout: the clock starts
// once the request is written, so the job succeeds.
func TestResponseTimeoutAfterUpload(t *testing.T) {
	h := newHub(t, strings.Replace(basicConfig, "token secret", "token secret\n\t\t\tresponse_timeout 500ms", 1))
	startWorker(t, h, "jobs", "secret", 1, echoHandler())
	pr, pw := io.Pipe()
	go func() {
		for range 12 {
			time.Sleep(100 * time.Millisecond)
			pw.Write([]byte("x"))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, h.site+"/echo", pr)
	resp, body := h.do(req)
	if resp.StatusCode != 200 || !strings.Contains(body, "body=xxxxxxxxxxxx\n") {
		t.Fatalf("got %d %q; want 200 with the whole body", resp.StatusCode, body)
	}
}

// TestGoneConsumerWithBodyNotDispatched queues a POST whose body has been
// sent, then has its consumer hang up: when a worker comes, the POST must
// not reach it; the next request does.
func TestGoneConsumerWithBodyNotDispatched(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.site, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload")
	waitFor(t, "the POST to queue", func() bool { return p.Stats().Waiting == 1 })
	conn.Close()

	var mu sync.Mutex
	var seen []string
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		io.Copy(io.Discard, r.Body)
	}))
	if resp, _ := h.get("/after"); resp.StatusCode != 200 {
		t.Fatalf("the next request got %d", resp.StatusCode)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != "/after" {
		t.Fatalf("the worker saw %q; want only /after", seen)
	}
}

// TestHTTP3GetHasNoBody sends GETs over HTTP/3, whose requests have an
// unknown length: they reach the worker without a body or an
// expectation, and one whose worker dies mid-job is not run again.
func TestHTTP3GetHasNoBody(t *testing.T) {
	h := newHub(t, `{
	local_certs
	servers {
		protocols h1 h2 h3
	}
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
		}
	}
}
https://localhost:{siteport} {
	bind 127.0.0.1
	tls internal
	reverse_http jobs
}`)
	// Two workers that die on /die: a job run again would count twice.
	var ran atomic.Int32
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/die" {
			ran.Add(1)
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		fmt.Fprintf(w, "expect=%q te=%q length=%d", r.Header.Get("Expect"), r.TransferEncoding, r.ContentLength)
	})
	startWorker(t, h, "jobs", "secret", 1, handler)
	startWorker(t, h, "jobs", "secret", 1, handler)
	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	base := strings.Replace(h.site, "http://", "https://", 1)
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Host = "localhost" // the site's name; the address is 127.0.0.1
		return client.Do(req)
	}

	// Caddy obtains the site's certificate from its internal CA in the
	// background: until it has one, handshakes fail.
	var resp *http.Response
	var err error
	waitFor(t, "the site's certificate", func() bool {
		resp, err = get("/echo")
		return err == nil
	})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 3 {
		t.Fatalf("the request went over %s, not HTTP/3", resp.Proto)
	}
	if resp.StatusCode != 200 || string(body) != `expect="" te=[] length=0` {
		t.Fatalf("got %d %q; want a bodiless GET at the worker", resp.StatusCode, body)
	}

	resp, err = get("/die")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || ran.Load() != 1 {
		t.Fatalf("got %d %q with the job run %d times; want 502 and once", resp.StatusCode, body, ran.Load())
	}
}
