package reversehttp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// coalesceHub is a hub whose route coalesces, with options in its block.
func coalesceHub(t *testing.T, options string) *hub {
	t.Helper()
	return shareHub(t, "coalesce {\n\t\t\t"+options+"\n\t\t}")
}

// shareHub is a hub with one open pool (a queue timeout of 30 s) and one
// route to it, whose handler block holds opts.
func shareHub(t *testing.T, opts string) *hub {
	t.Helper()
	return newHub(t, `{
	reverse_http {
		pool jobs {
			listen {workers}
			queue_timeout 30s
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs {
		`+opts+`
	}
}`)
}

// gatedApp is a worker's app that counts its jobs and holds each until
// released, then answers with body.
type gatedApp struct {
	jobs      atomic.Int64
	cancelled atomic.Int64
	release   chan struct{}
	body      []byte
}

func newGatedApp(body []byte) *gatedApp {
	return &gatedApp{release: make(chan struct{}), body: body}
}

func (a *gatedApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.jobs.Add(1)
	select {
	case <-a.release:
	case <-r.Context().Done():
		a.cancelled.Add(1)
		return
	}
	w.Header().Set("X-App", "gated")
	w.Write(a.body)
}

func testBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

func coalescedCount(t *testing.T) uint64 {
	return livePool(t, "jobs").obs.shared.coalesced.Load()
}

// TestCoalesceIdenticalRequests: concurrent identical GETs run one job at
// the app, and every consumer gets its status, headers and body.
func TestCoalesceIdenticalRequests(t *testing.T) {
	h := coalesceHub(t, "")
	app := newGatedApp(testBody(300 << 10))
	startWorker(t, h, "jobs", "", 4, app)
	want := sha256.Sum256(app.body)

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := testClient.Get(h.site + "/thumb?id=1")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			switch {
			case err != nil:
				errs <- err
			case resp.StatusCode != 200 || resp.Header.Get("X-App") != "gated":
				errs <- fmt.Errorf("status %d, X-App %q", resp.StatusCode, resp.Header.Get("X-App"))
			case sha256.Sum256(body) != want:
				errs <- fmt.Errorf("body of %d bytes differs from the app's", len(body))
			}
		}()
	}
	waitFor(t, "all requests to share one job", func() bool { return coalescedCount(t) == n-1 })
	close(app.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := app.jobs.Load(); got != 1 {
		t.Errorf("the app ran %d jobs for %d identical requests; want 1", got, n)
	}

	// Another URI is another job.
	_, body := h.get("/thumb?id=2")
	if len(body) != len(app.body) || app.jobs.Load() != 2 {
		t.Errorf("a request for another URI got %d bytes; app jobs %d, want 2", len(body), app.jobs.Load())
	}
}

// TestCoalesceNotForPOST: by default requests of unsafe methods each run
// their own job, with or without a body; so do requests with a body when
// their method is coalesced.
func TestCoalesceNotForPOST(t *testing.T) {
	h := coalesceHub(t, "methods GET HEAD PUT")
	app := newGatedApp([]byte("done"))
	startWorker(t, h, "jobs", "", 8, app)
	reqs := []func() (*http.Response, error){
		func() (*http.Response, error) { return testClient.Post(h.site+"/x", "text/plain", nil) },
		func() (*http.Response, error) { return testClient.Post(h.site+"/x", "text/plain", nil) },
		func() (*http.Response, error) {
			return testClient.Post(h.site+"/x", "text/plain", strings.NewReader("a"))
		},
		func() (*http.Response, error) {
			req, _ := http.NewRequest(http.MethodPut, h.site+"/x", strings.NewReader("a"))
			return testClient.Do(req)
		},
		func() (*http.Response, error) {
			req, _ := http.NewRequest(http.MethodPut, h.site+"/x", strings.NewReader("a"))
			return testClient.Do(req)
		},
	}
	var wg sync.WaitGroup
	for _, do := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := do()
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	waitFor(t, "every request to reach the app", func() bool { return app.jobs.Load() == int64(len(reqs)) })
	close(app.release)
	wg.Wait()
	if c := coalescedCount(t); c != 0 {
		t.Errorf("%d requests were coalesced; want none", c)
	}
}

