// Command sample-app is a small HTTP application that stands in for an
// expensive job behind a reverse_http pool, for demos and tests. It uses
// only the standard library.
//
// Endpoints:
//
//	GET  /                      what this is
//	GET  /hello                 "hello from the sample app"; echoes X-Request-Id as X-Seen-Request-Id
//	GET  /sleep?ms=N            sleeps N ms (stops if the request is cancelled)
//	POST /sha256                streams the body through SHA-256: {"bytes":N,"sha256":"hex"}
//	GET  /bytes?n=N             N bytes, byte i = i%251, with Content-Length
//	GET  /stream?chunks=N&ms=M  N lines "chunk i", flushed one by one, M ms apart
//	GET  /headers               the request's headers and Host, sorted
//	GET  /status?code=N         answers with status N
//	GET  /trailer               a body followed by the trailer X-Checksum: done
//	GET  /stats                 {"running":n,"peak":n,"total":n}, not counting /stats
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "`ADDRESS` to listen on")
	workMS := flag.Int("work-ms", 0, "extra `MS` milliseconds every /hello sleeps, as a stand-in for work")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("sample-app: unexpected argument %q", flag.Arg(0))
	}
	if *workMS < 0 {
		log.Fatal("sample-app: --work-ms must not be negative")
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("sample-app: %v", err)
	}
	srv := &http.Server{
		Handler:           newApp(time.Duration(*workMS) * time.Millisecond),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Printf("sample-app listening on http://%s (work-ms %d)", ln.Addr(), *workMS)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("sample-app: %v", err)
	}
}

// stats counts the requests the app serves, /stats excepted.
type stats struct {
	running, peak, total atomic.Int64
}

func (s *stats) begin() {
	s.total.Add(1)
	n := s.running.Add(1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (s *stats) end() { s.running.Add(-1) }

// newApp returns the app's handler; every /hello sleeps work extra.
func newApp(work time.Duration) http.Handler {
	st := new(stats)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", handleIndex)
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		if err := pause(r.Context(), work); err != nil {
			return // the consumer went away
		}
		if id := r.Header.Get("X-Request-Id"); id != "" {
			w.Header().Set("X-Seen-Request-Id", id)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "hello from the sample app\n")
	})
	mux.HandleFunc("GET /sleep", handleSleep)
	mux.HandleFunc("POST /sha256", handleSHA256)
	mux.HandleFunc("GET /bytes", handleBytes)
	mux.HandleFunc("GET /stream", handleStream)
	mux.HandleFunc("GET /headers", handleHeaders)
	mux.HandleFunc("GET /status", handleStatus)
	mux.HandleFunc("GET /trailer", handleTrailer)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{
			"running": st.running.Load(),
			"peak":    st.peak.Load(),
			"total":   st.total.Load(),
		})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stats" {
			st.begin()
			defer st.end()
		}
		mux.ServeHTTP(w, r)
	})
}

const indexText = `sample-app: a stand-in for an expensive job behind a reverse_http pool.

GET  /hello                 a greeting; X-Request-Id comes back as X-Seen-Request-Id
GET  /sleep?ms=N            sleeps N ms, then "slept N ms"
POST /sha256                {"bytes":N,"sha256":"hex"} of the streamed request body
GET  /bytes?n=N             N bytes, byte i = i%251
GET  /stream?chunks=N&ms=M  N lines "chunk i", flushed one by one, M ms apart
GET  /headers               the request headers and Host, sorted
GET  /status?code=N         a response with status N
GET  /trailer               a body with the trailer X-Checksum: done
GET  /stats                 {"running":n,"peak":n,"total":n} of the other requests
`

func handleIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, indexText)
}

func handleSleep(w http.ResponseWriter, r *http.Request) {
	ms, ok := intParam(w, r, "ms", 0, 0, int64(time.Hour/time.Millisecond))
	if !ok {
		return
	}
	if err := pause(r.Context(), time.Duration(ms)*time.Millisecond); err != nil {
		return // the consumer went away
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "slept %d ms\n", ms)
}

func handleSHA256(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	}{n, hex.EncodeToString(h.Sum(nil))})
}

// patternBlock holds whole periods of the /bytes pattern, so writing it
// again and again continues the pattern.
var patternBlock = func() []byte {
	b := make([]byte, 251*128)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

func handleBytes(w http.ResponseWriter, r *http.Request) {
	n, ok := intParam(w, r, "n", 0, 0, 1<<40)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	for n > 0 {
		chunk := patternBlock[:min(n, int64(len(patternBlock)))]
		if _, err := w.Write(chunk); err != nil {
			return
		}
		n -= int64(len(chunk))
	}
}

func handleStream(w http.ResponseWriter, r *http.Request) {
	chunks, ok := intParam(w, r, "chunks", 5, 0, 1_000_000)
	if !ok {
		return
	}
	ms, ok := intParam(w, r, "ms", 200, 0, int64(time.Hour/time.Millisecond))
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff") // lets browsers render as it arrives
	rc := http.NewResponseController(w)
	for i := range chunks {
		if i > 0 {
			if err := pause(r.Context(), time.Duration(ms)*time.Millisecond); err != nil {
				return
			}
		}
		if _, err := fmt.Fprintf(w, "chunk %d\n", i); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func handleHeaders(w http.ResponseWriter, r *http.Request) {
	lines := []string{"Host: " + r.Host}
	for name, values := range r.Header {
		for _, v := range values {
			lines = append(lines, name+": "+v)
		}
	}
	slices.Sort(lines)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, strings.Join(lines, "\n")+"\n")
}

func handleStatus(w http.ResponseWriter, r *http.Request) {
	code, ok := intParam(w, r, "code", 200, 200, 599)
	if !ok {
		return
	}
	if code == http.StatusNoContent || code == http.StatusNotModified {
		w.WriteHeader(int(code))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(int(code))
	fmt.Fprintf(w, "status %d\n", code)
}

func handleTrailer(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Trailer", "X-Checksum")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "this body is followed by the trailer X-Checksum\n")
	w.Header().Set("X-Checksum", "done")
}

// intParam reads the integer query parameter name, def when absent, and
// answers 400 when it is malformed or outside [lo, hi].
func intParam(w http.ResponseWriter, r *http.Request, name string, def, lo, hi int64) (int64, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		http.Error(w, fmt.Sprintf("%s must be an integer from %d to %d, not %q", name, lo, hi, s), http.StatusBadRequest)
		return 0, false
	}
	return n, true
}

// pause waits d or until ctx is done, whichever comes first.
func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
