package worker

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Tunables; variables so that tests may shorten them.
var (
	backoffMin       = 100 * time.Millisecond
	backoffMax       = 10 * time.Second
	dialTimeout      = 30 * time.Second
	handshakeTimeout = 30 * time.Second
	// A connection that the hub closes sooner than this without having
	// sent a job is counted as a failed attempt, so that a hub which
	// accepts and hangs up at once is not redialled in a tight loop.
	minHealthyLife = 5 * time.Second
)

// maxReasonBytes bounds how much of a rejection body is read.
const maxReasonBytes = 1024

// backoff returns the delay before retry number attempt (0-based):
// "full jitter", uniformly random in [0, min(backoffMax, backoffMin*2^attempt)).
func backoff(attempt int) time.Duration {
	ceiling := backoffMax
	if attempt < 30 {
		if d := backoffMin << attempt; d > 0 && d < backoffMax {
			ceiling = d
		}
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

// hubListener is the net.Listener given to http.Server.Serve. Each slot
// goroutine dials and handshakes on its own and hands the connection over
// through conns; Accept just takes the next one.
type hubListener struct {
	w       *Worker
	conns   chan *hubConn
	closed  chan struct{}
	once    sync.Once
	ctx     context.Context // cancelled by Close; aborts dials and backoffs
	cancel  context.CancelFunc
	address hubAddr
}

func newHubListener(w *Worker) *hubListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &hubListener{
		w:       w,
		conns:   make(chan *hubConn),
		closed:  make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
		address: hubAddr(w.cfg.Hub),
	}
}

// Accept returns the next connection that has completed its handshake, or
// net.ErrClosed once the listener is closed.
func (l *hubListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops dialling. Connections already handed out are not affected.
func (l *hubListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.cancel()
	})
	return nil
}

func (l *hubListener) Addr() net.Addr { return l.address }

// hubAddr names the hub as the listener's address.
type hubAddr string

func (a hubAddr) Network() string { return "tcp" }
func (a hubAddr) String() string  { return string(a) }

// hubConn is a connection to the hub, as served by http.Server.
type hubConn struct {
	net.Conn
	// br holds what was read past the handshake response, which may be
	// the start of the first job; Read drains it before the socket.
	// Nil with the pothead protocol.
	br *bufio.Reader

	released  chan struct{} // closed by the first Close: the slot is free
	closeOnce sync.Once
	start     time.Time
	jobs      atomic.Int64 // requests seen (StateActive transitions)
}

func (c *hubConn) Read(p []byte) (int, error) {
	if c.br != nil && c.br.Buffered() > 0 {
		return c.br.Read(p)
	}
	return c.Conn.Read(p)
}

// Close closes the socket and frees the connection's slot, exactly once.
func (c *hubConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.released) })
	return err
}

// slotLoop keeps one connection to the hub open for as long as the listener
// is: it dials, hands the connection to Accept, waits for it to be closed,
// and dials again. Failures are retried with backoff; a rejection of the
// very first handshake is sent to fatal and ends the loop.
func (w *Worker) slotLoop(l *hubListener, slot int, fatal chan<- error) {
	log := w.log.With("slot", slot)
	attempt := 0
	wait := func(d time.Duration) bool {
		if d <= 0 {
			return l.ctx.Err() == nil
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-l.ctx.Done():
			return false
		}
	}
	for l.ctx.Err() == nil && !w.stopping.Load() {
		c, err := w.connect(l.ctx)
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var he *HandshakeError
			if errors.As(err, &he) && fatalStatus(he.Status) && !w.everConnected.Load() {
				log.Error("handshake rejected", "hub", w.cfg.Hub, "pool", w.cfg.Pool, "status", he.Status, "reason", he.Reason)
				select {
				case fatal <- he:
				default:
				}
				return
			}
			d := backoff(attempt)
			attempt++
			log.Warn("cannot connect to hub", "hub", w.cfg.Hub, "pool", w.cfg.Pool, "err", err, "retry_in", d.Round(time.Millisecond))
			if !wait(d) {
				return
			}
			continue
		}
		w.everConnected.Store(true)
		w.connected.Add(1)
		log.Debug("connected", "hub", w.cfg.Hub, "pool", w.cfg.Pool, "local", c.LocalAddr())

		select {
		case l.conns <- c:
		case <-l.closed:
			c.Close()
		}
		<-c.released // every path closes c: the server, the drain, or above
		w.connected.Add(-1)
		jobs := c.jobs.Load()
		lived := time.Since(c.start)
		log.Debug("disconnected", "hub", w.cfg.Hub, "jobs", jobs, "after", lived.Round(time.Millisecond))

		if jobs > 0 || lived >= minHealthyLife {
			attempt = 0 // healthy: redial at once
			continue
		}
		d := backoff(attempt)
		attempt++
		log.Debug("hub closed a fresh connection without a job", "retry_in", d.Round(time.Millisecond))
		if !wait(d) {
			return
		}
	}
}

// connect dials the hub and, for ptth, performs the handshake.
func (w *Worker) connect(ctx context.Context) (*hubConn, error) {
	nd := &net.Dialer{
		Timeout: dialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     15 * time.Second,
			Interval: 5 * time.Second,
			Count:    3,
		},
	}
	var (
		conn net.Conn
		err  error
	)
	if w.cfg.TLS != nil {
		td := &tls.Dialer{NetDialer: nd, Config: w.cfg.TLS}
		conn, err = td.DialContext(ctx, "tcp", w.cfg.Hub)
	} else {
		conn, err = nd.DialContext(ctx, "tcp", w.cfg.Hub)
	}
	if err != nil {
		return nil, err
	}
	c := &hubConn{Conn: conn, released: make(chan struct{}), start: time.Now()}
	if w.cfg.Protocol == ProtocolPothead {
		return c, nil
	}
	br, err := w.handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.br = br
	return c, nil
}

// handshake sends the PTTH upgrade request and reads the hub's answer. It
// returns the reader holding any bytes that followed the 101 response.
func (w *Worker) handshake(ctx context.Context, conn net.Conn) (*bufio.Reader, error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var b strings.Builder
	fmt.Fprintf(&b, "GET /%s HTTP/1.1\r\n", url.PathEscape(w.cfg.Pool))
	fmt.Fprintf(&b, "Host: %s\r\n", w.cfg.Hub)
	b.WriteString("Connection: Upgrade\r\n")
	b.WriteString("Upgrade: " + UpgradeToken + "\r\n")
	if w.cfg.Token != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", w.cfg.Token)
	}
	if w.cfg.Name != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", WorkerHeader, w.cfg.Name)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, fmt.Errorf("sending handshake: %w", err)
	}

	br := bufio.NewReader(conn)
	req := &http.Request{Method: http.MethodGet}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("reading handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonBytes))
		resp.Body.Close()
		return nil, &HandshakeError{Status: resp.StatusCode, Reason: strings.TrimSpace(string(reason))}
	}
	// A 101 response has no body, so br now holds only what follows it.
	stop()
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return br, nil
}
