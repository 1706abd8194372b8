package main

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// soakPaths are the files of a soak in its scratch directory.
type soakPaths struct {
	storage string // Caddy's storage
	access  string // Caddy's access log
	hub     string // the reverse_http app's debug log
	exec    string // the execution log of the job handlers
}

func newSoakPaths(dir string) soakPaths {
	return soakPaths{
		storage: filepath.Join(dir, "caddy-storage"),
		access:  filepath.Join(dir, "access.log"),
		hub:     filepath.Join(dir, "hub.log"),
		exec:    filepath.Join(dir, "executions.log"),
	}
}

// readLog opens path and hands it to read.
func readLog(path string, read func(io.Reader) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return read(f)
}

// readAccessLog returns the X-Request-Id of every request in Caddy's
// access log: the requests its HTTP server read.
func readAccessLog(r io.Reader) (map[string]bool, error) {
	seen := make(map[string]bool)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Request struct {
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil {
			continue
		}
		for _, id := range entry.Request.Headers["X-Request-Id"] {
			seen[id] = true
		}
	}
	return seen, sc.Err()
}

// readHandlerErrors returns, by job id, the error Caddy's log gives for
// each request that failed in the reverse_http handler.
func readHandlerErrors(r io.Reader) (map[string]string, error) {
	errs := make(map[string]string)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Logger  string `json:"logger"`
			Msg     string `json:"msg"`
			Request struct {
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil || entry.Logger != "http.log.error" {
			continue
		}
		for _, id := range entry.Request.Headers["X-Request-Id"] {
			errs[id] = entry.Msg
		}
	}
	return errs, sc.Err()
}

// hubConn is a worker connection the hub's debug log tells of.
type hubConn struct {
	at     time.Time
	worker string // the name it gave: the soak's worker tag
}

// hubLog is what the hub's log tells the soak.
type hubLog struct {
	conns    map[string][]hubConn // by the worker's address, oldest first (a port is used again in time)
	warnings map[string]int       // lines at WARN or above, by message
}

// readHubLog reads the worker connections the hub admitted and counts its
// warnings.
func readHubLog(r io.Reader) (hubLog, error) {
	l := hubLog{conns: make(map[string][]hubConn), warnings: make(map[string]int)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Level  string  `json:"level"`
			TS     float64 `json:"ts"`
			Msg    string  `json:"msg"`
			Remote string  `json:"remote"`
			Worker string  `json:"worker"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil {
			continue
		}
		switch entry.Level {
		case "debug", "info":
		default:
			l.warnings[entry.Msg]++
		}
		if entry.Msg == "worker connected" {
			at := time.Unix(0, int64(entry.TS*1e9))
			l.conns[entry.Remote] = append(l.conns[entry.Remote], hubConn{at: at, worker: entry.Worker})
		}
	}
	return l, sc.Err()
}

// workerOf names the worker whose connection an error of the hub names
// ("read tcp HUB->WORKER: ..."), as it was at t; "" if it names none.
func workerOf(msg string, t time.Time, conns map[string][]hubConn) string {
	i := strings.Index(msg, "->")
	if i < 0 {
		return ""
	}
	addr, _, _ := strings.Cut(msg[i+2:], ":")
	rest := msg[i+2+len(addr):]
	port, _, _ := strings.Cut(strings.TrimPrefix(rest, ":"), ":")
	worker := ""
	for _, c := range conns[addr+":"+port] {
		if !c.at.After(t) {
			worker = c.worker
		}
	}
	return worker
}
