package reversehttp

import (
	"bufio"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/reversehttp/reverse_http/worker"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// workerListener accepts worker connections on one address. Pools that share
// the address are told apart by the handshake's target.
type workerListener struct {
	addr      caddy.NetworkAddress
	pools     map[string]*poolEntry // ptth pools by name
	bare      *poolEntry            // the pothead pool, which owns its address
	tlsConfig *tls.Config
	timeout   time.Duration
	logger    *zap.Logger

	ln   net.Listener
	done sync.WaitGroup
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
	tlsOf := make(map[string]string) // address -> the tls config it uses, as JSON
	for _, name := range sortedKeys(a.Pools) {
		pc := a.Pools[name]
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
				wl = &workerListener{addr: na, pools: make(map[string]*poolEntry), logger: a.logger}
				byAddr[key] = wl
				order = append(order, key)
			}
			entry := &poolEntry{pool: a.pools[name], config: pc}
			if pc.Protocol == worker.ProtocolPothead || wl.bare != nil {
				if len(wl.pools) > 0 || wl.bare != nil {
					return nil, fmt.Errorf("pool %s: listen %s is shared with another pool, but a pothead pool needs an address of its own", name, l)
				}
			}
			if pc.Protocol == worker.ProtocolPothead {
				wl.bare = entry
			} else {
				wl.pools[name] = entry
			}
			tlsJSON, _ := json.Marshal(pc.TLS)
			if prev, ok := tlsOf[key]; ok && prev != string(tlsJSON) {
				return nil, fmt.Errorf("pool %s: listen %s is shared with a pool whose tls settings differ; pools on one address need the same tls block", name, l)
			}
			tlsOf[key] = string(tlsJSON)
			if t := time.Duration(pc.HandshakeTimeout); t > wl.timeout {
				wl.timeout = t
			}
			if pc.TLS != nil && wl.tlsConfig == nil {
				if wl.tlsConfig, err = poolTLSConfig(ctx, pc.TLS); err != nil {
					return nil, fmt.Errorf("pool %s: tls: %v", name, err)
				}
			}
		}
	}
	listeners := make([]*workerListener, 0, len(order))
	for _, key := range order {
		listeners = append(listeners, byAddr[key])
	}
	return listeners, nil
}

func poolTLSConfig(ctx caddy.Context, pt *PoolTLS) (*tls.Config, error) {
	if len(pt.Hostnames) == 0 {
		return nil, errors.New("hostnames is required: the names to serve certificates for")
	}
	cp := &caddytls.ConnectionPolicy{
		ClientAuthentication: pt.ClientAuth,
		DefaultSNI:           pt.Hostnames[0],
		ALPN:                 []string{"http/1.1"},
	}
	policies := caddytls.ConnectionPolicies{cp}
	if err := policies.Provision(ctx); err != nil {
		return nil, err
	}
	return policies.TLSConfig(ctx), nil
}

func (wl *workerListener) start(ctx caddy.Context) error {
	lnAny, err := wl.addr.Listen(ctx, 0, net.ListenConfig{KeepAliveConfig: workerKeepAlive})
	if err != nil {
		return fmt.Errorf("worker listener %s: %v", wl.addr, err)
	}
	ln, ok := lnAny.(net.Listener)
	if !ok {
		return fmt.Errorf("worker listener %s: not a stream listener", wl.addr)
	}
	wl.ln = ln
	wl.logger.Info("worker listener started", zap.String("address", ln.Addr().String()), zap.Strings("pools", wl.poolNames()))
	wl.done.Add(1)
	go wl.serve()
	return nil
}

// workerKeepAlive notices a worker host that vanished without a FIN.
var workerKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

func (wl *workerListener) stop() {
	if wl.ln == nil {
		return
	}
	wl.ln.Close()
	wl.done.Wait()
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
		go wl.handshake(conn)
	}
}

