package reversehttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// BenchmarkTinyRequest measures one small GET at a time through Caddy and
// the hub to an in-process worker, against the same handler served
// directly. Compare the two ns/op; run with -benchtime to steady them:
//
//	go test -run '^$' -bench TinyRequest -benchtime 3s .
func BenchmarkTinyRequest(b *testing.B) {
	handler := tinyHandler()
	b.Run("direct", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: handler}
		go srv.Serve(ln)
		defer srv.Close()
		getLoop(b, "http://"+ln.Addr().String()+"/")
	})
	b.Run("reverse_http", func(b *testing.B) {
		h := newHub(b, basicConfig)
		startWorker(b, h, "jobs", "secret", 8, handler)
		getLoop(b, h.site+"/")
	})
}

// BenchmarkTinyRequestMetrics measures what the per-request observation
// (metrics, placeholders, access log fields) costs the tiny-job path. One
// hub and worker serve one small GET at a time, with the observation on and
// off in turns, request by request, so that whatever else the machine does
// weighs on both alike; it reports the mean time of each and the overhead.
// Run it a few times and read the spread with benchstat:
//
//	go test -run '^$' -bench TinyRequestMetrics -benchtime 3000x -count 10 . > m.txt
//	benchstat m.txt
func BenchmarkTinyRequestMetrics(b *testing.B) {
	h := newHub(b, basicConfig)
	startWorker(b, h, "jobs", "secret", 8, tinyHandler())
	p := livePool(b, "jobs")
	url := h.site + "/"
	var spent [2]time.Duration // off, on
	var n [2]int
	i := 0
	for b.Loop() {
		on := i % 2
		i++
		l := p.getLimits()
		l.unobserved = on == 0
		p.configure(l, p.log())
		start := time.Now()
		get(b, url)
		spent[on] += time.Since(start)
		n[on]++
	}
	if n[0] == 0 || n[1] == 0 {
		return
	}
	off, on := float64(spent[0])/float64(n[0]), float64(spent[1])/float64(n[1])
	b.ReportMetric(on, "ns/req-on")
	b.ReportMetric(off, "ns/req-off")
	b.ReportMetric(100*(on-off)/off, "%overhead")
}

// tinyHandler answers 1 KiB.
func tinyHandler() http.Handler {
	payload := make([]byte, 1024)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) })
}

// getLoop sends one GET at a time to url.
func getLoop(b *testing.B, url string) {
	b.ReportAllocs()
	for b.Loop() {
		get(b, url)
	}
}

// get sends a GET to url and reads its answer, which must be a 200.
func get(b *testing.B, url string) {
	resp, err := testClient.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkRequestObservation measures the observation hooks of one
// request alone, without the network: observe, a worker taking it, settle
// (outcome, histograms, the worker's books, the access log object), with
// the hooks on and off on the same setup. The difference is their cost:
//
//	go test -run '^$' -bench RequestObservation -count 10 . > o.txt
//	benchstat -col /observation o.txt
func BenchmarkRequestObservation(b *testing.B) {
	p := newPool("bench")
	p.configure(poolLimits{queueTimeout: time.Minute, maxAttempts: DefaultMaxAttempts}, zap.NewNop())
	h := &Handler{Pool: "bench", pool: p, logger: zap.NewNop()}
	c := &workerConn{pool: p, info: workerInfo{name: "w"}}
	c.obs.w = &workerRecord{}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	for _, on := range []bool{true, false} {
		b.Run(map[bool]string{true: "observation=on", false: "observation=off"}[on], func(b *testing.B) {
			b.ReportAllocs()
			limits := p.getLimits()
			limits.unobserved = !on
			for b.Loop() {
				ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
				ctx = context.WithValue(ctx, caddyhttp.ExtraLogFieldsCtxKey, new(caddyhttp.ExtraLogFields))
				r := req.WithContext(ctx)
				j := &job{pool: p, limits: limits}
				j.observe(r, time.Now())
				j.took(c)
				j.attempts++
				j.obs.answered = http.StatusOK
				h.settle(j, r, "id")
			}
		})
	}
}
