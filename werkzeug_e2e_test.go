package reversehttp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// werkzeugWorker is the bench's stand-in for a POTHEAD worker, on the HTTP
// stack the real one serves with (werkzeug 2.2.2's WSGIRequestHandler).
const werkzeugWorker = "bench/werkzeugworker.py"

// needWerkzeug checks that the system Python has werkzeug. Its absence
// fails the test, since CI installs it (python3-werkzeug);
// REVERSE_HTTP_SKIP_WERKZEUG=1 skips it instead.
func needWerkzeug(t *testing.T) string {
	t.Helper()
	const python = "/usr/bin/python3"
	out, err := exec.Command(python, "-c", "import werkzeug").CombinedOutput()
	if err == nil {
		return python
	}
	if os.Getenv("REVERSE_HTTP_SKIP_WERKZEUG") == "1" {
		t.Skip("no werkzeug for /usr/bin/python3; skipped with REVERSE_HTTP_SKIP_WERKZEUG=1")
	}
	t.Fatalf("werkzeug is needed (apt-get install python3-werkzeug), or REVERSE_HTTP_SKIP_WERKZEUG=1 to skip: %v: %s", err, out)
	return ""
}

// TestPotheadWerkzeugWorker serves jobs through Caddy from werkzeug's HTTP
// server speaking POTHEAD's wire protocol: a connection per job, dialled by
// the worker, Connection: close, 100 Continue for a body, a chunked body,
// chunked answers where the app gives no length; and jobs at once on both
// slots.
func TestPotheadWerkzeugWorker(t *testing.T) {
	python := needWerkzeug(t)
	h := newHub(t, potheadConfig)
	const slots = 2
	startProc(t, "werkzeug worker", python, nil, werkzeugWorker, "--hub", h.worker, "--slots", fmt.Sprint(slots))
	p := livePool(t, "jobs")
	waitFor(t, "the worker's connections", func() bool { return p.Stats().Idle == slots })
	joined := p.Stats().Joined

	const jobs = 10
	for i := range jobs {
		resp, body := h.get("/tiny")
		if resp.StatusCode != 200 || len(body) != 1024 || !strings.HasPrefix(body, "abcdefghijklmnopqrstuvwxyz") {
			t.Fatalf("job %d: got %d, %d bytes %.40q", i, resp.StatusCode, len(body), body)
		}
		if !strings.HasPrefix(resp.Header.Get("Server"), "Werkzeug/") {
			t.Fatalf("job %d: the worker's headers were lost: %v", i, resp.Header)
		}
	}
	// Each job's connection closed after it and the worker dialled again.
	waitFor(t, "the worker's new connections", func() bool {
		s := p.Stats()
		return s.Idle == slots && s.Joined >= joined+jobs
	})

	payload := strings.Repeat("0123456789", 30000)
	sum := sha256.Sum256([]byte(payload))
	req, _ := http.NewRequest("POST", h.site+"/upload", strings.NewReader(payload))
	resp, body := h.do(req)
	if want := fmt.Sprintf("%d %s\n", len(payload), hex.EncodeToString(sum[:])); resp.StatusCode != 200 || body != want {
		t.Fatalf("upload: got %d %q, want %q", resp.StatusCode, body, want)
	}

	// A body of unknown length goes to the worker chunked.
	req, _ = http.NewRequest("POST", h.site+"/upload", io.MultiReader(strings.NewReader(payload[:1000]), strings.NewReader(payload[1000:])))
	req.ContentLength = -1
	resp, body = h.do(req)
	if want := fmt.Sprintf("%d %s\n", len(payload), hex.EncodeToString(sum[:])); resp.StatusCode != 200 || body != want {
		t.Fatalf("chunked upload: got %d %q, want %q", resp.StatusCode, body, want)
	}

	resp, body = h.get("/chunked")
	if resp.StatusCode != 200 || body != "one two three\n" {
		t.Fatalf("chunked: got %d %q", resp.StatusCode, body)
	}

	// Both slots at once, more jobs than slots.
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := testClient.Get(fmt.Sprintf("%s/job?ms=%d", h.site, 20+i))
			if err != nil {
				errs <- fmt.Sprintf("job %d: %v", i, err)
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(body) != "done\n" {
				errs <- fmt.Sprintf("job %d: got %d %q %v", i, resp.StatusCode, body, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
