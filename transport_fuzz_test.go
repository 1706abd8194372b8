package reversehttp

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzWorkerResponse has a worker answer a job with arbitrary bytes, then
// hang up. Whatever it sends, the consumer gets exactly one response, in
// time: the worker's (whose body may end early), or the hub's error.
//
// The first byte of the input picks the job (a GET, a POST with a body);
// the rest is what the worker sends. Seeds are in
// testdata/fuzz/FuzzWorkerResponse.
func FuzzWorkerResponse(f *testing.F) {
	// Quiet: a fuzzing worker's log goes to a pipe that nobody reads
	// while it runs, and a full pipe stalls it.
	h := newHub(f, `{
	log {
		output discard
	}
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			queue_timeout 500ms
			response_timeout 5s
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`)
	site := strings.TrimPrefix(h.site, "http://")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		post, reply := data[0]&1 == 1, data[1:]
		conn, br := rawWorker(t, h)
		worked := make(chan struct{})
		go func() {
			defer close(worked)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if post && req.Header.Get("Expect") == "" {
				io.Copy(io.Discard, req.Body)
			}
			conn.Write(reply)
		}()

		consumer, err := net.Dial("tcp", site)
		if err != nil {
			t.Fatal(err)
		}
		defer consumer.Close()
		consumer.SetDeadline(time.Now().Add(15 * time.Second))
		if post {
			io.WriteString(consumer, "POST /fuzz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
		} else {
			io.WriteString(consumer, "GET /fuzz HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		cbr := bufio.NewReader(consumer)
		resp, err := finalResponse(cbr)
		if err != nil {
			// Cutting the consumer's connection is the answer to a worker
			// whose response head was whole but whose body broke: the head
			// goes out with the body's first bytes, so a body that breaks
			// at once leaves nothing to send. Anything else must answer.
			if !cutBody(reply, post) {
				t.Fatalf("the consumer got no response: %v", err)
			}
			<-worked
			return
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
			t.Fatalf("reading the body of %d: %v", resp.StatusCode, err)
		}
		<-worked
		// Nothing may follow the one response: no second response, no
		// stray bytes of the worker's.
		consumer.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if extra, err := cbr.Peek(1); len(extra) > 0 {
			t.Fatalf("bytes after the response to the consumer (status %d): %q", resp.StatusCode, extra)
		} else if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && err != io.EOF && !isReset(err) {
			t.Fatalf("after the response: %v", err)
		}
	})
}

// finalResponse reads the consumer's response, past any 1xx the worker's
// informational responses became.
func finalResponse(br *bufio.Reader) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode >= 200 {
			return resp, err
		}
	}
}

// cutBody reports whether reply is a response whose head is whole and final
// but whose body does not end cleanly, as the hub reads it.
func cutBody(reply []byte, post bool) bool {
	req := &http.Request{Method: http.MethodGet}
	if post {
		req.Method = http.MethodPost
	}
	br := bufio.NewReader(strings.NewReader(string(reply)))
	for {
		resp, err := http.ReadResponse(br, req)
		switch {
		case err != nil:
			return false
		case resp.StatusCode < 200:
			continue
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err != nil
	}
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}
