package reversehttp

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cacheHub is a hub whose route caches, with the cache directive's line
// and block given; the cache's storage starts empty.
func cacheHub(t *testing.T, cache string) *hub {
	t.Helper()
	os.RemoveAll(cacheDir())
	return shareHub(t, cache)
}

func cacheDir() string { return filepath.Join(testStorage(), "reverse_http", "cache", "jobs") }

func cacheCount(t *testing.T, result int) uint64 {
	return livePool(t, "jobs").obs.shared.cache[result].Load()
}

// getSettled is h.get that waits until the handler has done with the
// response: the result is stored after the consumer has its last byte.
func getSettled(t *testing.T, h *hub, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.site+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return doSettled(t, h, req)
}

func doSettled(t *testing.T, h *hub, req *http.Request) (*http.Response, string) {
	t.Helper()
	o := &livePool(t, "jobs").obs.shared
	before := o.filled.Load()
	resp, body := h.do(req)
	if resp.Header.Get("Cache-Status") == "reverse_http; fwd=miss" {
		waitFor(t, "the miss to be settled", func() bool { return o.filled.Load() > before })
	}
	return resp, body
}

// countingApp answers /<anything> with a body naming the job's number,
// and the response header fields given by the query (h=Name:Value).
type countingApp struct{ jobs atomic.Int64 }

func (a *countingApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.jobs.Add(1)
	for _, hv := range r.URL.Query()["h"] {
		name, value, _ := strings.Cut(hv, ":")
		w.Header().Add(name, value)
	}
	if size := r.URL.Query().Get("size"); size != "" {
		var bytes int
		fmt.Sscan(size, &bytes)
		if r.URL.Query().Get("chunked") != "" {
			w.Write(testBody(bytes / 2))
			w.(http.Flusher).Flush()
			w.Write(testBody(bytes - bytes/2))
			return
		}
		w.Header().Set("Content-Length", size)
		w.Write(testBody(bytes))
		return
	}
	fmt.Fprintf(w, "job %d", n)
}

// TestCacheHit: a stored result answers the next request without a job,
// from the file system storage, with Cache-Status and Age.
func TestCacheHit(t *testing.T) {
	h := cacheHub(t, "cache 1m")
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	p := livePool(t, "jobs")

	resp, body := getSettled(t, h, "/result?h=X-App:1")
	if body != "job 1" || resp.Header.Get("Cache-Status") != "reverse_http; fwd=miss" {
		t.Fatalf("first request: %q, Cache-Status %q", body, resp.Header.Get("Cache-Status"))
	}
	sent := p.sent.Load()
	for range 3 {
		resp, body = getSettled(t, h, "/result?h=X-App:1")
		if body != "job 1" || !strings.HasPrefix(resp.Header.Get("Cache-Status"), "reverse_http; hit; ttl=") ||
			resp.Header.Get("X-App") != "1" || resp.Header.Get("Age") == "" {
			t.Errorf("repeat: %q, Cache-Status %q, X-App %q, Age %q", body, resp.Header.Get("Cache-Status"), resp.Header.Get("X-App"), resp.Header.Get("Age"))
		}
	}
	if app.jobs.Load() != 1 || p.sent.Load() != sent {
		t.Errorf("the app ran %d jobs, the pool sent %d more; want 1 job, none sent for hits", app.jobs.Load(), p.sent.Load()-sent)
	}
	if hits := cacheCount(t, cacheHit); hits != 3 {
		t.Errorf("%d hits counted; want 3", hits)
	}
	files, _ := os.ReadDir(cacheDir())
	if len(files) != 1 {
		t.Errorf("%d files in the storage's cache directory; want 1", len(files))
	}
	// Another URI, a POST, a request with credentials: jobs of their own.
	getSettled(t, h, "/other")
	post, _ := http.NewRequest(http.MethodPost, h.site+"/result?h=X-App:1", nil)
	h.do(post)
	auth, _ := http.NewRequest(http.MethodGet, h.site+"/result?h=X-App:1", nil)
	auth.Header.Set("Authorization", "Bearer x")
	if resp, _ := h.do(auth); resp.Header.Get("Cache-Status") != "reverse_http; fwd=bypass" {
		t.Errorf("a request with credentials: Cache-Status %q", resp.Header.Get("Cache-Status"))
	}
	if app.jobs.Load() != 4 {
		t.Errorf("%d jobs; want 4", app.jobs.Load())
	}
}

