package reversehttp

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reversehttp/reverse_http/worker"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

// workerListener accepts worker connections on one address. Pools that share
// the address are told apart by the handshake's target.
type workerListener struct {
	addr          caddy.NetworkAddress
	listen        string                // addr as the first pool gave it
	first         string                // the first pool that listens on addr
	pools         map[string]*poolEntry // ptth pools by name
	bare          *poolEntry            // the pothead pool, which owns its address
	tlsConfig     *tls.Config
	tlsJSON       string // the tls block of its pools, which must agree
	timeout       time.Duration
	maxHandshakes int
	logger        *zap.Logger
	// sampled logs what any peer can make the listener log.
	sampled *logSampler

	ln         net.Listener
	done       sync.WaitGroup
	handshakes atomic.Int64 // in progress
	refused    atomic.Int64 // connections closed at once: too many handshakes in progress
	// inherits says whether accepted connections come with the listening
	// socket's keepalive settings: 0 before the first connection, then 1
	// or -1. The accept loop's own.
	inherits int8

	mu     sync.Mutex
	closed bool // admits no more connections to its pools
}

type poolEntry struct {
	pool   *Pool
	config *PoolConfig
}

// planListeners groups the pools by listen address and checks that pools
// sharing an address can share it.
func (a *App) planListeners(ctx caddy.Context) ([]*workerListener, error) {
	byAddr := make(map[string]*workerListener)
	var order []string
	for _, name := range sortedKeys(a.Pools) {
		pc := a.Pools[name]
		tlsJSON, _ := json.Marshal(pc.TLS)
		if pc.TLS != nil {
			var err error
			if pc.tlsServer, pc.tlsPolicy, err = poolTLSConfig(ctx, pc.TLS); err != nil {
				return nil, fmt.Errorf("pool %s: tls: %v", name, err)
			}
		}
		for _, l := range pc.Listen {
			na, err := caddy.ParseNetworkAddress(l)
			if err != nil {
				return nil, fmt.Errorf("pool %s: listen %s: %v", name, l, err)
			}
			if na.PortRangeSize() != 1 {
				return nil, fmt.Errorf("pool %s: listen %s: give one port, not a range", name, l)
			}
			key := na.String()
			wl := byAddr[key]
			if wl == nil {
				if err := overlapsListener(name, l, na, byAddr); err != nil {
					return nil, err
				}
				wl = &workerListener{
					addr: na, listen: l, first: name, pools: make(map[string]*poolEntry), logger: a.logger,
					sampled: newLogSampler(a.logger, sampleBurst, sampleInterval),
					timeout: time.Duration(pc.HandshakeTimeout), maxHandshakes: pc.MaxHandshakes,
					tlsConfig: pc.tlsServer, tlsJSON: string(tlsJSON),
				}
				byAddr[key] = wl
				order = append(order, key)
			} else if err := wl.canShare(name, l, pc, string(tlsJSON)); err != nil {
				return nil, err
			}
			entry := &poolEntry{pool: a.pools[name], config: pc}
			if pc.Protocol == worker.ProtocolPothead {
				wl.bare = entry
			} else {
				wl.pools[name] = entry
			}
		}
	}
	listeners := make([]*workerListener, 0, len(order))
	for _, key := range order {
		listeners = append(listeners, byAddr[key])
	}
	return listeners, nil
}

// canShare checks that pool name, with config pc, may join wl: the
// settings that are the listener's must agree with its first pool's.
func (wl *workerListener) canShare(name, l string, pc *PoolConfig, tlsJSON string) error {
	first := wl.first
	if _, dup := wl.pools[name]; dup || (wl.bare != nil && first == name) {
		return fmt.Errorf("pool %s: listen %s is given twice", name, l)
	}
	if pc.Protocol == worker.ProtocolPothead || wl.bare != nil {
		return fmt.Errorf("pool %s: listen %s is shared with pool %s, but a pothead pool needs an address of its own", name, l, first)
	}
	if tlsJSON != wl.tlsJSON {
		return fmt.Errorf("pool %s: listen %s is shared with pool %s, whose tls settings differ; pools on one address need the same tls block", name, l, first)
	}
	if t := time.Duration(pc.HandshakeTimeout); t != wl.timeout {
		return fmt.Errorf("pool %s: listen %s is shared with pool %s, whose handshake_timeout differs (%v, not %v); pools on one address need the same handshake_timeout", name, l, first, wl.timeout, t)
	}
	if pc.MaxHandshakes != wl.maxHandshakes {
		return fmt.Errorf("pool %s: listen %s is shared with pool %s, whose max_handshakes differs (%d, not %d); pools on one address need the same max_handshakes", name, l, first, wl.maxHandshakes, pc.MaxHandshakes)
	}
	return nil
}

