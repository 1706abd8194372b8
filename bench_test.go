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
	payload := make([]byte, 1024)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) })

	run := func(b *testing.B, url string) {
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

	b.Run("direct", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: handler}
		go srv.Serve(ln)
		defer srv.Close()
		run(b, "http://"+ln.Addr().String()+"/")
	})
	b.Run("reverse_http", func(b *testing.B) {
		h := newHub(b, basicConfig)
		startWorker(b, h, "jobs", "secret", 8, handler)
		run(b, h.site+"/")
	})
}