// TestCacheControl: the worker's Cache-Control, Set-Cookie and Vary
// decide what is stored.
func TestCacheControl(t *testing.T) {
	h := cacheHub(t, `cache 1m {
			key {http.request.host} {http.request.uri} {http.request.header.Accept}
		}`)
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	for _, c := range []struct {
		query  string
		stored bool
	}{
		{"", true},
		{"h=Cache-Control:no-store", false},
		{"h=Cache-Control:private", false},
		{"h=Cache-Control:no-cache", false},
		{"h=Cache-Control:max-age=0", false},
		{"h=Cache-Control:public,max-age=60", true},
		{"h=Cache-Control:max-age=0,s-maxage=60", true},
		{"h=Cache-Control:max-age=60,s-maxage=0", false},
		{"h=Cache-Control:max-age=x", false},
		{"h=Set-Cookie:a=b", false},
		{"h=Trailer:X-Sum", false},
		{"h=Vary:Accept", true},
		{"h=Vary:Accept-Language", false},
		{"h=Vary:*", false},
	} {
		before := app.jobs.Load()
		getSettled(t, h, "/cc?"+c.query)
		getSettled(t, h, "/cc?"+c.query)
		jobs := app.jobs.Load() - before
		if stored := jobs == 1; stored != c.stored || jobs == 0 {
			t.Errorf("%s: %d jobs for two requests; stored %v, want %v", c.query, jobs, stored, c.stored)
		}
	}
	// Vary: Accept is in the key, so each Accept has its own entry.
	before := app.jobs.Load()
	for _, accept := range []string{"text/a", "text/b", "text/a"} {
		req, _ := http.NewRequest(http.MethodGet, h.site+"/vary?h=Vary:Accept", nil)
		req.Header.Set("Accept", accept)
		doSettled(t, h, req)
	}
	if app.jobs.Load()-before != 2 {
		t.Errorf("%d jobs for two Accept values; want 2", app.jobs.Load()-before)
	}
}

// TestCacheErrorStatus: a 5xx is not stored.
func TestCacheErrorStatus(t *testing.T) {
	h := cacheHub(t, "cache 1m")
	var jobs atomic.Int64
	startWorker(t, h, "jobs", "", 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jobs.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	getSettled(t, h, "/e")
	getSettled(t, h, "/e")
	if jobs.Load() != 2 || cacheCount(t, cacheUncacheable) != 2 {
		t.Errorf("%d jobs, %d uncacheable; want 2 and 2", jobs.Load(), cacheCount(t, cacheUncacheable))
	}
}

// TestCacheExpiry: a result is served until its max-age runs out, then
// a job makes it again.
func TestCacheExpiry(t *testing.T) {
	h := cacheHub(t, "cache 1h")
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	start := time.Now()
	getSettled(t, h, "/exp?h=Cache-Control:max-age=1")
	if _, body := getSettled(t, h, "/exp?h=Cache-Control:max-age=1"); body != "job 1" && time.Since(start) < time.Second {
		t.Fatalf("a fresh result was not served: %q", body)
	}
	waitFor(t, "the result to expire", func() bool {
		getSettled(t, h, "/exp?h=Cache-Control:max-age=1")
		return app.jobs.Load() == 2
	})
	if time.Since(start) < time.Second {
		t.Errorf("the result expired after %v; its max-age is 1s", time.Since(start))
	}
}

// TestCacheEntrySize: a result larger than max_entry_size reaches the
// consumer whole and is not stored, whether its length is announced or
// it comes in chunks.
func TestCacheEntrySize(t *testing.T) {
	h := cacheHub(t, `cache 1m {
			max_entry_size 64KiB
		}`)
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	for _, q := range []string{"size=100000", "size=100000&chunked=1"} {
		before := app.jobs.Load()
		for range 2 {
			if _, body := getSettled(t, h, "/big?"+q); len(body) != 100000 {
				t.Errorf("%s: %d bytes", q, len(body))
			}
		}
		if app.jobs.Load()-before != 2 {
			t.Errorf("%s: %d jobs; want 2, nothing stored", q, app.jobs.Load()-before)
		}
	}
	if n := cacheCount(t, cacheTooLarge); n != 4 {
		t.Errorf("%d too large; want 4", n)
	}
	// Just under the limit, it is stored.
	getSettled(t, h, "/big?size=60000")
	getSettled(t, h, "/big?size=60000")
	if n := cacheCount(t, cacheHit); n != 1 {
		t.Errorf("%d hits; want 1", n)
	}
}

// TestCacheTotalSize: storing beyond max_total_size deletes the oldest
// results.
func TestCacheTotalSize(t *testing.T) {
	h := cacheHub(t, `cache 1m {
			max_total_size 10KiB
		}`)
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	for _, name := range []string{"a", "b", "c"} {
		getSettled(t, h, "/"+name+"?size=4000")
	}
	files, _ := os.ReadDir(cacheDir())
	if len(files) != 2 {
		t.Errorf("%d entries in the storage; want 2 within 10KiB", len(files))
	}
	before := app.jobs.Load()
	getSettled(t, h, "/c?size=4000")
	getSettled(t, h, "/b?size=4000")
	if app.jobs.Load() != before {
		t.Errorf("the newest results were not kept")
	}
	getSettled(t, h, "/a?size=4000")
	if app.jobs.Load() != before+1 {
		t.Errorf("the oldest result was not evicted")
	}
}

// TestCacheWithCoalesce: concurrent misses share one job, whose result
// is stored once and answers what follows.
func TestCacheWithCoalesce(t *testing.T) {
	h := cacheHub(t, `cache 1m
		coalesce`)
	app := newGatedApp(testBody(200 << 10))
	startWorker(t, h, "jobs", "", 2, app)
	const n = 10
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, body := h.get("/shared"); len(body) != len(app.body) {
				t.Errorf("%d bytes", len(body))
			}
		}()
	}
	waitFor(t, "the requests to share a job", func() bool { return coalescedCount(t) == n-1 })
	close(app.release)
	wg.Wait()
	waitFor(t, "the shared miss to be settled", func() bool { return livePool(t, "jobs").obs.shared.filled.Load() == 1 })
	resp, body := getSettled(t, h, "/shared")
	if len(body) != len(app.body) || !strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
		t.Errorf("after the shared job: %d bytes, Cache-Status %q", len(body), resp.Header.Get("Cache-Status"))
	}
	if app.jobs.Load() != 1 || cacheCount(t, cacheStored) != 1 {
		t.Errorf("%d jobs, %d stored; want 1 and 1", app.jobs.Load(), cacheCount(t, cacheStored))
	}
}

