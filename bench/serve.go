package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// The "serve" role runs in a child process of the benchmark: the
// application under test, served over plain HTTP (--listen), through the
// worker package dialling in to a hub (--hub), or both at once. Every
// system measured runs the same handler code.
//
// Endpoints:
//
//	GET  /tiny              1 KiB, no work
//	GET  /job?ms=N          sleeps N ms × --speed; with --serial one job at a
//	                        time, later ones wait inside in arrival order
//	POST /upload            streams the body through SHA-256, answers the digest
//	GET  /download?bytes=N  N bytes with Content-Length
//	GET  /jobs              how many /job requests the app has run
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "plain HTTP `ADDRESS` to serve on")
	listenUnix := fs.String("listen-unix", "", "plain HTTP on the unix socket `PATH` too")
	hub := fs.String("hub", "", "`HOST:PORT` of a hub to serve jobs from")
	pool := fs.String("pool", "", "pool `NAME` to join")
	token := fs.String("token", "", "bearer `TOKEN`")
	slots := fs.Int("slots", 8, "worker `N` slots")
	protocol := fs.String("protocol", worker.ProtocolPTTH, "ptth or pothead")
	speed := fs.Float64("speed", 1, "multiplier for /job durations (2 = twice as slow)")
	serial := fs.Bool("serial", false, "run /job requests one at a time, in arrival order")
	if err := fs.Parse(args); err != nil {
		return err
	}
	h := newBenchApp(*speed, *serial)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for _, l := range []struct{ network, addr string }{{"tcp", *listen}, {"unix", *listenUnix}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen(l.network, l.addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != http.ErrServerClosed {
				errc <- err
			}
		}()
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
	}
	var w *worker.Worker
	if *hub != "" {
		var err error
		w, err = worker.New(worker.Config{
			Hub:      *hub,
			Pool:     *pool,
			Token:    *token,
			Name:     "-",
			Slots:    *slots,
			Protocol: *protocol,
			Handler:  h,
			Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(ctx); err != nil {
				errc <- err
			}
		}()
		// Ready once every slot is connected (pothead slots connect
		// without a handshake, so this is the dial).
		for w.Connected() < *slots {
			select {
			case err := <-errc:
				return err
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	fmt.Println("ready")
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case err := <-errc:
		return err
	case <-done:
		return nil
	}
}

// overrunHeader carries, in µs, how much longer a /job took than asked.
const overrunHeader = "Bench-Overrun-Us"

type benchApp struct {
	jobs   atomic.Int64
	speed  float64
	serial *fifoLock
	tiny   []byte
	block  []byte
}

func newBenchApp(speed float64, serial bool) *benchApp {
	a := &benchApp{speed: speed, tiny: make([]byte, 1024), block: make([]byte, 256<<10)}
	for i := range a.tiny {
		a.tiny[i] = 'a' + byte(i%26)
	}
	for i := range a.block {
		a.block[i] = byte(i % 251)
	}
	if serial {
		a.serial = &fifoLock{}
	}
	return a
}

func (a *benchApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/tiny":
		w.Header().Set("Content-Type", "text/plain")
		w.Write(a.tiny)
	case "/jobs":
		fmt.Fprintln(w, a.jobs.Load())
	case "/job":
		a.jobs.Add(1)
		ms, err := strconv.ParseFloat(r.URL.Query().Get("ms"), 64)
		if err != nil || ms < 0 {
			http.Error(w, "bad ms", http.StatusBadRequest)
			return
		}
		if a.serial != nil {
			if !a.serial.lock(r.Context()) {
				return
			}
			defer a.serial.unlock()
		}
		want := time.Duration(ms * a.speed * float64(time.Millisecond))
		start := time.Now()
		t := time.NewTimer(want)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
		// How much longer than asked the job took (the timer's lateness
		// on a busy machine), for the ideal queue on measured times.
		w.Header().Set(overrunHeader, strconv.FormatInt(int64(time.Since(start)-want)/1000, 10))
		io.WriteString(w, "done\n")
	case "/upload":
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	case "/download":
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad bytes", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			b := a.block
			if int64(len(b)) > n {
				b = b[:n]
			}
			if _, err := w.Write(b); err != nil {
				return
			}
			n -= int64(len(b))
		}
	default:
		http.NotFound(w, r)
	}
}

// fifoLock is a mutex that admits waiters strictly in arrival order, the
// way a single-threaded server works through its accept queue.
type fifoLock struct {
	mu      sync.Mutex
	held    bool
	waiting []chan struct{}
}

// lock waits for the lock; it reports false if ctx ended first.
func (l *fifoLock) lock(ctx context.Context) bool {
	l.mu.Lock()
	if !l.held {
		l.held = true
		l.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	l.waiting = append(l.waiting, ch)
	l.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		l.mu.Lock()
		for i, c := range l.waiting {
			if c == ch {
				l.waiting = append(l.waiting[:i], l.waiting[i+1:]...)
				l.mu.Unlock()
				return false
			}
		}
		l.mu.Unlock()
		// Handed the lock as we gave up: pass it on.
		l.unlock()
		return false
	}
}

func (l *fifoLock) unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiting) == 0 {
		l.held = false
		return
	}
	ch := l.waiting[0]
	l.waiting = l.waiting[1:]
	close(ch)
}
