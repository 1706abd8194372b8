package reversehttp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/internal/testpki"
	"github.com/reversehttp/reverse_http/worker"
)

// Pool-level tests of the ready feature: real loopback sockets (plain and
// TLS, watched by the poller on Linux) and a pipe (watched by a goroutine).

var readyInfo = workerInfo{name: "ready", features: features{accept: true, ready: true}}

// readyTransports are the kinds of connection the tests run on: each
// returns the worker's end of a new connection in p with the ready
// feature.
var readyTransports = []struct {
	name string
	dial func(t *testing.T, p *Pool) net.Conn
}{
	{"tcp", func(t *testing.T, p *Pool) net.Conn { return workerSideInfo(t, p, readyInfo) }},
	{"tls", func(t *testing.T, p *Pool) net.Conn { w, _ := tlsWorkerInfo(t, p, readyInfo); return w }},
	{"pipe", func(t *testing.T, p *Pool) net.Conn {
		h, w := net.Pipe()
		t.Cleanup(func() { w.Close(); p.drain(); h.Close() })
		p.add(h, bufio.NewReader(h), readyInfo)
		return w
	}},
}

// workerSideInfo is workerSide for a connection with info.
func workerSideInfo(t *testing.T, p *Pool, info workerInfo) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(); p.drain(); h.Close() })
	p.add(h, bufio.NewReader(h), info)
	return w
}

// tlsWorker connects a TLS connection to p as a worker would and returns
// the worker's end and the TCP connection under it.
func tlsWorker(t *testing.T, p *Pool) (*tls.Conn, net.Conn) {
	return tlsWorkerInfo(t, p, workerInfo{name: "tls"})
}

func tlsWorkerInfo(t *testing.T, p *Pool, info workerInfo) (*tls.Conn, net.Conn) {
	t.Helper()
	cert := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	hraw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	h := tls.Server(hraw, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- w.Handshake() }()
	if err := h.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(); p.drain(); h.Close() })
	p.add(h, bufio.NewReader(h), info)
	return w, raw
}

// selfSigned returns a throwaway certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	return testpki.NewCA(t, "throwaway").Issue(t, testpki.Leaf{Names: []string{"127.0.0.1"}})
}

func frame(w net.Conn, f ...byte) {
	go w.Write(f) // a pipe blocks until the hub reads
}

// isReady reports whether p holds exactly one connection, idle and ready.
func isReady(p *Pool) bool {
	s := p.Stats()
	return s.Idle == 1 && s.NotReady == 0
}

func isNotReady(p *Pool) bool {
	s := p.Stats()
	return s.Idle == 1 && s.NotReady == 1
}

// serveReady answers every bodiless request read from w with
// cannedResponse followed by a ready frame: in the same write when behind
// is set, in a write of its own otherwise.
func serveReady(w net.Conn, behind bool) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		br := bufio.NewReader(w)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			req.Body.Close()
			if behind {
				_, err = w.Write([]byte(cannedResponse + "+"))
			} else if _, err = w.Write([]byte(cannedResponse)); err == nil {
				_, err = w.Write([]byte{worker.FrameReady})
			}
			if err != nil {
				return
			}
		}
	}()
	return done
}

// TestReadyOnlyOnceOffered checks that a connection with the ready feature
// carries no job until its worker says it is ready, and none after it
// says it is not; a request that waits gets the connection the moment it
// becomes ready.
func TestReadyOnlyOnceOffered(t *testing.T) {
	for _, tr := range readyTransports {
		t.Run(tr.name, func(t *testing.T) {
			p := testPool(10)
			w := tr.dial(t, p)
			waitFor(t, "the connection, not ready", func() bool { return isNotReady(p) })
			short := time.Now().Add(100 * time.Millisecond)
			if _, err := p.acquire(t.Context(), short, false); !errors.Is(err, errQueueTimeout) {
				t.Fatalf("a request took a connection that is not ready: %v", err)
			}

			frame(w, worker.FrameReady)
			waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
			frame(w, worker.FrameNotReady)
			waitFor(t, "the offer to be withdrawn", func() bool { return isNotReady(p) })

			got := make(chan error, 1)
			go func() {
				c, err := p.acquire(context.Background(), far(), false)
				if err == nil {
					p.put(c)
				}
				got <- err
			}()
			waitFor(t, "the request to wait", func() bool { return p.Stats().Waiting == 1 })
			frame(w, worker.FrameNotReady, worker.FrameReady)
			if err := <-got; err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the connection back, ready", func() bool { return isReady(p) })
		})
	}
}

