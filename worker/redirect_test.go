package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// redirectListener listens on loopback for a worker's out-of-band
// responses.
func redirectListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// redirectedJob sends a job on s and returns the 303's Location.
func redirectedJob(t *testing.T, s *hubSide, path string) string {
	t.Helper()
	resp, body := s.send(t, get(path))
	if resp.StatusCode != http.StatusSeeOther || body != "" || !resp.Close {
		t.Fatalf("job %s: %d %q, close %v; want 303, empty, Connection: close", path, resp.StatusCode, body, resp.Close)
	}
	return resp.Header.Get("Location")
}

// setTunable sets a tunable for the test.
func setTunable(t *testing.T, p *time.Duration, d time.Duration) {
	old := *p
	*p = d
	t.Cleanup(func() { *p = old })
}

var noRedirectClient = &http.Client{
	Timeout:       waitLimit,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// TestRedirectDefaultURL: without a PublicURL the Location names the
// worker's own address on the hub connection and the listener's port, as
// POTHEAD does. The hub closing the connection after the 303 does not end
// the job, and the handler's trailers reach the consumer.
func TestRedirectDefaultURL(t *testing.T) {
	hub := newTestHub(t)
	ln := redirectListener(t)
	startWorker(t, hub, Config{Redirect: &Redirect{Listener: ln}, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "hello, ")
		w.(http.Flusher).Flush()
		io.WriteString(w, "consumer")
		w.Header().Set("X-Sum", "42")
	})})
	s := hub.next(t)
	loc := redirectedJob(t, s, "/x")
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if want := "http://127.0.0.1:" + port + "/"; !strings.HasPrefix(loc, want) {
		t.Fatalf("Location %q, want one under %s", loc, want)
	}
	s.c.Close()
	resp, err := noRedirectClient.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "hello, consumer" || resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("consumer got %q (%v), trailer %q; want the body and X-Sum: 42", body, err, resp.Trailer.Get("X-Sum"))
	}
}

// TestRedirectCutShort: a job that fails after its header leaves the
// consumer with an error, never with a body that looks complete.
func TestRedirectCutShort(t *testing.T) {
	hub := newTestHub(t)
	ln := redirectListener(t)
	startWorker(t, hub, Config{Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "the start")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		})})
	loc := redirectedJob(t, hub.next(t), "/x")
	resp, err := noRedirectClient.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Errorf("consumer read %q and a clean end, want an error", body)
	}
}

// TestRedirectConsumerLeaves: a consumer that goes away mid-transfer ends
// the job (its context), and frees the slot.
func TestRedirectConsumerLeaves(t *testing.T) {
	hub := newTestHub(t)
	ln := redirectListener(t)
	ended := make(chan error, 1)
	startWorker(t, hub, Config{DrainTimeout: 300 * time.Millisecond, Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "first")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			ended <- r.Context().Err()
		})})
	loc := redirectedJob(t, hub.next(t), "/x")
	resp, err := noRedirectClient.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("first bytes: %q, %v", buf, err)
	}
	resp.Body.Close()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("job context: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the job went on after its consumer left")
	}
	// The slot is free again: the next connection's job runs.
	if resp, _ := hub.next(t).send(t, get("/y")); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("next job: %d, want 303", resp.StatusCode)
	}
}

// TestRedirectStalledConsumer: a consumer that stops reading is cut off
// after redirectStallTimeout without progress, and the job ends.
func TestRedirectStalledConsumer(t *testing.T) {
	setTunable(t, &redirectStallTimeout, 200*time.Millisecond)
	hub := newTestHub(t)
	ln := redirectListener(t)
	ended := make(chan error, 1)
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	startWorker(t, hub, Config{Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for range 512 { // far more than socket buffers hold
				if _, err := w.Write(chunk); err != nil {
					ended <- err
					return
				}
			}
			ended <- nil
		})})
	loc := redirectedJob(t, hub.next(t), "/x")
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: w\r\n\r\n", loc[strings.LastIndexByte(loc, '/'):])
	// Read nothing.
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the job wrote 512 MiB to a consumer that reads nothing")
		}
	case <-time.After(3 * waitLimit):
		t.Fatal("a stalled consumer was not cut off")
	}
}

