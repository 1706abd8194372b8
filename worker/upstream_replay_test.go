package worker

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
)

// TestForwarderDirectNoReplayOfPOST: a POST without a body whose pooled
// connection the upstream closes after reading it (it may have acted on it)
// must not be sent again: http.Transport replays only idempotent requests.
func TestForwarderDirectNoReplayOfPOST(t *testing.T) {
	var posts atomic.Int32
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Method == http.MethodPost {
				if posts.Add(1) == 1 {
					// Acted on it, then crashed before answering.
					c.Close()
					return
				}
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	s := forwarderTo(t, up)
	if resp, _ := s.send(t, get("/warm")); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d", resp.StatusCode)
	}
	s.expectFrame(t, FrameReady)
	req, _ := http.NewRequest(http.MethodPost, "http://job.example/charge", http.NoBody)
	req.ContentLength = 0
	req.Header.Set("Content-Length", "0")
	resp, _ := s.send(t, req)
	if n := posts.Load(); n != 1 {
		t.Errorf("the upstream got the POST %d times (status %d); want once, then 502", n, resp.StatusCode)
	}
}