// TestReadyJobsBackToBack runs jobs on a connection whose worker offers it
// again after each response, with the frame in a write of its own and in
// the same write as the response (bytes beyond the response, which close
// a connection without the feature). On TLS the frame's record is often
// read along with the response's end, where no watcher can see it.
func TestReadyJobsBackToBack(t *testing.T) {
	for _, tr := range readyTransports {
		for _, behind := range []bool{false, true} {
			name := tr.name + "/own-write"
			if behind {
				name = tr.name + "/behind-response"
			}
			t.Run(name, func(t *testing.T) {
				p := testPool(10)
				w := tr.dial(t, p)
				done := serveReady(w, behind)
				frame(w, worker.FrameReady)
				for range 20 {
					waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
					roundTripCanned(t, p)
				}
				waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
				if s := p.Stats(); s.Joined != 1 || s.Sent != 20 {
					t.Fatalf("20 jobs on one connection: %+v", s)
				}
				w.Close()
				<-done
				waitFor(t, "the hung-up connection to leave", func() bool { return p.Stats().Idle == 0 })
			})
		}
	}
}

// TestReadyNotAfterResponse checks that a connection is not ready after a
// response until its worker says so again, and that a frame the worker
// sent before it read a job (an offer withdrawn while the job was on its
// way) is passed over, not taken for the response.
func TestReadyNotAfterResponse(t *testing.T) {
	for _, tr := range readyTransports {
		t.Run(tr.name, func(t *testing.T) {
			p := testPool(10)
			w := tr.dial(t, p)
			frame(w, worker.FrameReady)
			waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
			answerOnce(w, "-"+cannedResponse)
			roundTripCanned(t, p)
			waitFor(t, "the connection, not ready", func() bool { return isNotReady(p) })
			short := time.Now().Add(100 * time.Millisecond)
			if _, err := p.acquire(t.Context(), short, false); !errors.Is(err, errQueueTimeout) {
				t.Fatalf("a request took a connection not offered again: %v", err)
			}
		})
	}
}

// TestReadyCheckSeesWithdrawal has a worker withdraw its offer after the
// watcher last looked and before the taker writes: check reports
// errNotReady, and the connection stays in the pool, not ready.
func TestReadyCheckSeesWithdrawal(t *testing.T) {
	for _, tr := range readyTransports[:2] { // sockets: a pipe cannot be peeked at
		t.Run(tr.name, func(t *testing.T) {
			p := testPool(10)
			w := tr.dial(t, p)
			frame(w, worker.FrameReady)
			waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
			c, err := p.acquire(t.Context(), far(), false)
			if err != nil {
				t.Fatal(err)
			}
			frame(w, worker.FrameNotReady)
			waitFor(t, "the frame to arrive", func() bool { n, _ := c.peek(); return n > 0 })
			if err := c.check(); !errors.Is(err, errNotReady) {
				t.Fatalf("check: %v, want errNotReady", err)
			}
			p.putAs(c, false)
			waitFor(t, "the connection, not ready", func() bool { return isNotReady(p) })
			frame(w, worker.FrameReady)
			waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
		})
	}
}

// TestReadyBadBytes checks that anything but frames on an idle connection,
// and bytes beyond a response that are not frames, still close it.
func TestReadyBadBytes(t *testing.T) {
	for _, tr := range readyTransports {
		t.Run(tr.name+"/idle", func(t *testing.T) {
			p := testPool(10)
			w := tr.dial(t, p)
			go w.Write([]byte("+H"))
			waitFor(t, "the connection to leave", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 0 })
			requireClosed(t, w)
		})
		t.Run(tr.name+"/behind-response", func(t *testing.T) {
			p := testPool(10)
			w := tr.dial(t, p)
			frame(w, worker.FrameReady)
			waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
			answerOnce(w, cannedResponse+"+x")
			resp := startJob(t, p)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			requireClosed(t, w)
			waitFor(t, "the connection to leave", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 0 })
		})
	}
}

// TestReadyFrameFlood crosses the bound on frames: a burst within it keeps
// the connection, one beyond it closes it.
func TestReadyFrameFlood(t *testing.T) {
	for _, tr := range readyTransports {
		t.Run(tr.name, func(t *testing.T) {
			p := testPool(10)
			w := tr.dial(t, p)
			within := append(bytes.Repeat([]byte{worker.FrameNotReady}, frameBurst/2-1), worker.FrameReady)
			go w.Write(within)
			waitFor(t, "the connection to be ready", func() bool { return isReady(p) })
			go w.Write(bytes.Repeat([]byte{worker.FrameNotReady}, 2*frameBurst))
			waitFor(t, "the flooding connection to leave", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 0 })
			requireClosed(t, w)
		})
	}
}

// requireClosed fails unless the hub closes w's connection within 5 s.
func requireClosed(t *testing.T, w net.Conn) {
	t.Helper()
	w.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, err := w.Read(make([]byte, 512))
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the hub should have closed the connection")
		}
		return
	}
}