// TestRedirectListenerLimits: a request header that is too slow, or too
// large, is refused before it reaches any key.
func TestRedirectListenerLimits(t *testing.T) {
	setTunable(t, &redirectHeaderTimeout, 200*time.Millisecond)
	hub := newTestHub(t)
	ln := redirectListener(t)
	startWorker(t, hub, Config{Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()}, Handler: pathHandler()})
	addr := ln.Addr().String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /abc HTTP/1.1\r\nHost: w\r\n") // never ends
	c.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("slow header: %v, want the connection closed", err)
	}

	big, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/abc", nil)
	big.Header.Set("X-Big", strings.Repeat("b", redirectMaxHeaderBytes+4096+1))
	resp, err := noRedirectClient.Do(big)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("large header: %d, want 431", resp.StatusCode)
	}
	// Just under the limit is an ordinary (unknown) key.
	ok, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/abc", nil)
	ok.Header.Set("X-Big", strings.Repeat("b", redirectMaxHeaderBytes-200))
	if resp, err = noRedirectClient.Do(ok); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("header under the limit: %d, want 404", resp.StatusCode)
	}

	withBody, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/abc", strings.NewReader("body"))
	if resp, err = noRedirectClient.Do(withBody); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("GET with a body: %d, close %v; want 400 and the connection closed", resp.StatusCode, resp.Close)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestRedirectDrain: a drain waits for a key that waits for its consumer,
// which may still fetch it; past the drain timeout, one that nobody
// fetches is given up and Run returns.
func TestRedirectDrain(t *testing.T) {
	for _, fetch := range []bool{true, false} {
		t.Run(fmt.Sprint("fetch=", fetch), func(t *testing.T) {
			hub := newTestHub(t)
			ln := redirectListener(t)
			w := startWorker(t, hub, Config{DrainTimeout: 500 * time.Millisecond,
				Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()}, Handler: pathHandler()})
			loc := redirectedJob(t, hub.next(t), "/x")
			w.cancel()
			select {
			case err := <-w.done:
				w.done <- err
				t.Fatalf("Run returned (%v) while a key waited", err)
			default:
			}
			if fetch {
				resp, err := noRedirectClient.Get(loc)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "job /x" {
					t.Errorf("fetch during the drain: %d %q", resp.StatusCode, body)
				}
			}
			if err := w.wait(t); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// TestRedirectConfigErrors: New refuses settings that cannot work.
func TestRedirectConfigErrors(t *testing.T) {
	ln := redirectListener(t)
	defer ln.Close()
	for _, rd := range []Redirect{
		{},
		{Listener: ln, PublicURL: "ftp://host/"},
		{Listener: ln, PublicURL: "/relative"},
		{Listener: ln, PublicURL: "http://host/?q=1"},
		{Listener: ln, TTL: -time.Second},
		{Listener: ln, MinSize: -1},
	} {
		if _, err := New(Config{Hub: "127.0.0.1:1", Pool: "p", Handler: pathHandler(), Redirect: &rd}); err == nil {
			t.Errorf("%+v: no error", rd)
		}
	}
	// A listener without a port cannot make its own URLs.
	unix, err := net.Listen("unix", t.TempDir()+"/oob.sock")
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Hub: "127.0.0.1:1", Pool: "p", Handler: pathHandler(), Logger: testLogger(t), Redirect: &Redirect{Listener: unix}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "set a public URL") {
		t.Errorf("Run with a unix listener and no public URL: %v", err)
	}
}

// TestRedirectKeys: keys verify only unchanged, carry their expiry, and
// differ each time.
func TestRedirectKeys(t *testing.T) {
	rd, err := newRedirector(Redirect{Addr: "127.0.0.1:0"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newRedirector(Redirect{Addr: "127.0.0.1:0"}, testLogger(t))
	exp := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	k := rd.newKey(exp)
	if got, ok := rd.verify(k); !ok || !got.Equal(exp) {
		t.Fatalf("verify: %v %v, want %v true", got, ok, exp)
	}
	if k2 := rd.newKey(exp); k2 == k {
		t.Error("two keys alike")
	}
	if _, ok := other.verify(k); ok {
		t.Error("another worker's secret verified the key")
	}
	for i := range len(k) {
		b := []byte(k)
		b[i] = 'A' + (b[i]-'A'+1)%26
		if b[i] == k[i] {
			b[i] = 'z'
		}
		if _, ok := rd.verify(string(b)); ok {
			t.Errorf("key changed at %d verified", i)
		}
	}
	if _, ok := rd.verify(k + "A"); ok {
		t.Error("a longer key verified")
	}
}

// TestRedirectTwoAtOnce: two slots redirect a response each; fetched in
// the other order, each key gets its own job's body.
func TestRedirectTwoAtOnce(t *testing.T) {
	hub := newTestHub(t)
	ln := redirectListener(t)
	startWorker(t, hub, Config{Slots: 2, Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()}, Handler: pathHandler()})
	a, b := hub.next(t), hub.next(t)
	locA := redirectedJob(t, a, "/a")
	locB := redirectedJob(t, b, "/b")
	for _, c := range []struct{ loc, want string }{{locB, "job /b"}, {locA, "job /a"}} {
		resp, err := noRedirectClient.Get(c.loc)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != c.want {
			t.Errorf("GET %s: %d %q, want 200 %q", c.loc, resp.StatusCode, body, c.want)
		}
	}
}

// TestRedirectSlowConsumer: a consumer that reads slowly but steadily is
// not cut off, even where one write of the job's is far more than it
// reads within redirectStallTimeout.
func TestRedirectSlowConsumer(t *testing.T) {
	setTunable(t, &redirectStallTimeout, 500*time.Millisecond)
	hub := newTestHub(t)
	ln := redirectListener(t)
	const n = 32 << 20
	startWorker(t, hub, Config{Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(n))
			w.Write(make([]byte, n)) // one write
		})})
	loc := redirectedJob(t, hub.next(t), "/x")
	resp, err := noRedirectClient.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 256<<10)
	got := 0
	for {
		m, err := io.ReadFull(resp.Body, buf)
		got += m
		if err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond) // about 25 MB/s at most
	}
	if got != n {
		t.Errorf("a slow consumer got %d of %d bytes", got, n)
	}
}

