package worker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Out-of-band responses: with [Config.Redirect], a job's successful
// response is not sent through the hub. The worker answers the hub with
// "303 See Other" to a one-time URL on a listener of its own, and the
// consumer that follows it gets the body straight from the job, which
// is still running: its writes wait for that consumer (the app behind a
// Forwarder is paused by TCP backpressure), and its slot stays taken
// until the transfer ends, the key expires, or the consumer goes away.
//
// The key names an entry that exists only while the job waits for it; it
// carries its expiry and an HMAC-SHA256 under a secret drawn at random
// when the Worker is made, so that a forged key is told from an expired
// one without looking anything up, and is refused in constant time. An
// entry is taken by the first GET that names it: a key works once.

// DefaultRedirectTTL is used when [Redirect.TTL] is zero.
const DefaultRedirectTTL = 60 * time.Second

// Tunables of the out-of-band listener; variables so that tests may
// shorten them.
var (
	// redirectHeaderTimeout bounds the wait for a request's header.
	redirectHeaderTimeout = 10 * time.Second
	// redirectIdleTimeout bounds how long a consumer's connection may
	// wait, idle, for its next request.
	redirectIdleTimeout = 30 * time.Second
	// redirectStallTimeout bounds each write of up to redirectPiece bytes
	// to a consumer: one that takes less than that in this long is cut
	// off, however long the whole transfer takes while it makes progress.
	redirectStallTimeout = 30 * time.Second
)

// redirectMaxHeaderBytes bounds a consumer request's header (net/http
// allows 4 KiB more than it is told).
const redirectMaxHeaderBytes = 8 << 10

// Redirect configures out-of-band responses; see [Config.Redirect]. Only
// 200 responses to requests other than HEAD go out of band, and of those
// only the ones longer than MinSize or of unknown length; the rest, and
// every other status, go through the hub.
type Redirect struct {
	// Addr is the host:port to listen on for the consumers that follow
	// the redirects. Unused when Listener is set.
	Addr string
	// Listener, if not nil, is listened on instead of Addr. Run closes it.
	Listener net.Listener
	// PublicURL is the absolute http or https URL at which consumers
	// reach the listener; a key is added to its path as a last segment.
	// Empty means http://HOST:PORT (https with TLS), where HOST is the
	// worker's own address on the job's hub connection and PORT is the
	// listener's, as POTHEAD does.
	PublicURL string
	// TTL is how long a key waits for its consumer, from the 303 on; the
	// transfer, once started, may take longer. Zero means
	// DefaultRedirectTTL.
	TTL time.Duration
	// MinSize: a response whose Content-Length is MinSize bytes or less
	// is sent through the hub as usual. One without a Content-Length is
	// redirected.
	MinSize int64
	// TLS, if not nil, serves the listener over TLS; it needs a
	// certificate.
	TLS *tls.Config
}

// redirector is a Worker's out-of-band listener and the keys that wait
// for their consumers.
type redirector struct {
	cfg    Redirect
	log    *slog.Logger
	secret [32]byte
	base   string // PublicURL without a trailing slash; "" to derive it per job
	scheme string // of a derived URL
	ln     net.Listener
	srv    *http.Server
	served chan error

	mu      sync.Mutex
	pending map[string]*oobEntry // by key
	aborted chan struct{}        // closed when the drain gives up: waiting jobs end
}

// oobEntry is a redirected response that waits for its consumer.
type oobEntry struct {
	key     string
	expires time.Time
	header  http.Header    // what the consumer gets, cloned at WriteHeader
	attach  chan *consumer // buffered: the consumer that took the entry
	cancel  context.CancelFunc
}

// consumer is the one request that took an entry; the job writes the
// response on w while the consumer's handler waits for done.
type consumer struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	ok   bool          // the job ended well: the body is complete
	done chan struct{} // closed by the job once it no longer uses w
}

// newRedirector checks cfg and fills in defaults; it listens in start.
func newRedirector(cfg Redirect, log *slog.Logger) (*redirector, error) {
	if cfg.Addr == "" && cfg.Listener == nil {
		return nil, errors.New("worker: redirect: no listen address")
	}
	if cfg.TTL < 0 || cfg.MinSize < 0 {
		return nil, errors.New("worker: redirect: negative TTL or minimum size")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultRedirectTTL
	}
	if cfg.TLS != nil && len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil {
		return nil, errors.New("worker: redirect: TLS without a certificate")
	}
	rd := &redirector{cfg: cfg, log: log, scheme: "http", pending: make(map[string]*oobEntry), aborted: make(chan struct{})}
	if cfg.TLS != nil {
		rd.scheme = "https"
	}
	if cfg.PublicURL != "" {
		u, err := url.Parse(cfg.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("worker: redirect: public URL %q: want an absolute http or https URL without query, fragment or user", cfg.PublicURL)
		}
		rd.base = strings.TrimRight(cfg.PublicURL, "/")
	}
	if _, err := rand.Read(rd.secret[:]); err != nil {
		return nil, err
	}
	return rd, nil
}