// poolTLSConfig provisions the TLS of a pool's listeners. It returns the
// listener's config and that of its one connection policy, which holds the
// client authentication.
func poolTLSConfig(ctx caddy.Context, pt *PoolTLS) (server, policy *tls.Config, err error) {
	if len(pt.Hostnames) == 0 {
		return nil, nil, errors.New("hostnames is required: the names to serve certificates for")
	}
	cp := &caddytls.ConnectionPolicy{
		ClientAuthentication: pt.ClientAuth,
		DefaultSNI:           pt.Hostnames[0],
		ALPN:                 []string{"http/1.1"},
	}
	policies := caddytls.ConnectionPolicies{cp}
	if err := policies.Provision(ctx); err != nil {
		return nil, nil, err
	}
	return policies.TLSConfig(ctx), cp.TLSConfig, nil
}

// start opens the listener. kept says that the previous config served the
// address already, so nothing new opens as far as an operator can tell.
func (wl *workerListener) start(ctx caddy.Context, kept bool) error {
	lnAny, err := wl.addr.Listen(ctx, 0, workerListenConfig())
	if err != nil {
		return fmt.Errorf("worker listener %s: %v", wl.addr, err)
	}
	ln, ok := lnAny.(net.Listener)
	if !ok {
		return fmt.Errorf("worker listener %s: not a stream listener", wl.addr)
	}
	level := zap.InfoLevel
	if kept {
		level = zap.DebugLevel
	}
	if c := wl.logger.Check(level, "worker listener started"); c != nil {
		c.Write(zap.String("address", ln.Addr().String()), zap.Strings("pools", wl.poolNames()))
	}
	wl.serveOn(ln)
	return nil
}

// serveOn accepts worker connections from ln until stop.
func (wl *workerListener) serveOn(ln net.Listener) {
	wl.ln = ln
	wl.done.Add(1)
	go wl.serve()
}

// workerKeepAlive notices a worker host that vanished without a FIN.
var workerKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

// closeAdmission makes the listener admit no more connections to its pools:
// a handshake that has not yet been admitted is answered 503, and the
// worker dials again, reaching the config that replaces this one.
func (wl *workerListener) closeAdmission() {
	wl.mu.Lock()
	wl.closed = true
	wl.mu.Unlock()
}

func (wl *workerListener) stop() {
	wl.closeAdmission()
	if wl.ln == nil {
		return
	}
	wl.ln.Close()
	wl.done.Wait()
	wl.sampled.stop()
}

func (wl *workerListener) poolNames() []string {
	if wl.bare != nil {
		return []string{wl.bare.pool.name}
	}
	return sortedKeys(wl.pools)
}

func (wl *workerListener) serve() {
	defer wl.done.Done()
	var backoff time.Duration
	for {
		conn, err := wl.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or the like: wait, then carry on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			wl.logger.Error("accepting worker connection", zap.Error(err), zap.Duration("retry_in", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		wl.keepAlive(conn)
		if wl.bare != nil && wl.tlsConfig == nil {
			// A POTHEAD worker says nothing before its job: without TLS
			// there is no handshake to wait for, and its connection joins
			// the pool here rather than on a goroutine of its own. It
			// dials once per job, and that goroutine was a good part of
			// what the hub spent on each.
			wl.admitBare(conn, admission{protocol: worker.ProtocolPothead})
			continue
		}
		if wl.handshakes.Add(1) > int64(wl.maxHandshakes) {
			// Half-open handshakes hold a goroutine each until their
			// timeout; past the cap a connection costs only its accept.
			wl.handshakes.Add(-1)
			conn.Close()
			wl.countHandshake("", resultOverCapacity)
			n := wl.refused.Add(1)
			wl.sampled.Warn("over_capacity", "too many worker handshakes in progress; closed a connection",
				zap.String("remote", conn.RemoteAddr().String()), zap.Int("max_handshakes", wl.maxHandshakes), zap.Int64("refused_total", n))
			continue
		}
		go wl.handshake(conn)
	}
}

// handshake admits conn to a pool, or answers why not and closes it.
func (wl *workerListener) handshake(conn net.Conn) {
	defer wl.handshakes.Add(-1)
	remote := conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(wl.timeout))
	adm := admission{protocol: worker.ProtocolPTTH}
	if wl.tlsConfig != nil {
		tc := tls.Server(conn, wl.tlsConfig)
		if err := tc.Handshake(); err != nil {
			wl.tlsFailed(conn, remote, err)
			return
		}
		adm.tls = true
		adm.peerCerts = tc.ConnectionState().PeerCertificates
		conn = tc
	}
	if wl.bare != nil {
		adm.protocol = worker.ProtocolPothead
		_ = conn.SetDeadline(time.Time{})
		wl.admitBare(conn, adm)
		return
	}

	hs, br, rej := readHandshake(conn)
	if rej == nil {
		var entry *poolEntry
		if entry, rej = admitTo(wl.pools, hs); rej == nil {
			wl.upgrade(conn, br, remote, entry, hs, adm)
			return
		}
	}
	if rej.status == 0 {
		wl.logger.Debug("connection closed before its handshake", zap.String("remote", remote))
		conn.Close()
		return
	}
	wl.reject(conn, remote, hs.pool, rej)
}

// admitBare hands a POTHEAD worker's connection to the pothead pool. A
// POTHEAD worker's server answers 100 Continue before it calls the app: its
// 100 means what the accept feature's does. The pool logs the connection's
// arrival.
func (wl *workerListener) admitBare(conn net.Conn, adm admission) {
	wl.admit(wl.bare, conn, nil, workerInfo{features: features{accept: true}, admission: adm})
}

// keepAlive makes sure conn has the worker keepalive settings. The first
// connection a listener accepts shows whether its socket hands them on
// (see workerListenConfig); where it does not (a listener passed in as a
// file descriptor, or a platform that does not), every connection is given
// them itself. Only the accept loop calls it.
func (wl *workerListener) keepAlive(conn net.Conn) {
	if wl.inherits == 0 {
		wl.inherits = -1
		if hasWorkerKeepAlive(conn) {
			wl.inherits = 1
		}
	}
	if wl.inherits > 0 {
		return
	}
	if kc, ok := conn.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); ok {
		_ = kc.SetKeepAliveConfig(workerKeepAlive)
	}
}