// TestCoalesceFollowersLeave: consumers that go away, the first among
// them, do not cancel the job for one that stays; when the last consumer
// goes away, the job is cancelled at the worker.
func TestCoalesceFollowersLeave(t *testing.T) {
	h := coalesceHub(t, "")
	app, app2 := newGatedApp([]byte("the result")), newGatedApp(nil)
	mux := http.NewServeMux()
	mux.Handle("/a", app)
	mux.Handle("/b", app2)
	startWorker(t, h, "jobs", "", 2, mux)

	type result struct {
		body string
		err  error
	}
	get := func(ctx context.Context, path string, out chan<- result) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.site+path, nil)
		resp, err := testClient.Do(req)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		out <- result{string(b), err}
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	out1, out2, out3 := make(chan result, 1), make(chan result, 1), make(chan result, 1)
	go get(ctx1, "/a", out1)
	waitFor(t, "the first request to reach the app", func() bool { return app.jobs.Load() == 1 })
	go get(ctx2, "/a", out2)
	go get(context.Background(), "/a", out3)
	waitFor(t, "two followers", func() bool { return coalescedCount(t) == 2 })
	cancel1()
	cancel2()
	if r := <-out1; r.err == nil {
		t.Errorf("the first consumer, cancelled, got %q", r.body)
	}
	<-out2
	waitFor(t, "the flight to see them go", func() bool { return livePool(t, "jobs").obs.shared.consumers.Load() == 1 })
	close(app.release)
	if r := <-out3; r.err != nil || r.body != "the result" {
		t.Errorf("the consumer that stayed got %q, %v", r.body, r.err)
	}
	if app.cancelled.Load() != 0 || app.jobs.Load() != 1 {
		t.Errorf("jobs %d, cancelled %d; want 1 job, not cancelled", app.jobs.Load(), app.cancelled.Load())
	}

	// Now every consumer leaves: the job is cancelled.
	ctx3, cancel3 := context.WithCancel(context.Background())
	ctx4, cancel4 := context.WithCancel(context.Background())
	before := coalescedCount(t)
	go get(ctx3, "/b", out1)
	waitFor(t, "the request to reach the app", func() bool { return app2.jobs.Load() == 1 })
	go get(ctx4, "/b", out2)
	waitFor(t, "a follower", func() bool { return coalescedCount(t) == before+1 })
	cancel4()
	<-out2
	cancel3()
	<-out1
	waitFor(t, "the job to be cancelled at the app", func() bool { return app2.cancelled.Load() == 1 })
}

// TestCoalesceWorkerFails: when the shared job's worker fails, every
// consumer gets the same error response, once.
func TestCoalesceWorkerFails(t *testing.T) {
	h := coalesceHub(t, "")
	var jobs atomic.Int64
	release := make(chan struct{})
	startWorker(t, h, "jobs", "", 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jobs.Add(1)
		<-release
		panic(http.ErrAbortHandler) // the worker drops the connection
	}))
	const n = 5
	statuses := make(chan int, n)
	for range n {
		go func() {
			resp, err := testClient.Get(h.site + "/fails")
			if err != nil {
				t.Error(err)
				statuses <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	waitFor(t, "the requests to share a job", func() bool { return coalescedCount(t) == n-1 })
	close(release)
	for range n {
		if s := <-statuses; s != http.StatusBadGateway {
			t.Errorf("status %d; want 502", s)
		}
	}
	if jobs.Load() != 1 {
		t.Errorf("%d jobs; want 1", jobs.Load())
	}
}

// TestCoalesceLateJoiner: a request that arrives after the response's
// head and first bytes were sent still joins the job while the window
// holds the whole response so far, and gets all of it.
func TestCoalesceLateJoiner(t *testing.T) {
	h := coalesceHub(t, "")
	var jobs atomic.Int64
	release := make(chan struct{})
	startWorker(t, h, "jobs", "", 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jobs.Add(1)
		w.Write([]byte("first part;"))
		w.(http.Flusher).Flush()
		<-release
		w.Write([]byte("second part"))
	}))
	resp, err := testClient.Get(h.site + "/late")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first part;"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	late := make(chan string, 1)
	go func() {
		_, body := h.get("/late")
		late <- body
	}()
	waitFor(t, "the late request to join", func() bool { return coalescedCount(t) == 1 })
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if got := string(first) + string(rest); got != "first part;second part" {
		t.Errorf("first consumer got %q", got)
	}
	if got := <-late; got != "first part;second part" {
		t.Errorf("late consumer got %q", got)
	}
	if jobs.Load() != 1 {
		t.Errorf("%d jobs; want 1", jobs.Load())
	}
}