// start listens and serves consumers until stop.
func (rd *redirector) start() error {
	ln := rd.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", rd.cfg.Addr); err != nil {
			return fmt.Errorf("worker: redirect: %w", err)
		}
	}
	if rd.cfg.TLS != nil {
		ln = tls.NewListener(ln, rd.cfg.TLS)
	}
	if _, port, err := net.SplitHostPort(ln.Addr().String()); rd.base == "" && (err != nil || port == "") {
		ln.Close()
		return fmt.Errorf("worker: redirect: listener at %q has no port for the URLs: set a public URL", ln.Addr())
	}
	rd.ln = ln
	rd.srv = &http.Server{
		Handler:           rd,
		ReadHeaderTimeout: redirectHeaderTimeout,
		IdleTimeout:       redirectIdleTimeout,
		MaxHeaderBytes:    redirectMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(rd.log.Handler(), slog.LevelDebug),
		// No ReadTimeout or WriteTimeout: a transfer may take as long as
		// it makes progress (see redirectStallTimeout). A ReadTimeout
		// would also cancel the request's context mid-transfer.
	}
	rd.served = make(chan error, 1)
	go func() { rd.served <- rd.srv.Serve(ln) }()
	rd.log.Info("serving out-of-band responses", "listen", ln.Addr().String(), "public_url", rd.cfg.PublicURL, "ttl", rd.cfg.TTL)
	return nil
}

// stop ends the listener once the jobs have drained: gracefully within
// ctx, or, when hard (the drain timed out), at once, ending the jobs that
// still wait for a consumer.
func (rd *redirector) stop(ctx context.Context, hard bool) {
	if hard || rd.srv.Shutdown(ctx) != nil {
		rd.abort()
		rd.srv.Close()
	}
	<-rd.served
}

func (rd *redirector) abort() {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	select {
	case <-rd.aborted:
	default:
		close(rd.aborted)
	}
}

// Keys are base64url of 36 bytes: the expiry (Unix milliseconds, 8
// bytes), a random nonce (12 bytes), and the first 16 bytes of the
// HMAC-SHA256 of those 20 under the secret.
const (
	keyBytes = 36
	keyLen   = keyBytes * 4 / 3
)