// TestCacheOwnStorage: a cache with a storage module of its own keeps its
// results there, not in Caddy's storage.
func TestCacheOwnStorage(t *testing.T) {
	dir := t.TempDir()
	h := cacheHub(t, `cache 1m {
			storage file_system `+dir+`
		}`)
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	getSettled(t, h, "/own")
	if _, body := getSettled(t, h, "/own"); body != "job 1" || app.jobs.Load() != 1 {
		t.Errorf("repeat got %q after %d jobs; want a hit", body, app.jobs.Load())
	}
	files, _ := os.ReadDir(filepath.Join(dir, "reverse_http", "cache", "jobs"))
	if len(files) != 1 {
		t.Errorf("%d entries in the cache's own storage; want 1", len(files))
	}
	if _, err := os.Stat(cacheDir()); err == nil {
		t.Errorf("the cache wrote to Caddy's storage too")
	}
}

// TestCacheHitBytesBounded: a hit holds its whole entry until its
// consumer has read it; past the budget of bytes held for hits, a request
// is answered by a job instead, so slow consumers of large entries cannot
// hold memory without bound.
func TestCacheHitBytesBounded(t *testing.T) {
	// Larger than what loopback sockets buffer, so that a consumer that
	// reads nothing holds its hit.
	const size = 16 << 20
	defer func(b int64) { cacheHitBudget = b }(cacheHitBudget)
	cacheHitBudget = size + size/2 // room for one hit of the entry
	h := cacheHub(t, "cache 1m {\n\t\t\tmax_entry_size 20MiB\n\t\t}")
	app := new(countingApp)
	startWorker(t, h, "jobs", "", 1, app)
	path := fmt.Sprintf("/big?size=%d", size)
	if resp, body := getSettled(t, h, path); resp.StatusCode != 200 || len(body) != size {
		t.Fatalf("first request: %d, %d bytes", resp.StatusCode, len(body))
	}

	// A consumer that takes the hit's head and reads no more holds it.
	site := strings.TrimPrefix(h.site, "http://")
	conn, err := net.Dial("tcp", site)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, site)
	head, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || !strings.HasPrefix(head.Header.Get("Cache-Status"), "reverse_http; hit") {
		t.Fatalf("the held hit: %v, Cache-Status %q", err, head.Header.Get("Cache-Status"))
	}
	p := livePool(t, "jobs")
	waitFor(t, "the held hit's bytes", func() bool { return p.obs.shared.hitBytes.Load() >= size })

	// Another request for the entry finds the budget taken: a job.
	resp, body := getSettled(t, h, path)
	if resp.StatusCode != 200 || len(body) != size || resp.Header.Get("Cache-Status") != "reverse_http; fwd=miss" || app.jobs.Load() != 2 {
		t.Errorf("beyond the budget: %d, %d bytes, Cache-Status %q, %d jobs; want a job of its own",
			resp.StatusCode, len(body), resp.Header.Get("Cache-Status"), app.jobs.Load())
	}
	conn.Close()
	waitFor(t, "the budget given back", func() bool { return p.obs.shared.hitBytes.Load() == 0 })
	if resp, _ := getSettled(t, h, path); !strings.HasPrefix(resp.Header.Get("Cache-Status"), "reverse_http; hit") {
		t.Errorf("after the held hit: Cache-Status %q, want a hit", resp.Header.Get("Cache-Status"))
	}
}