// TestRedirectHoldsSlotAcrossHubs: one slot, two hubs with readiness.
// While a redirected response waits for its consumer, the slot is taken:
// the other hub's offer is withdrawn and a job it sends anyway is
// declined; once the consumer has the body, the slot is offered again.
func TestRedirectHoldsSlotAcrossHubs(t *testing.T) {
	a, b := newReadyHub(t), newReadyHub(t)
	ln := redirectListener(t)
	rw := startWorker(t, a, Config{Hubs: []string{b.addr()}, Handler: pathHandler(),
		Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()}})
	sa, sb := a.next(t), b.next(t)
	eventually(t, "2 connections", func() bool { return rw.Connected() == 2 })
	st := readiness{}
	eventually(t, "the slot offered to both hubs", func() bool {
		st.update(t, sa, sb)
		return st[sa] == FrameReady && st[sb] == FrameReady
	})

	loc := redirectedJob(t, sa, "/a")
	eventually(t, "B's offer withdrawn", func() bool { st.update(t, sb); return st[sb] == FrameNotReady })
	resp, _ := sb.send(t, get("/b"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(DeclinedHeader) != "1" {
		t.Fatalf("B's job while the slot is held: %d, want a decline", resp.StatusCode)
	}
	st[sb] = FrameNotReady
	sb.expectQuiet(t, 100*time.Millisecond) // no offer while the key waits

	r, err := noRedirectClient.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || string(body) != "job /a" {
		t.Fatalf("GET Location: %d %q", r.StatusCode, body)
	}
	eventually(t, "the slot offered to B again", func() bool { st.update(t, sb); return st[sb] == FrameReady })
}

// TestRedirectInlineTrailers: a response that goes through the hub keeps
// the trailers its handler sets in the header map it took before
// WriteHeader.
func TestRedirectInlineTrailers(t *testing.T) {
	hub := newTestHub(t)
	ln := redirectListener(t)
	startWorker(t, hub, Config{Redirect: &Redirect{Listener: ln, PublicURL: "http://" + ln.Addr().String()},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Trailer", "X-Sum")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "made")
			h.Set("X-Sum", "7")
			h.Set(http.TrailerPrefix+"X-Late", "8")
		})})
	resp, body := hub.next(t).send(t, get("/x"))
	if resp.StatusCode != http.StatusCreated || body != "made" || resp.Trailer.Get("X-Sum") != "7" || resp.Trailer.Get("X-Late") != "8" {
		t.Errorf("inline response: %d %q, trailers %v; want 201 made, X-Sum: 7, X-Late: 8", resp.StatusCode, body, resp.Trailer)
	}
}