func (rd *redirector) newKey(expires time.Time) string {
	var b [keyBytes]byte
	binary.BigEndian.PutUint64(b[:8], uint64(expires.UnixMilli()))
	rand.Read(b[8:20])
	copy(b[20:], rd.mac(b[:20]))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (rd *redirector) mac(msg []byte) []byte {
	m := hmac.New(sha256.New, rd.secret[:])
	m.Write(msg)
	return m.Sum(nil)[:keyBytes-20]
}

// verify returns the expiry of a key this worker signed.
func (rd *redirector) verify(key string) (time.Time, bool) {
	if len(key) != keyLen {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil || len(b) != keyBytes || !hmac.Equal(rd.mac(b[:20]), b[20:]) {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(b[:8]))), true
}

// take removes the entry of key, if it still waits, and returns it.
func (rd *redirector) take(key string) *oobEntry {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	e := rd.pending[key]
	delete(rd.pending, key)
	return e
}

func (rd *redirector) peek(key string) *oobEntry {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.pending[key]
}

// ServeHTTP answers the consumers: GET takes the key's entry and waits
// while the job writes the response on it; HEAD shows its header and
// leaves it. A key that is not this worker's answers 404, one that has
// expired 410, and one that was used (or whose job ended) 404. None of
// them reaches the job.
func (rd *redirector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.ContentLength != 0 {
		// Not worth reading, nor waiting for: the connection ends.
		w.Header().Set("Connection", "close")
		http.Error(w, "a request body is not expected", http.StatusBadRequest)
		return
	}
	key := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	expires, ok := rd.verify(key)
	switch {
	case !ok:
		http.Error(w, "unknown key", http.StatusNotFound)
		return
	case !time.Now().Before(expires):
		http.Error(w, "expired key", http.StatusGone)
		return
	}
	if r.Method == http.MethodHead {
		e := rd.peek(key)
		if e == nil {
			http.Error(w, "used key", http.StatusNotFound)
			return
		}
		for k, v := range e.header {
			w.Header()[k] = v
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	e := rd.take(key)
	if e == nil {
		http.Error(w, "used key", http.StatusNotFound)
		return
	}
	c := &consumer{w: w, rc: http.NewResponseController(w), done: make(chan struct{})}
	e.attach <- c
	select {
	case <-c.done:
	case <-r.Context().Done():
		// The consumer left: the job need not go on.
		e.cancel()
		<-c.done
	}
	if !c.ok {
		// A body cut short must not look complete to the consumer.
		panic(http.ErrAbortHandler)
	}
}

var (
	errRedirectExpired = errors.New("out-of-band response: no consumer came before the key expired")
	errRedirectAborted = errors.New("out-of-band response: the worker stopped")
)

// Decisions of an oobWriter.
const (
	oobUndecided = iota
	oobInline    // the response goes through the hub
	oobRedirect  // the hub got a 303; the body goes to the consumer
)

// serve runs a job's handler with a ResponseWriter that redirects its
// successful response, and returns once that response has been
// delivered, has expired, or has failed; until then the job's slot stays
// taken. The handler's context no longer ends with the hub connection
// once the 303 is sent (the hub may close it then), but with the
// consumer's.
func (rd *redirector) serve(h http.Handler, rw http.ResponseWriter, r *http.Request, hc *hubConn) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	ow := &oobWriter{rd: rd, rw: rw, hc: hc, h: make(http.Header), cancel: cancel}
	ow.detach = context.AfterFunc(r.Context(), cancel)
	defer func() {
		ow.detach()
		cancel()
	}()
	completed := false
	defer func() { ow.finish(completed) }()
	h.ServeHTTP(ow, r.WithContext(ctx))
	completed = true
}

// oobWriter is the ResponseWriter of a job while redirects are on. Until
// the handler writes its header it keeps that header apart from the hub's,
// since a redirect sends the hub none of it.
type oobWriter struct {
	rd     *redirector
	rw     http.ResponseWriter // the hub's
	hc     *hubConn
	h      http.Header // the handler's
	state  int
	detach func() bool // stops the hub connection's end from cancelling the job
	cancel context.CancelFunc

	e         *oobEntry
	c         *consumer // once attached
	withdrawn bool      // the job took e back: no consumer will come
	err       error     // the first failure, after which every write fails
	sent      int64     // body bytes written to the consumer
	fetched   time.Time // when the consumer came
}

func (w *oobWriter) Header() http.Header { return w.h }

// Unwrap lets http.ResponseController and Decline reach the hub's writer.
func (w *oobWriter) Unwrap() http.ResponseWriter { return w.rw }

func (w *oobWriter) WriteHeader(code int) {
	switch {
	case w.state != oobUndecided:
		if w.state == oobInline {
			w.rw.WriteHeader(code) // net/http logs the superfluous call
		}
	case code >= 100 && code < 200:
		// An informational response (103 Early Hints) goes to the hub
		// with the header set so far, which stays out of the final one.
		hh := w.rw.Header()
		for k, v := range w.h {
			hh[k] = v
		}
		w.rw.WriteHeader(code)
		clear(hh)
	case w.redirects(code):
		w.redirect()
	default:
		w.inline()
		w.rw.WriteHeader(code)
	}
}

// redirects reports whether a response with this status and the header
// set so far goes out of band: a 200 with a body longer than MinSize,
// or of unknown length.
func (w *oobWriter) redirects(code int) bool {
	if code != http.StatusOK {
		return false
	}
	cl := w.h.Get("Content-Length")
	if cl == "" {
		return true
	}
	n, err := strconv.ParseInt(cl, 10, 64)
	return err == nil && n > w.rd.cfg.MinSize
}

// inline passes the handler's header to the hub's writer. The handler
// keeps its own map, which it may hold on to for its trailers: finish
// passes them on.
func (w *oobWriter) inline() {
	hh := w.rw.Header()
	for k, v := range w.h {
		hh[k] = v
	}
	w.state = oobInline
}

// redirect files the response under a new key and answers the hub 303.
func (w *oobWriter) redirect() {
	rd := w.rd
	expires := time.Now().Add(rd.cfg.TTL)
	e := &oobEntry{key: rd.newKey(expires), expires: expires, header: w.h.Clone(),
		attach: make(chan *consumer, 1), cancel: w.cancel}
	for _, k := range []string{"Connection", "Keep-Alive", "Transfer-Encoding"} {
		e.header.Del(k)
	}
	rd.mu.Lock()
	rd.pending[e.key] = e
	rd.mu.Unlock()
	w.e, w.state = e, oobRedirect
	w.detach()

	hh := w.rw.Header()
	hh.Set("Location", w.location()+"/"+e.key)
	hh.Set("Content-Length", "0")
	hh.Set("Cache-Control", "no-store")
	// The handler goes on after the response; "close" keeps the hub from
	// sending another job on this connection meanwhile.
	hh.Set("Connection", "close")
	w.rw.WriteHeader(http.StatusSeeOther)
	http.NewResponseController(w.rw).Flush()
	rd.log.Debug("response redirected", "status", http.StatusOK, "content_length", e.header.Get("Content-Length"), "expires", expires)
}

// location is the URL that keys are added to.
func (w *oobWriter) location() string {
	if w.rd.base != "" {
		return w.rd.base
	}
	host := "localhost"
	if a, ok := w.hc.LocalAddr().(*net.TCPAddr); ok {
		host = a.IP.String()
	}
	_, port, _ := net.SplitHostPort(w.rd.ln.Addr().String())
	return w.rd.scheme + "://" + net.JoinHostPort(host, port)
}

// waitConsumer waits for the consumer that follows the redirect, and
// starts its response; it fails when the key expires or the worker stops
// first.
func (w *oobWriter) waitConsumer() error {
	if w.c != nil || w.err != nil {
		return w.err
	}
	e := w.e
	t := time.NewTimer(time.Until(e.expires))
	defer t.Stop()
	select {
	case w.c = <-e.attach:
	case <-t.C:
		w.err = errRedirectExpired
	case <-w.rd.aborted:
		w.err = errRedirectAborted
	}
	if w.err != nil {
		if w.rd.take(e.key) != nil {
			w.withdrawn = true
			w.rd.log.Debug("out-of-band response not fetched", "err", w.err)
			return w.err
		}
		// A consumer took the entry at the same moment: it is on its way.
		w.c, w.err = <-e.attach, nil
	}
	w.fetched = time.Now()
	ch := w.c.w.Header()
	for k, v := range e.header {
		ch[k] = v
	}
	w.c.w.WriteHeader(http.StatusOK)
	return nil
}

func (w *oobWriter) Write(p []byte) (int, error) {
	if w.state == oobUndecided {
		w.WriteHeader(http.StatusOK)
	}
	if w.state == oobInline {
		return w.rw.Write(p)
	}
	if err := w.waitConsumer(); err != nil {
		return 0, err
	}
	// Each piece has its deadline, so that a consumer is cut off only
	// when it stalls (takes less than a piece per redirectStallTimeout).
	total := 0
	for len(p) > 0 {
		piece := p[:min(len(p), redirectPiece)]
		w.c.rc.SetWriteDeadline(time.Now().Add(redirectStallTimeout))
		n, err := w.c.w.Write(piece)
		total += n
		w.sent += int64(n)
		if err != nil {
			w.err = err
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// redirectPiece is the most written to a consumer under one deadline.
const redirectPiece = 16 << 10

// FlushError is what http.ResponseController's Flush calls.
func (w *oobWriter) FlushError() error {
	if w.state == oobUndecided {
		w.WriteHeader(http.StatusOK)
	}
	switch {
	case w.state == oobInline:
		return http.NewResponseController(w.rw).Flush()
	case w.c == nil:
		return w.err // nothing to flush before the consumer comes
	}
	w.c.rc.SetWriteDeadline(time.Now().Add(redirectStallTimeout))
	if err := w.c.rc.Flush(); err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

func (w *oobWriter) Flush() { w.FlushError() }

// finish ends the job's response once its handler has returned (completed)
// or panicked. A redirected response whose consumer has not come yet
// still waits for it, since the job may have written just a header.
func (w *oobWriter) finish(completed bool) {
	switch w.state {
	case oobUndecided:
		if completed {
			// Nothing written: net/http answers an empty 200 through
			// the hub, with the handler's header.
			w.inline()
		}
		return
	case oobInline:
		if completed {
			passTrailers(w.rw.Header(), w.h)
		}
		return
	}
	switch {
	case w.c != nil || w.withdrawn:
	case completed:
		w.waitConsumer()
	case w.rd.take(w.e.key) != nil:
		w.withdrawn = true
	default:
		// A consumer took the entry as the job failed.
		w.c = <-w.e.attach
	}
	if w.c == nil {
		return
	}
	w.c.ok = completed && w.err == nil
	if w.c.ok {
		passTrailers(w.c.w.Header(), w.h)
		w.c.rc.SetWriteDeadline(time.Time{})
	}
	close(w.c.done)
	attrs := []any{"bytes", w.sent, "took", time.Since(w.fetched).Round(time.Millisecond)}
	if !w.c.ok {
		w.rd.log.Debug("out-of-band response cut short", append(attrs, "err", w.err)...)
		return
	}
	w.rd.log.Debug("out-of-band response sent", attrs...)
}

// passTrailers copies to dst, a writer's header after its WriteHeader,
// the trailers a handler set in h: those h announced, and those named
// with http.TrailerPrefix.
func passTrailers(dst, h http.Header) {
	announced := make(map[string]bool)
	for _, v := range h.Values("Trailer") {
		for k := range strings.SplitSeq(v, ",") {
			announced[http.CanonicalHeaderKey(strings.TrimSpace(k))] = true
		}
	}
	for k, v := range h {
		if announced[k] || strings.HasPrefix(k, http.TrailerPrefix) {
			dst[k] = v
		}
	}
}
