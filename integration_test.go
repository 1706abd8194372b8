package reversehttp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

const basicConfig = `{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`

// echoHandler answers with what it saw, so tests can check what reached
// the worker.
func echoHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s host=%s body=%s\n", r.Method, r.URL.RequestURI(), r.Host, body)
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Request-Id", "X-Custom", "X-Hop", "Expect", "Connection"} {
			fmt.Fprintf(w, "%s=%s\n", k, strings.Join(r.Header.Values(k), ","))
		}
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.Header().Set("X-From-Worker", "yes")
		w.Header().Set("Location", "/elsewhere")
		code := 201
		fmt.Sscan(r.URL.Query().Get("code"), &code)
		w.WriteHeader(code)
		if code != http.StatusNoContent && code != http.StatusNotModified {
			io.WriteString(w, "status body")
		}
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "data")
		w.Header().Set("X-Checksum", "abc123")
	})
	mux.HandleFunc("/sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	return mux
}

func TestProxyRequestAndResponse(t *testing.T) {
	h := newHub(t, basicConfig)
	startWorker(t, h, "jobs", "secret", 2, echoHandler())

	t.Run("get", func(t *testing.T) {
		req, _ := http.NewRequest("GET", h.site+"/echo?a=1&b=%20x", nil)
		req.Host = "media.example.com"
		req.Header.Set("X-Custom", "kept")
		req.Header.Set("X-Hop", "dropped")
		req.Header.Set("Connection", "X-Hop")
		resp, body := h.do(req)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		for _, want := range []string{
			"GET /echo?a=1&b=%20x host=media.example.com body=\n",
			"X-Forwarded-For=127.0.0.1\n",
			"X-Forwarded-Host=media.example.com\n",
			"X-Forwarded-Proto=http\n",
			"X-Custom=kept\n",
			"X-Hop=\n",
			"Expect=\n",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("worker saw:\n%s\nmissing %q", body, want)
			}
		}
		if !strings.Contains(body, "X-Request-Id=") || strings.Contains(body, "X-Request-Id=\n") {
			t.Errorf("the job carries no X-Request-Id:\n%s", body)
		}
	})

	t.Run("request id kept", func(t *testing.T) {
		req, _ := http.NewRequest("GET", h.site+"/echo", nil)
		req.Header.Set("X-Request-Id", "consumer-id-7")
		_, body := h.do(req)
		if !strings.Contains(body, "X-Request-Id=consumer-id-7\n") {
			t.Errorf("consumer's request id not passed on:\n%s", body)
		}
	})

	t.Run("post", func(t *testing.T) {
		req, _ := http.NewRequest("POST", h.site+"/echo", strings.NewReader("payload"))
		resp, body := h.do(req)
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "POST /echo host=") || !strings.Contains(body, "body=payload\n") {
			t.Fatalf("status %d body:\n%s", resp.StatusCode, body)
		}
	})

	t.Run("consumer expects 100-continue", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(h.site, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(conn)
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
			t.Fatalf("first line %q, %v; want 100 Continue", line, err)
		}
		br.ReadString('\n') // blank line after the 100
		io.WriteString(conn, "hello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "body=hello\n") {
			t.Fatalf("worker saw %s", body)
		}
	})

	for _, tc := range []struct {
		code     int
		wantBody string
	}{
		{201, "status body"},
		{303, "status body"},
		{404, "status body"},
		{204, ""},
		{304, ""},
	} {
		t.Run(fmt.Sprintf("status %d", tc.code), func(t *testing.T) {
			resp, body := h.get(fmt.Sprintf("/status?code=%d", tc.code))
			if resp.StatusCode != tc.code || body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.code, tc.wantBody)
			}
			if got := resp.Header.Values("Set-Cookie"); len(got) != 2 || resp.Header.Get("X-From-Worker") != "yes" {
				t.Errorf("headers not passed through: %v", resp.Header)
			}
			if resp.Header.Get("Location") != "/elsewhere" {
				t.Errorf("Location %q", resp.Header.Get("Location"))
			}
		})
	}

	t.Run("head", func(t *testing.T) {
		req, _ := http.NewRequest("HEAD", h.site+"/status?code=200", nil)
		resp, body := h.do(req)
		if resp.StatusCode != 200 || body != "" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})

	t.Run("trailer", func(t *testing.T) {
		resp, body := h.get("/trailer")
		if body != "data" || resp.Trailer.Get("X-Checksum") != "abc123" {
			t.Fatalf("body %q trailer %v", body, resp.Trailer)
		}
	})

	t.Run("upgrade refused", func(t *testing.T) {
		req, _ := http.NewRequest("GET", h.site+"/echo", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		resp, _ := h.do(req)
		if resp.StatusCode != http.StatusNotImplemented {
			t.Fatalf("got %d, want 501", resp.StatusCode)
		}
	})

	t.Run("large post", func(t *testing.T) {
		data := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
		sum := sha256.Sum256(data)
		req, _ := http.NewRequest("POST", h.site+"/sha256", bytes.NewReader(data))
		resp, body := h.do(req)
		want := fmt.Sprintf("%d %s", len(data), hex.EncodeToString(sum[:]))
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
	})
}