// TestCoalesceSlowConsumer: a consumer that stops reading is cut off
// once it has held the job back, a window behind, for slowGrace, while
// the job and a consumer that reads go on to the end.
func TestCoalesceSlowConsumer(t *testing.T) {
	h := coalesceHub(t, "buffer 64KiB")
	app := newGatedApp(testBody(16 << 20))
	startWorker(t, h, "jobs", "", 1, app)

	// The slow consumer: a small receive buffer, and it reads nothing
	// until the fast one is done.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	slow, err := d.Dial("tcp", strings.TrimPrefix(h.site, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /big HTTP/1.1\r\nHost: %s\r\n\r\n", strings.TrimPrefix(h.site, "http://"))
	waitFor(t, "the slow request to reach the app", func() bool { return app.jobs.Load() == 1 })

	fast := make(chan error, 1)
	go func() {
		resp, err := testClient.Get(h.site + "/big")
		if err != nil {
			fast <- err
			return
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && n != int64(len(app.body)) {
			err = fmt.Errorf("%d bytes of %d", n, len(app.body))
		}
		fast <- err
	}()
	waitFor(t, "the fast request to join", func() bool { return coalescedCount(t) == 1 })
	close(app.release)
	if err := <-fast; err != nil {
		t.Fatalf("the fast consumer: %v", err)
	}
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.Copy(io.Discard, slow)
	if err != nil {
		t.Fatalf("the slow consumer's connection did not end: %v", err)
	}
	if got >= int64(len(app.body)) {
		t.Errorf("the slow consumer got %d bytes, all of the body; want it cut off", got)
	}
	if app.jobs.Load() != 1 {
		t.Errorf("%d jobs; want 1", app.jobs.Load())
	}
}

// blockedWriter is a consumer that never takes what it is written.
type blockedWriter struct {
	header  http.Header
	blocked chan struct{}
}

func (b *blockedWriter) Header() http.Header { return b.header }
func (b *blockedWriter) WriteHeader(int)     {}
func (b *blockedWriter) Write(p []byte) (int, error) {
	<-b.blocked
	return 0, io.ErrClosedPipe
}

// TestFlightWindowBound: the window never holds more than the buffer; a
// consumer that does not read is cut off while one that reads gets all,
// and the job waits only for the fastest.
func TestFlightWindowBound(t *testing.T) {
	g, err := newCoalescer(&CoalesceConfig{Buffer: minCoalesceBuffer}, testPool(1), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	g.mu.Lock()
	f := g.start("k", r)
	fastSub, slowSub := f.join(), f.join()
	g.mu.Unlock()

	fast := httptest.NewRecorder()
	slow := &blockedWriter{header: http.Header{}, blocked: make(chan struct{})}
	defer close(slow.blocked)
	fastDone := make(chan error, 1)
	slowDone := make(chan any, 1)
	go func() { fastDone <- f.relay(fastSub, fast, r, true) }()
	go func() {
		defer func() { slowDone <- recover() }()
		f.relay(slowSub, slow, r, false)
	}()

	body := testBody(1 << 20)
	maxWindow := 0
	go f.run(func(w http.ResponseWriter, _ *http.Request) error {
		for p := body; len(p) > 0; p = p[min(len(p), 10000):] {
			if _, err := w.Write(p[:min(len(p), 10000)]); err != nil {
				return err
			}
			f.mu.Lock()
			maxWindow = max(maxWindow, len(f.buf))
			f.mu.Unlock()
		}
		return nil
	})
	if err := <-fastDone; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fast.Body.Bytes(), body) {
		t.Errorf("the reading consumer got %d bytes of %d", fast.Body.Len(), len(body))
	}
	if int64(maxWindow) > g.limit {
		t.Errorf("the window held %d bytes; the buffer is %d", maxWindow, g.limit)
	}
	f.mu.Lock()
	cut := slowSub.cut
	f.mu.Unlock()
	if !cut {
		t.Error("the consumer that does not read was not cut off")
	}
}
