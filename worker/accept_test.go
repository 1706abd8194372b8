package worker

import (
	"fmt"
	"io"
	"net/http"
	"testing"
)

// newAcceptHub is a test hub whose 101 agrees on FeatureAccept, spelt as a
// hub may spell it.
func newAcceptHub(t *testing.T) *testHub {
	hub := newTestHub(t)
	hub.configure(func(h *testHub) { h.features = "future-thing, Accept" })
	return hub
}

// postExpect writes a job with a 5-byte body held back for 100-continue.
func postExpect(s *hubSide, path string) {
	fmt.Fprintf(s.c, "POST %s HTTP/1.1\r\nHost: job.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", path)
}

// echoBody answers "got <body>".
func echoBody(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	fmt.Fprintf(w, "got %s", b)
}

// TestAcceptBeforeHandler: with the accept feature, 100 Continue comes
// before the handler runs (it is held at its first line until the test has
// the 100), exactly once: reading the body does not send a second one.
func TestAcceptBeforeHandler(t *testing.T) {
	hub := newAcceptHub(t)
	release := make(chan struct{})
	startWorker(t, hub, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		echoBody(w, r)
	})})
	s := hub.next(t)
	for i := range 2 { // twice: the connection stays usable, no stray 100 in between
		postExpect(s, "/up")
		if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
			t.Fatalf("round %d: got %d before the handler ran, want 100", i, resp.StatusCode)
		}
		if i == 0 {
			close(release)
		}
		io.WriteString(s.c, "hello")
		resp, body := s.read(t, nil)
		if resp.StatusCode != 200 || body != "got hello" || resp.Close {
			t.Fatalf("round %d: after the body got %d %q close=%v, want one 100 and then 200", i, resp.StatusCode, body, resp.Close)
		}
	}
}

// TestAcceptBodiless: a bodiless job that asks for acceptance gets it too.
func TestAcceptBodiless(t *testing.T) {
	hub := newAcceptHub(t)
	startWorker(t, hub, Config{Handler: pathHandler()})
	s := hub.next(t)
	fmt.Fprintf(s.c, "GET /x HTTP/1.1\r\nHost: job.example\r\nExpect: 100-continue\r\n\r\n")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "job /x" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	// A job that does not ask gets no 100.
	if resp, body := s.send(t, get("/y")); resp.StatusCode != 200 || body != "job /y" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestNoAcceptWithoutFeature: a hub that agreed on nothing sees what it
// always saw: no 100 unless the handler reads the body.
func TestNoAcceptWithoutFeature(t *testing.T) {
	for _, bare := range []bool{false, true} {
		t.Run(map[bool]string{false: "ptth", true: "pothead"}[bare], func(t *testing.T) {
			hub := newTestHub(t)
			cfg := Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/read" {
					echoBody(w, r)
					return
				}
				io.WriteString(w, "ignored the body")
			})}
			if bare {
				hub.configure(func(h *testHub) { h.bare = true })
				cfg.Protocol = ProtocolPothead
			}
			startWorker(t, hub, cfg)
			s := hub.next(t)
			postExpect(s, "/ignore")
			if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "ignored the body" {
				t.Fatalf("got %d %q, want 200 without a 100 first", resp.StatusCode, body)
			}
			// A hub closes a connection whose body it held back.
			s.c.Close()
			s = hub.next(t)
			postExpect(s, "/read")
			if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
				t.Fatalf("got %d, want 100 once the body is read", resp.StatusCode)
			}
			io.WriteString(s.c, "hello")
			if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "got hello" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestAcceptLater: a handler from AcceptLater is not accepted for; it
// declines with no 100 before the 503, or accepts itself (once, however
// often it calls Accept) and then reads the body.
func TestAcceptLater(t *testing.T) {
	hub := newAcceptHub(t)
	release := make(chan struct{})
	startWorker(t, hub, Config{Handler: AcceptLater(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/decline" {
			Decline(w)
			return
		}
		Accept(r)
		Accept(r)
		<-release // the 100 is out before the handler goes on
		echoBody(w, r)
	}))})
	s := hub.next(t)
	postExpect(s, "/decline")
	resp, _ := s.read(t, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(DeclinedHeader) != "1" {
		t.Fatalf("got %d %v, want the decline before any 100", resp.StatusCode, resp.Header)
	}
	s.expectEOF(t, waitLimit)

	s = hub.next(t)
	postExpect(s, "/take")
	if resp, _ := s.read(t, nil); resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", resp.StatusCode)
	}
	close(release)
	io.WriteString(s.c, "hello")
	if resp, body := s.read(t, nil); resp.StatusCode != 200 || body != "got hello" {
		t.Fatalf("got %d %q, want a single 100 and then 200", resp.StatusCode, body)
	}
}

func TestExpectsContinue(t *testing.T) {
	for v, want := range map[string]bool{
		"100-continue": true, "100-Continue": true, " 100-continue ": true,
		"foo, 100-continue": true, "": false, "100-continued": false,
	} {
		r, _ := http.NewRequest("GET", "http://x/", nil)
		if v != "" {
			r.Header.Set("Expect", v)
		}
		if got := expectsContinue(r); got != want {
			t.Errorf("Expect %q: %v, want %v", v, got, want)
		}
	}
}