// TestKeepAlive checks that one worker connection carries many jobs.
func TestKeepAlive(t *testing.T) {
	h := newHub(t, basicConfig)
	var mu sync.Mutex
	seen := map[string]int{}
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.RemoteAddr]++
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	for i := range 20 {
		if resp, body := h.get("/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 {
		t.Fatalf("jobs arrived over %d connections, want 1: %v", len(seen), seen)
	}
}

// TestStreaming checks that bodies flow both ways while the job runs.
func TestStreaming(t *testing.T) {
	h := newHub(t, basicConfig)
	gotFirstLine := make(chan string, 1)
	release := make(chan struct{})
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/down":
			io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			<-release
			io.WriteString(w, "second\n")
		case "/up":
			line, _ := bufio.NewReader(r.Body).ReadString('\n')
			gotFirstLine <- line
			io.WriteString(w, "read "+line)
		}
	}))

	t.Run("response", func(t *testing.T) {
		resp, err := testClient.Get(h.site + "/down")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		if line, err := br.ReadString('\n'); err != nil || line != "first\n" {
			t.Fatalf("first line %q, %v", line, err)
		}
		close(release) // the worker finishes only after the consumer saw the first line
		if rest, err := io.ReadAll(br); err != nil || string(rest) != "second\n" {
			t.Fatalf("rest %q, %v", rest, err)
		}
	})

	t.Run("request", func(t *testing.T) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", h.site+"/up", pr)
		respc := make(chan *http.Response, 1)
		go func() {
			resp, err := testClient.Do(req)
			if err != nil {
				t.Error(err)
				close(respc)
				return
			}
			respc <- resp
		}()
		io.WriteString(pw, "line one\n")
		select {
		case line := <-gotFirstLine:
			if line != "line one\n" {
				t.Fatalf("worker read %q", line)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the worker did not get the first line while the upload was still open")
		}
		pw.Close()
		resp := <-respc
		if resp == nil {
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "read line one\n" {
			t.Fatalf("body %q", body)
		}
	})
}

// TestHandshakeRejections checks that workers with bad credentials or a bad
// handshake are told why and never enter the pool.
func TestHandshakeRejections(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	for _, tc := range []struct {
		name, pool, token string
		status            int
	}{
		{"no token", "jobs", "", http.StatusUnauthorized},
		{"wrong token", "jobs", "guess", http.StatusForbidden},
		{"unknown pool", "nope", "secret", http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := worker.Run(ctx, worker.Config{
				Hub: h.worker, Pool: tc.pool, Token: tc.token, Handler: http.NotFoundHandler(),
				Logger: slog.New(slog.DiscardHandler),
			})
			var he *worker.HandshakeError
			if !errors.As(err, &he) || he.Status != tc.status {
				t.Fatalf("got %v, want a handshake error with status %d", err, tc.status)
			}
		})
	}
	t.Run("not a handshake", func(t *testing.T) {
		conn, err := net.Dial("tcp", h.worker)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("got %d, want 400", resp.StatusCode)
		}
	})
	if s := p.Stats(); s.Idle+s.Busy != 0 {
		t.Fatalf("rejected workers entered the pool: %+v", s)
	}
}

// TestQueueLimits checks the 503s of a full queue and of a queue timeout.
func TestQueueLimits(t *testing.T) {
	h := newHub(t, `{
	reverse_http {
		pool jobs {
			listen {workers}
			max_queue 1
			queue_timeout 30s
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs {
		queue_timeout 300ms
	}
}`)
	p := livePool(t, "jobs")

	// With no worker at all, a request waits out the queue timeout.
	start := time.Now()
	resp, _ := h.get("/")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("503 after %v, before the route's queue timeout", waited)
	}

	// One waits in the queue; the next finds it full and gets 503 at once.
	done := make(chan int, 1)
	go func() {
		resp, err := testClient.Get(h.site + "/")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, "a queued request", func() bool { return p.Stats().Waiting == 1 })
	resp, _ = h.get("/")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("full queue: got %d, want 503 with Retry-After", resp.StatusCode)
	}
	select {
	case code := <-done:
		t.Fatalf("the queued request ended (%d) before the full-queue 503: that 503 was a queue timeout", code)
	default:
	}
	if code := <-done; code != http.StatusServiceUnavailable {
		t.Fatalf("queued request: got %d, want 503 after its timeout", code)
	}
}

