package reversehttp

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

const potheadConfig = `{
	reverse_http {
		pool jobs {
			listen {workers}
			protocol pothead
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`

// potheadWorker behaves on the wire as POTHEAD 0.10.6's worker does: it
// dials, says nothing, reads one request (answering Expect: 100-continue at
// once), answers with Connection: close, closes, and dials again. Jobs are
// answered by answer, which writes the whole response.
func potheadWorker(t *testing.T, h *hub, slots int, answer func(w io.Writer, req *http.Request, body []byte)) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	stopped := false
	t.Cleanup(func() {
		mu.Lock()
		stopped = true
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	for range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				conn, err := net.Dial("tcp4", h.worker)
				if err != nil {
					return
				}
				mu.Lock()
				if stopped {
					mu.Unlock()
					conn.Close()
					return
				}
				open = append(open, conn)
				mu.Unlock()
				br := bufio.NewReader(conn)
				req, err := http.ReadRequest(br)
				if err != nil {
					conn.Close()
					continue
				}
				if req.Header.Get("Expect") == "100-continue" {
					io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n")
				}
				body, _ := io.ReadAll(req.Body)
				answer(conn, req, body)
				conn.Close()
			}
		}()
	}
	p := livePool(t, "jobs")
	waitFor(t, "POTHEAD-style connections", func() bool { return p.Stats().Idle == slots })
}

func werkzeugOK(w io.Writer, req *http.Request, body []byte) {
	sum := sha256.Sum256(body)
	out := fmt.Sprintf("%s %s id=%s len=%d sha=%s", req.Method, req.URL.RequestURI(), req.Header.Get("X-Request-Id"), len(body), hex.EncodeToString(sum[:8]))
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nServer: Werkzeug/2.2.2 Python/3.11.2\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(out), out)
}

func TestPotheadInterop(t *testing.T) {
	h := newHub(t, potheadConfig)

	t.Run("get and post", func(t *testing.T) {
		potheadWorker(t, h, 2, werkzeugOK)
		for i := range 5 {
			resp, body := h.get(fmt.Sprintf("/sleep?ms=%d", i))
			if resp.StatusCode != 200 || !strings.HasPrefix(body, fmt.Sprintf("GET /sleep?ms=%d id=", i)) || strings.Contains(body, "id= ") {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if resp.Header.Get("Server") != "Werkzeug/2.2.2 Python/3.11.2" {
				t.Errorf("worker's headers lost: %v", resp.Header)
			}
		}
		payload := strings.Repeat("x", 300000)
		sum := sha256.Sum256([]byte(payload))
		req, _ := http.NewRequest("POST", h.site+"/upload", strings.NewReader(payload))
		resp, body := h.do(req)
		want := fmt.Sprintf("len=%d sha=%s", len(payload), hex.EncodeToString(sum[:8]))
		if resp.StatusCode != 200 || !strings.HasSuffix(body, want) {
			t.Fatalf("got %d %q, want suffix %q", resp.StatusCode, body, want)
		}
	})
}

func TestPotheadResponses(t *testing.T) {
	for _, tc := range []struct {
		name       string
		raw        string
		wantStatus int
		wantBody   string
		wantHeader [2]string
		truncated  bool
	}{
		{
			name:       "redirect response",
			raw:        "HTTP/1.1 303 See Other\r\nLocation: http://10.0.0.7:8000/0123456789abcdef0123456789abcdef0123456789abcdef\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
			wantStatus: 303,
			wantHeader: [2]string{"Location", "http://10.0.0.7:8000/0123456789abcdef0123456789abcdef0123456789abcdef"},
		},
		{
			name:       "chunked body",
			raw:        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
			wantStatus: 200,
			wantBody:   "hello world",
		},
		{
			name:       "app error",
			raw:        "HTTP/1.1 500 INTERNAL SERVER ERROR\r\nContent-Type: text/html\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!",
			wantStatus: 500,
			wantBody:   "oops!",
		},
		{
			name:       "error after the headers truncates the body",
			raw:        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
			wantStatus: 200,
			truncated:  true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHub(t, potheadConfig)
			potheadWorker(t, h, 1, func(w io.Writer, _ *http.Request, _ []byte) { io.WriteString(w, tc.raw) })
			resp, err := testClient.Get(h.site + "/job")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.truncated {
				if err == nil {
					t.Fatalf("a truncated body reached the consumer as complete: %q", body)
				}
				return
			}
			if err != nil || string(body) != tc.wantBody {
				t.Fatalf("body %q, %v; want %q", body, err, tc.wantBody)
			}
			if k := tc.wantHeader[0]; k != "" && resp.Header.Get(k) != tc.wantHeader[1] {
				t.Fatalf("%s: %q", k, resp.Header.Get(k))
			}
		})
	}
}
