package reversehttp

import (
	"io"
	"net"
	"net/http"
	"testing"
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
// (metrics, placeholders, access log fields) costs the tiny-job path: the
// same hub and worker serve one small GET at a time with it on and off, in
// turns. Compare the two with benchstat:
//
//	go test -run '^$' -bench TinyRequestMetrics -benchtime 2s -count 10 . > m.txt
//	benchstat -col /metrics m.txt
func BenchmarkTinyRequestMetrics(b *testing.B) {
	h := newHub(b, basicConfig)
	startWorker(b, h, "jobs", "secret", 8, tinyHandler())
	p := livePool(b, "jobs")
	for _, on := range []bool{true, false} {
		name := map[bool]string{true: "metrics=on", false: "metrics=off"}[on]
		b.Run(name, func(b *testing.B) {
			l := p.getLimits()
			l.unobserved = !on
			p.configure(l, p.log())
			getLoop(b, h.site+"/")
		})
	}
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
}