// TestQueuedUntilWorkerArrives checks that a request waits for a worker that
// connects later.
func TestQueuedUntilWorkerArrives(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	done := make(chan string, 1)
	go func() {
		resp, err := testClient.Get(h.site + "/echo")
		if err != nil {
			done <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- fmt.Sprint(resp.StatusCode, " ", strings.SplitN(string(body), "\n", 2)[0])
	}()
	waitFor(t, "a queued request", func() bool { return p.Stats().Waiting == 1 })
	startWorker(t, h, "jobs", "secret", 1, echoHandler())
	if got := <-done; !strings.HasPrefix(got, "200 GET /echo") {
		t.Fatalf("got %q", got)
	}
}

// TestCancellation checks both cases: a consumer that leaves while queued
// is never dispatched; one that leaves mid-job cancels the worker's job.
func TestCancellation(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	started := make(chan string, 10)
	cancelled := make(chan string, 10)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		select {
		case <-r.Context().Done():
			cancelled <- r.URL.Path
		case <-time.After(20 * time.Second):
		}
	})
	startWorker(t, h, "jobs", "secret", 1, handler)

	ctx1, cancel1 := context.WithCancel(context.Background())
	go func() {
		req, _ := http.NewRequestWithContext(ctx1, "GET", h.site+"/running", nil)
		if resp, err := testClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if got := <-started; got != "/running" {
		t.Fatalf("started %s", got)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() {
		req, _ := http.NewRequestWithContext(ctx2, "GET", h.site+"/queued", nil)
		if resp, err := testClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "a queued request", func() bool { return p.Stats().Waiting == 1 })
	cancel2()
	waitFor(t, "the queue to empty", func() bool { return p.Stats().Waiting == 0 })

	cancel1()
	select {
	case got := <-cancelled:
		if got != "/running" {
			t.Fatalf("cancelled %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running job was not cancelled when its consumer left")
	}
	select {
	case got := <-started:
		t.Fatalf("%s was dispatched after its consumer left", got)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestSlotsNeverOverbooked sends many concurrent requests to two workers
// with two slots each and counts at the handler: no worker runs more jobs
// than its slots, every slot gets used, and whenever requests wait the pool
// has no idle connection that is ready (one whose response has just ended
// waits for its worker to offer it again).
func TestSlotsNeverOverbooked(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	const slots, workers, requests = 2, 2, 60
	var running [workers]atomic.Int32
	var peak [workers]atomic.Int32
	var total atomic.Int32
	var peakAll atomic.Int32
	var all atomic.Int32
	bump := func(peak *atomic.Int32, n int32) {
		for old := peak.Load(); n > old && !peak.CompareAndSwap(old, n); old = peak.Load() {
		}
	}
	for i := range workers {
		startWorker(t, h, "jobs", "secret", slots, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			bump(&peak[i], running[i].Add(1))
			bump(&peakAll, all.Add(1))
			time.Sleep(10 * time.Millisecond)
			all.Add(-1)
			running[i].Add(-1)
			total.Add(1)
			io.WriteString(w, "done")
		}))
	}

	stopSampling := make(chan struct{})
	violations := make(chan PoolStats, 1)
	go func() {
		for {
			select {
			case <-stopSampling:
				close(violations)
				return
			default:
			}
			if s := p.Stats(); s.Waiting > 0 && s.Idle-s.NotReady > 0 {
				select {
				case violations <- s:
				default:
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()

	var wg sync.WaitGroup
	var failed atomic.Int32
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := testClient.Get(h.site + "/")
			if err != nil {
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stopSampling)
	if v, ok := <-violations; ok {
		t.Errorf("requests waited while a connection was idle: %+v", v)
	}
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if total.Load() != requests {
		t.Fatalf("handlers ran %d jobs for %d requests", total.Load(), requests)
	}
	for i := range workers {
		if peak[i].Load() > slots {
			t.Errorf("worker %d ran %d jobs at once with %d slots", i, peak[i].Load(), slots)
		}
	}
	if peakAll.Load() != slots*workers {
		t.Errorf("at most %d jobs ran at once; all %d slots should have been busy", peakAll.Load(), slots*workers)
	}
}

// TestResponseTimeout checks that response_timeout bounds the wait for a
// response to begin (504), not the length of a response that has begun.
func TestResponseTimeout(t *testing.T) {
	h := newHub(t, strings.Replace(basicConfig, "token secret", "token secret\n\t\t\tresponse_timeout 300ms", 1))
	cancelled := make(chan struct{}, 1)
	startWorker(t, h, "jobs", "secret", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow-start":
			select {
			case <-r.Context().Done():
				cancelled <- struct{}{}
			case <-time.After(5 * time.Second):
			}
		case "/slow-body":
			io.WriteString(w, "begun ")
			w.(http.Flusher).Flush()
			time.Sleep(600 * time.Millisecond)
			io.WriteString(w, "and done")
		}
	}))
	if resp, _ := h.get("/slow-start"); resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("slow start: got %d, want 504", resp.StatusCode)
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the timed-out job was not cancelled at the worker")
	}
	if resp, body := h.get("/slow-body"); resp.StatusCode != 200 || body != "begun and done" {
		t.Fatalf("slow body: got %d %q", resp.StatusCode, body)
	}
}
