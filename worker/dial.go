package worker

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// maxHandshakeResponse bounds the hub's answer to a handshake, reason
// included; a real one is a few hundred bytes.
const maxHandshakeResponse = 16 << 10

// maxReasonBytes bounds how much of a rejection body is read.
const maxReasonBytes = 1024

// connect dials one address of a hub and, for ptth, performs the
// handshake.
func (w *Worker) connect(ctx context.Context, ep *endpoint) (*hubConn, error) {
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
	var cr *certRequest
	if w.cfg.TLS != nil {
		var cfg *tls.Config
		cfg, cr = watchCertRequest(w.cfg.TLS)
		if cfg.ServerName == "" {
			// The hub's name, not the address dialled.
			cfg.ServerName = ep.hub.host
		}
		td := &tls.Dialer{NetDialer: nd, Config: cfg}
		conn, err = td.DialContext(ctx, "tcp", ep.addr)
	} else {
		conn, err = nd.DialContext(ctx, "tcp", ep.addr)
	}
	if err != nil {
		return nil, cr.wrap(err)
	}
	c := &hubConn{Conn: conn, w: w, ep: ep, released: make(chan struct{}), start: time.Now()}
	if w.cfg.Protocol == ProtocolPothead {
		return c, nil
	}
	sent := time.Now()
	br, features, err := w.handshake(ctx, conn, ep.name)
	if err != nil {
		conn.Close()
		// In TLS 1.3 the hub judges the client certificate after the
		// client's side of the TLS handshake: its verdict comes here.
		return nil, cr.wrap(err)
	}
	ep.noteRTT(time.Since(sent))
	c.br = br
	c.accept = hasFeature(features, FeatureAccept)
	c.ready = hasFeature(features, FeatureReady)
	return c, nil
}

// handshake sends the PTTH upgrade request and reads the hub's answer. It
// returns the reader holding any bytes that followed the 101 response, and
// the 101's headers, which list the features the hub agreed on.
func (w *Worker) handshake(ctx context.Context, conn net.Conn, host string) (*bufio.Reader, http.Header, error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var b strings.Builder
	fmt.Fprintf(&b, "GET /%s HTTP/1.1\r\n", url.PathEscape(w.cfg.Pool))
	fmt.Fprintf(&b, "Host: %s\r\n", host)
	b.WriteString("Connection: Upgrade\r\n")
	b.WriteString("Upgrade: " + UpgradeToken + "\r\n")
	if w.cfg.Token != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", w.cfg.Token)
	}
	if w.cfg.Name != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", WorkerHeader, w.cfg.Name)
	}
	fmt.Fprintf(&b, "%s: %s, %s\r\n", FeaturesHeader, FeatureAccept, FeatureReady)
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, nil, fmt.Errorf("sending handshake: %w", err)
	}

	// The bound holds only for the handshake: once the 101 is read, the
	// connection reads what br holds and then the socket itself.
	lr := &io.LimitedReader{R: conn, N: maxHandshakeResponse}
	br := bufio.NewReader(lr)
	req := &http.Request{Method: http.MethodGet}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if lr.N <= 0 {
			return nil, nil, fmt.Errorf("reading handshake response: longer than %d bytes", maxHandshakeResponse)
		}
		return nil, nil, fmt.Errorf("reading handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonBytes))
		resp.Body.Close()
		return nil, nil, &HandshakeError{Status: resp.StatusCode, Reason: strings.TrimSpace(string(reason))}
	}
	// A 101 response has no body, so br now holds only what follows it.
	stop()
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	return br, resp.Header, nil
}

// certRequest records whether the hub asked for a client certificate in a
// TLS handshake, and whether the worker sent one: a TLS 1.2 hub that finds
// none answers with a bare handshake_failure alert.
type certRequest struct {
	asked, sent atomic.Bool
}

// watchCertRequest returns a copy of cfg that records into a new
// certRequest, choosing the client certificate as crypto/tls would.
func watchCertRequest(cfg *tls.Config) (*tls.Config, *certRequest) {
	cr := &certRequest{}
	c := cfg.Clone()
	get := cfg.GetClientCertificate
	c.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cr.asked.Store(true)
		cert, err := chooseClientCert(cfg, get, cri)
		if cert != nil && len(cert.Certificate) > 0 {
			cr.sent.Store(true)
		}
		return cert, err
	}
	return c, cr
}

func chooseClientCert(cfg *tls.Config, get func(*tls.CertificateRequestInfo) (*tls.Certificate, error), cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if get != nil {
		return get(cri)
	}
	for i := range cfg.Certificates {
		if cri.SupportsCertificate(&cfg.Certificates[i]) == nil {
			return &cfg.Certificates[i], nil
		}
	}
	return new(tls.Certificate), nil // none fits: send none
}

// tlsAttemptError is a failed TLS connection attempt with what is known of
// the client certificate.
type tlsAttemptError struct {
	err          error
	askedForCert bool
	sentCert     bool
}

func (e *tlsAttemptError) Error() string { return e.err.Error() }
func (e *tlsAttemptError) Unwrap() error { return e.err }

// wrap adds what cr recorded to err; a nil cr (no TLS) leaves err alone.
func (cr *certRequest) wrap(err error) error {
	if cr == nil {
		return err
	}
	return &tlsAttemptError{err: err, askedForCert: cr.asked.Load(), sentCert: cr.sent.Load()}
}