// tlsFailed handles a failed TLS handshake. A plaintext HTTP request, which
// is how a worker dialling without TLS begins, is told what is wrong in
// plaintext, as net/http's server does on an HTTPS port.
func (wl *workerListener) tlsFailed(conn net.Conn, remote string, err error) {
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) && rhe.Conn != nil {
		wl.reject(rhe.Conn, remote, "", reject(http.StatusBadRequest,
			"this worker listener requires TLS, but the worker sent a plaintext request: dial it with TLS"))
		return
	}
	wl.countHandshake("", tlsFailure(err))
	wl.sampled.Warn("tls_failed", "worker TLS handshake failed", zap.String("remote", remote), zap.Error(err))
	conn.Close()
}

// upgrade answers an admitted handshake with 101 and hands conn to its pool.
func (wl *workerListener) upgrade(conn net.Conn, br *bufio.Reader, remote string, entry *poolEntry, hs handshakeRequest, adm admission) {
	wl.mu.Lock()
	closed := wl.closed
	wl.mu.Unlock()
	if closed {
		wl.reject(conn, remote, hs.pool, reject(http.StatusServiceUnavailable, "the hub is reloading its configuration; dial again"))
		return
	}
	if rej := drainedRejection(conn, entry, hs.worker); rej != nil {
		wl.reject(conn, remote, hs.pool, rej)
		return
	}
	resp := &http.Response{
		StatusCode: http.StatusSwitchingProtocols,
		ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {worker.UpgradeToken}},
	}
	if f := hs.features.header(); f != "" {
		resp.Header.Set(worker.FeaturesHeader, f)
	}
	if err := resp.Write(conn); err != nil {
		wl.logger.Debug("worker left during handshake", zap.String("remote", remote), zap.Error(err))
		conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if tok := bearerToken(hs.authz); tok != "" {
		adm.token = []byte(tok)
	}
	wl.admit(entry, conn, br, workerInfo{name: hs.worker, features: hs.features, admission: adm})
}

// admit hands conn to entry's pool unless the listener has closed its
// admission, in which case conn is closed; it reports which.
func (wl *workerListener) admit(entry *poolEntry, conn net.Conn, br *bufio.Reader, info workerInfo) bool {
	wl.mu.Lock()
	defer wl.mu.Unlock()
	if wl.closed {
		conn.Close()
		return false
	}
	entry.pool.add(conn, br, info)
	return true
}

// rejectLinger is how long a rejected connection stays open for its peer
// to read the answer: closing a socket with unread input resets it, and
// the reset can destroy the answer before the peer has read it.
const rejectLinger = 500 * time.Millisecond

// reject answers a handshake with rej and closes the connection.
func (wl *workerListener) reject(conn net.Conn, remote, pool string, rej *rejection) {
	wl.countHandshake(pool, rej.result())
	wl.sampled.Warn("rejected", "worker handshake rejected",
		zap.String("remote", remote), zap.String("pool", pool), zap.Int("status", rej.status), zap.String("reason", rej.reason))
	resp := &http.Response{
		StatusCode:    rej.status,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(rej.reason + "\n")),
		ContentLength: int64(len(rej.reason) + 1),
		Close:         true,
	}
	if rej.status == http.StatusUnauthorized {
		resp.Header.Set("WWW-Authenticate", `Bearer realm="reverse_http"`)
	}
	if resp.Write(conn) == nil {
		// Shut the write side, then discard what the peer still sends
		// until it closes, or for rejectLinger: never buffered, bounded
		// in time.
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = conn.SetReadDeadline(time.Now().Add(rejectLinger))
		_, _ = io.Copy(io.Discard, conn)
	}
	conn.Close()
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
