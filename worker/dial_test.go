package worker

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestHandshakeResponseBound: a hub whose answer to the handshake is longer
// than maxHandshakeResponse is not read to its end; the attempt fails and
// is retried. An answer just under the bound is fine.
func TestHandshakeResponseBound(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	var padding atomic.Int64
	padding.Store(maxHandshakeResponse) // the 101 with this header crosses the bound
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n"+
					"X-Padding: "+strings.Repeat("x", int(padding.Load()))+"\r\n\r\n")
			}()
		}
	}()
	logger, logs := capturingLogger(t)
	rw := startWorkerAt(t, ln.Addr().String(), Config{Logger: logger, Handler: pathHandler()})
	eventually(t, "a failed attempt", func() bool { return logs.count("longer than 16384 bytes") >= 1 })
	if rw.Connected() != 0 {
		t.Fatal("connected through an oversized answer")
	}

	padding.Store(maxHandshakeResponse - 200)
	eventually(t, "a connection through an answer under the bound", func() bool { return rw.Connected() == 1 })
}