// handshake admits conn to a pool, or answers why not and closes it.
func (wl *workerListener) handshake(conn net.Conn) {
	remote := conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(wl.timeout))
	if wl.tlsConfig != nil {
		tc := tls.Server(conn, wl.tlsConfig)
		if err := tc.Handshake(); err != nil {
			wl.logger.Warn("worker TLS handshake failed", zap.String("remote", remote), zap.Error(err))
			conn.Close()
			return
		}
		conn = tc
	}
	if wl.bare != nil {
		_ = conn.SetDeadline(time.Time{})
		// A POTHEAD worker's server answers 100 Continue before it calls
		// the app: its 100 means what the accept feature's does.
		wl.bare.pool.add(conn, nil, workerInfo{features: features{accept: true}})
		wl.logger.Debug("worker connected", zap.String("pool", wl.bare.pool.name), zap.String("remote", remote))
		return
	}

	// A handshake is a few hundred bytes: a small reader keeps thousands of
	// workers dialling in at once from costing much (longer lines still
	// parse). The pool lets it go once the handshake is done.
	br := bufio.NewReaderSize(conn, 1024)
	req, err := http.ReadRequest(br)
	if err == io.EOF {
		// Closed before a byte was sent: a worker stopping mid-dial, or a
		// port check. Nothing to answer.
		wl.logger.Debug("connection closed before its handshake", zap.String("remote", remote))
		conn.Close()
		return
	}
	if err != nil {
		wl.reject(conn, remote, "", http.StatusBadRequest, "malformed handshake: "+err.Error())
		return
	}
	if req.ContentLength != 0 {
		wl.reject(conn, remote, "", http.StatusBadRequest, "a handshake has no body")
		return
	}
	if !httpguts.HeaderValuesContainsToken(req.Header["Upgrade"], worker.UpgradeToken) ||
		!httpguts.HeaderValuesContainsToken(req.Header["Connection"], "upgrade") {
		wl.reject(conn, remote, "", http.StatusBadRequest, "expected a handshake with Connection: Upgrade and Upgrade: "+worker.UpgradeToken)
		return
	}
	name, err := url.PathUnescape(strings.TrimPrefix(req.URL.Path, "/"))
	if err != nil {
		name = req.URL.Path
	}
	entry := wl.pools[name]
	if entry == nil {
		wl.reject(conn, remote, name, http.StatusNotFound, fmt.Sprintf("no pool %q on this listener", name))
		return
	}
	if status, reason := checkToken(entry.config.tokens, req.Header.Get("Authorization")); status != 0 {
		wl.reject(conn, remote, name, status, reason)
		return
	}
	resp := &http.Response{
		StatusCode: http.StatusSwitchingProtocols,
		ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {worker.UpgradeToken}},
	}
	var feats features
	if httpguts.HeaderValuesContainsToken(req.Header[worker.FeaturesHeader], worker.FeatureAccept) {
		feats.accept = true
		resp.Header.Add(worker.FeaturesHeader, worker.FeatureAccept)
	}
	if httpguts.HeaderValuesContainsToken(req.Header[worker.FeaturesHeader], worker.FeatureReady) {
		feats.ready = true
		resp.Header.Add(worker.FeaturesHeader, worker.FeatureReady)
	}
	if err := resp.Write(conn); err != nil {
		wl.logger.Debug("worker left during handshake", zap.String("remote", remote), zap.Error(err))
		conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	workerName := req.Header.Get(worker.WorkerHeader)
	entry.pool.add(conn, br, workerInfo{name: workerName, features: feats})
	wl.logger.Debug("worker connected", zap.String("pool", name), zap.String("remote", remote), zap.String("worker", workerName))
}

// checkToken returns 0 when the Authorization header admits the worker, or
// the status and reason to reject it with.
func checkToken(tokens [][]byte, authz string) (int, string) {
	if len(tokens) == 0 {
		return 0, ""
	}
	scheme, given, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || given == "" {
		return http.StatusUnauthorized, "a bearer token is required"
	}
	match := 0
	for _, t := range tokens {
		match |= subtle.ConstantTimeCompare(t, []byte(given))
	}
	if match == 0 {
		return http.StatusForbidden, "the token is not valid for this pool"
	}
	return 0, ""
}

func (wl *workerListener) reject(conn net.Conn, remote, pool string, status int, reason string) {
	wl.logger.Warn("worker handshake rejected",
		zap.String("remote", remote), zap.String("pool", pool), zap.Int("status", status), zap.String("reason", reason))
	resp := &http.Response{
		StatusCode:    status,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(reason + "\n")),
		ContentLength: int64(len(reason) + 1),
		Close:         true,
	}
	if status == http.StatusUnauthorized {
		resp.Header.Set("WWW-Authenticate", `Bearer realm="reverse_http"`)
	}
	_ = resp.Write(conn)
	conn.Close()
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
