package reversehttp

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// rawWorker dials the hub, completes a ptth handshake for pool "jobs" and
// returns the connection, ready to read a job. extra are more handshake
// header lines.
func rawWorker(t *testing.T, h *hub, extra ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", h.worker)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /jobs HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: PTTH/1.0\r\nAuthorization: Bearer secret\r\n%s\r\n",
		strings.Join(append(extra, ""), "\r\n"))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return conn, br
}

// TestRequeueWhenNeverStarted sends each request first to a raw worker that
// misbehaves in one way, then lets a good worker take over. A request goes
// to the good worker only where the first one cannot have run it.
func TestRequeueWhenNeverStarted(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		body    string
		header  string
		act     func(conn net.Conn) // what the raw worker does once it has read the request head
		accept  bool                // the raw worker speaks the accept feature
		replays bool
	}{
		{"declined GET", "GET", "", "", decline, false, true},
		{"declined POST keeps its body", "POST", "payload", "", decline, false, true},
		{"closed before accepting with 100 Continue", "POST", "payload", "", hangUp, true, true},
		{"reset before accepting with 100 Continue", "POST", "payload", "", reset, true, false},
		{"closed before 100 Continue without the accept feature", "POST", "payload", "", hangUp, false, false},
		{"GET closed before any response byte", "GET", "", "", hangUp, true, false},
		{"GET with an idempotency key", "GET", "", "Idempotency-Key", hangUp, true, false},
		{"bodiless POST closed before any response byte", "POST", "", "", hangUp, true, false},
		{"bodiless POST with an idempotency key", "POST", "", "Idempotency-Key", hangUp, true, false},
		{"closed after 100 Continue", "POST", "payload", "", continueThenHangUp, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHub(t, basicConfig)
			p := livePool(t, "jobs")
			var extra []string
			if tc.accept {
				extra = append(extra, worker.FeaturesHeader+": "+worker.FeatureAccept)
			}
			conn, br := rawWorker(t, h, extra...)
			waitFor(t, "the raw worker's connection", func() bool { return p.Stats().Idle == 1 })
			startWorker(t, h, "jobs", "secret", 1, echoHandler())

			sawJob := make(chan string, 1)
			go func() {
				req, err := http.ReadRequest(br)
				if err != nil {
					sawJob <- "error: " + err.Error()
					return
				}
				sawJob <- req.Method + " " + req.Header.Get("Expect")
				tc.act(conn)
			}()

			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, h.site+"/echo", body)
			if tc.header != "" {
				req.Header.Set(tc.header, "k1")
			}
			resp, got := h.do(req)
			if first := <-sawJob; !strings.HasPrefix(first, tc.method) {
				t.Fatalf("the raw worker saw %q first", first)
			}
			if !tc.replays {
				if resp.StatusCode != http.StatusBadGateway {
					t.Fatalf("got %d %q; a job that may have started must not run again: want 502", resp.StatusCode, got)
				}
				return
			}
			if resp.StatusCode != 200 || !strings.Contains(got, "body="+tc.body+"\n") {
				t.Fatalf("got %d:\n%s\nwant 200 from the second worker with the whole body", resp.StatusCode, got)
			}
		})
	}
}

func decline(conn net.Conn) {
	io.WriteString(conn, "HTTP/1.1 503 Service Unavailable\r\n"+worker.DeclinedHeader+": 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	conn.Close()
}

func hangUp(conn net.Conn) { conn.Close() }

// reset closes conn with a TCP reset: bytes the worker sent just before may
// be lost, so the hub cannot tell whether it accepted the job.
func reset(conn net.Conn) {
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
}

func continueThenHangUp(conn net.Conn) {
	io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadFull(conn, make([]byte, 1)) // the body has started
	conn.Close()
}
