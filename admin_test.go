package reversehttp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const adminConfig = `{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			max_queue 50
			queue_timeout 20s
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`

// adminCall sends method path to Caddy's admin endpoint and returns the
// status and body.
func adminCall(t *testing.T, h *hub, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+h.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func adminPool(t *testing.T, h *hub) poolStatus {
	t.Helper()
	status, body := adminCall(t, h, http.MethodGet, "/reverse_http/pools/jobs")
	if status != http.StatusOK {
		t.Fatalf("GET pool: %d %s", status, body)
	}
	var p poolStatus
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("GET pool: %v\n%s", err, body)
	}
	return p
}

// waitLong is waitFor with room for a worker's redial backoff.
func waitLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAdminAPI reads the pools through Caddy's admin endpoint while a
// request waits, and drains a worker and lifts the drain.
func TestAdminAPI(t *testing.T) {
	h := newHubAdmin(t, adminConfig, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	b := newBlockingHandler()
	startWorker(t, h, "jobs", "secret", 2, b)
	p := livePool(t, "jobs")
	ctx := context.Background()

	// Two jobs run, a third waits.
	first := send(h, ctx, "/1/block")
	wantStarted(t, b, "/1/block")
	second := send(h, ctx, "/2/block")
	wantStarted(t, b, "/2/block")
	third := send(h, ctx, "/3/block")
	waitFor(t, "a request waiting", func() bool { return p.Stats().Waiting == 1 })

	status, body := adminCall(t, h, http.MethodGet, "/reverse_http/pools")
	if status != http.StatusOK {
		t.Fatalf("GET pools: %d %s", status, body)
	}
	var all []poolStatus
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatalf("GET pools: %v\n%s", err, body)
	}
	if len(all) != 1 || all[0].Name != "jobs" {
		t.Fatalf("GET pools: %s", body)
	}
	got := all[0]
	if got.Protocol != "ptth" || len(got.Listen) != 1 || got.Listen[0] != h.worker ||
		got.Limits.MaxQueue != 50 || got.Limits.QueueTimeout != "20s" || got.Limits.MaxAttempts != DefaultMaxAttempts {
		t.Errorf("pool config as the API gives it: %+v", got)
	}
	if got.QueueDepth != 1 || got.OldestWait <= 0 || got.Busy != 2 || got.Idle != 0 {
		t.Errorf("queue and connections: %+v", got)
	}
	if len(got.Workers) != 1 {
		t.Fatalf("workers: %+v", got.Workers)
	}
	w := got.Workers[0]
	if w.Name != "test-worker" || w.ID != "test-worker@127.0.0.1" || w.Remote != "127.0.0.1" ||
		w.Connections != 2 || w.Busy != 2 || w.Idle != 0 || w.ConnectedSince == nil || w.Drained {
		t.Errorf("worker: %+v", w)
	}
	b.release <- struct{}{}
	b.release <- struct{}{}
	wantStarted(t, b, "/3/block")
	b.release <- struct{}{}
	for _, ch := range []<-chan int{first, second, third} {
		wantStatus(t, "job", ch, http.StatusOK)
	}
	waitFor(t, "jobs counted", func() bool { return adminPool(t, h).Workers[0].Jobs == 3 })
	if got := adminPool(t, h); got.Requests["ok"] != 3 || got.QueueDepth != 0 || got.Handshakes["ok"] != 2 {
		t.Errorf("after the jobs: %+v", got)
	}

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			method, path string
			status       int
			says         string
		}{
			{"GET", "/reverse_http/pools/nope", 404, `no pool \"nope\"`},
			{"POST", "/reverse_http/pools", 405, "method POST not allowed"},
			{"GET", "/reverse_http/pools/jobs/workers/test-worker/drain", 405, "method GET not allowed"},
			{"POST", "/reverse_http/pools/jobs/workers/nobody/drain", 404, `no worker \"nobody\"`},
			{"DELETE", "/reverse_http/pools/jobs/workers/test-worker/drain", 404, "is not drained"},
			{"GET", "/reverse_http/nothing", 404, "no such endpoint"},
		} {
			status, body := adminCall(t, h, tc.method, tc.path)
			if status != tc.status || !strings.Contains(body, tc.says) {
				t.Errorf("%s %s: %d %s; want %d with %q", tc.method, tc.path, status, body, tc.status, tc.says)
			}
			if !strings.Contains(body, `"error"`) {
				t.Errorf("%s %s: not a Caddy API error: %s", tc.method, tc.path, body)
			}
		}
	})

	// Drain while a job runs: the idle connection closes at once, the
	// busy one after its job, which completes; redials are refused.
	running := send(h, ctx, "/4/block")
	wantStarted(t, b, "/4/block")
	status, body = adminCall(t, h, http.MethodPost, "/reverse_http/pools/jobs/workers/test-worker/drain")
	if status != http.StatusOK || !strings.Contains(body, `"connections_closing":2`) {
		t.Fatalf("drain: %d %s", status, body)
	}
	waitFor(t, "the idle connection closed", func() bool { s := p.Stats(); return s.Idle == 0 && s.Busy == 1 })
	b.release <- struct{}{}
	wantStatus(t, "the job running when its worker was drained", running, http.StatusOK)
	waitFor(t, "the busy connection closed after its job", func() bool { s := p.Stats(); return s.Idle+s.Busy == 0 })
	refused := p.obs.handshakes[resultDrained].Load()
	waitLong(t, "a redial refused", func() bool { return p.obs.handshakes[resultDrained].Load() > refused })
	got = adminPool(t, h)
	if len(got.Workers) != 1 || !got.Workers[0].Drained || got.Workers[0].Connections != 0 ||
		len(got.Drained) != 1 || got.Drained[0] != "test-worker" || got.Disconnects["drained"] != 2 {
		t.Fatalf("drained pool: %+v", got)
	}
	if p.Stats().Idle+p.Stats().Busy != 0 {
		t.Fatalf("a drained worker got back in: %+v", p.Stats())
	}

	status, body = adminCall(t, h, http.MethodDelete, "/reverse_http/pools/jobs/workers/test-worker/drain")
	if status != http.StatusOK || !strings.Contains(body, `"drained":false`) {
		t.Fatalf("lifting the drain: %d %s", status, body)
	}
	waitLong(t, "the worker back", func() bool { return p.Stats().Idle == 2 })
	if got := adminPool(t, h); got.Workers[0].Drained || len(got.Drained) != 0 {
		t.Fatalf("after the drain was lifted: %+v", got)
	}
	if resp, _ := h.get("/after"); resp.StatusCode != http.StatusOK {
		t.Fatalf("a request after the drain was lifted: %d", resp.StatusCode)
	}
}
