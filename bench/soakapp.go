package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// The "soak-serve" role runs the soak's job handler in a child process:
// as the application behind reverse-http-worker binaries (--listen), or in
// a worker process through the worker package (--hub). Either way every
// execution is appended to one log file shared by all of them (--log), so
// that the record of a job survives the SIGKILL of the process that ran it.
//
//	GET|POST /job?id=ID&ms=N&read=early|late&out=BYTES
//
// It logs the start, works for N ms and answers one line "ID TAG SIZE CRC"
// (the request body's length and CRC-32) followed by BYTES filler bytes.
// read=early reads the body before the work, read=late after it, as a job
// that looks at its input only once it has set itself up. Behind a worker
// binary the path begins with /w/TAG, the worker process's tag (its
// --upstream URL), which is how the application knows who ran the job.
func soakServeMain(args []string) error {
	fs := flag.NewFlagSet("soak-serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "plain HTTP `ADDRESS` to serve on (the application behind worker binaries)")
	hub := fs.String("hub", "", "`HOST:PORT` of a hub to serve jobs from (a worker process)")
	pool := fs.String("pool", "", "pool `NAME` to join")
	token := fs.String("token", "", "bearer `TOKEN`")
	slots := fs.Int("slots", 1, "worker `N` slots")
	tag := fs.String("tag", "", "this worker process's `TAG` in the execution log")
	logPath := fs.String("log", "", "execution log `FILE`, appended to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*listen == "") == (*hub == "") {
		return errors.New("give one of --listen and --hub")
	}
	xlog, err := openExecLog(*logPath)
	if err != nil {
		return err
	}
	defer xlog.close()
	h := &soakHandler{tag: *tag, log: xlog}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h}
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
		fmt.Println("ready")
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			return err
		}
		return nil
	}
	w, err := worker.New(worker.Config{
		Hub: *hub, Pool: *pool, Token: *token, Name: *tag, Slots: *slots, Handler: h,
		DrainTimeout: 5 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	for w.Connected() < *slots {
		select {
		case err := <-errc:
			return err
		case <-time.After(2 * time.Millisecond):
		}
	}
	fmt.Println("ready")
	return <-errc
}

// soakHandler is the soak's job.
type soakHandler struct {
	tag string // "" behind worker binaries: the path carries it
	log *execLog
}

func (h *soakHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tag, path := h.tag, r.URL.Path
	if tag == "" {
		rest, ok := strings.CutPrefix(path, "/w/")
		if !ok {
			http.Error(w, "no worker tag in the path", http.StatusBadRequest)
			return
		}
		tag, path, _ = strings.Cut(rest, "/")
		path = "/" + path
	}
	if path != "/job" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	id := q.Get("id")
	ms, _ := strconv.Atoi(q.Get("ms"))
	out, _ := strconv.Atoi(q.Get("out"))
	if id == "" || strings.ContainsAny(id, " \n") || ms < 0 || out < 0 || out > len(fillerBytes) {
		http.Error(w, "bad job", http.StatusBadRequest)
		return
	}
	h.log.add(execStart, id, tag)
	var size int64
	var sum uint32
	readBody := func() error {
		c := crc32.NewIEEE()
		n, err := io.Copy(c, r.Body)
		size, sum = n, c.Sum32()
		return err
	}
	if q.Get("read") != "late" {
		if err := readBody(); err != nil {
			return
		}
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
		return
	}
	if q.Get("read") == "late" {
		if err := readBody(); err != nil {
			return
		}
	}
	line := fmt.Sprintf("%s %s %d %08x\n", id, tag, size, sum)
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(line)+out))
	io.WriteString(w, line)
	if out > 0 {
		if _, err := w.Write(fillerBytes[:out]); err != nil {
			return
		}
	}
	h.log.add(execEnd, id, tag)
}

// fillerBytes pad responses; the consumer checks only their length.
var fillerBytes = func() []byte {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

// Records of the execution log.
const (
	execStart = 'S' // a job began to run
	execEnd   = 'E' // a job answered in full
)

// execLog appends one line per event to a file that every process serving
// jobs shares. Each line is one write(2) to a file opened with O_APPEND,
// so lines from several processes never interleave and a line written
// before a SIGKILL is kept.
type execLog struct {
	mu sync.Mutex
	f  *os.File
}

func openExecLog(path string) (*execLog, error) {
	if path == "" {
		return nil, errors.New("an execution log (--log) is required")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &execLog{f: f}, nil
}

// add records an event "S|E ID TAG UNIXNANO".
func (l *execLog) add(kind byte, id, tag string) {
	line := fmt.Sprintf("%c %s %s %d\n", kind, id, tag, time.Now().UnixNano())
	l.mu.Lock()
	l.f.WriteString(line)
	l.mu.Unlock()
}

func (l *execLog) close() { l.f.Close() }

// execution is one run of a job, as the execution log tells it.
type execution struct {
	tag   string
	start time.Time
	end   time.Time // when it answered in full; zero if it did not
}

// readExecLog returns the executions of each job id, in the order they
// started. A line cut short (it cannot be, see execLog) is skipped.
func readExecLog(r io.Reader) (map[string][]execution, error) {
	runs := make(map[string][]execution)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || len(f[0]) != 1 {
			continue
		}
		ns, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			continue
		}
		id, tag := f[1], f[2]
		switch f[0][0] {
		case execStart:
			runs[id] = append(runs[id], execution{tag: tag, start: time.Unix(0, ns)})
		case execEnd:
			for i := range runs[id] {
				if runs[id][i].tag == tag && runs[id][i].end.IsZero() {
					runs[id][i].end = time.Unix(0, ns)
					break
				}
			}
		}
	}
	return runs, sc.Err()
}
