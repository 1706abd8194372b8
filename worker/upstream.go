package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The direct exchange: a Forwarder sends a job without a request body to
// a plain HTTP (or unix socket) upstream on the handler's own goroutine,
// over a connection of its own pool: it writes the request, reads the
// response head and copies the body to the hub, with no goroutine of a
// transport in between. http.Transport gives every connection a reading
// and a writing goroutine, and each request crosses both; under a load of
// tiny jobs those hand-offs, and the proxy's copies of the headers, cost
// more CPU than the HTTP itself (see bench/, "CPU time per request").
// Jobs with a body still go through httputil.ReverseProxy, whose
// transport writes the body while it reads the response, and so does an
// https upstream.

// Bounds of the direct exchange.
var (
	// upstreamIdleTimeout: a pooled connection idle for longer is not
	// used again (http.DefaultTransport's IdleConnTimeout).
	upstreamIdleTimeout = 90 * time.Second
	// maxUpstreamHeader bounds the response head (status line and
	// headers) the upstream may send.
	maxUpstreamHeader int64 = 1 << 20
	// maxInformational bounds the 1xx responses relayed before the final
	// one, as the hub does.
	maxInformational = 8
)

// maxIdleUpstream is how many idle connections the pool keeps.
const maxIdleUpstream = 64

// errUpstreamHeaderTooLarge: the upstream sent a response head beyond
// maxUpstreamHeader.
var errUpstreamHeaderTooLarge = errors.New("upstream response header too large")

// upstreamPool keeps idle connections to the upstream, most recently used
// first.
type upstreamPool struct {
	network, addr string
	dialer        *net.Dialer

	mu   sync.Mutex
	idle []*upstreamConn
}

// upstreamConn is one connection of the pool.
type upstreamConn struct {
	conn      net.Conn
	raw       syscall.RawConn // for peerSent; nil where it cannot look
	src       countingReader
	br        *bufio.Reader
	bw        *bufio.Writer
	reused    bool // it carried a request before this one
	idleSince time.Time
}

// countingReader counts what is read from the connection, and refuses to
// read more than limit (while limit is not negative) with
// errUpstreamHeaderTooLarge.
type countingReader struct {
	r     io.Reader
	n     int64
	limit int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.limit >= 0 {
		if c.n >= c.limit {
			return 0, errUpstreamHeaderTooLarge
		}
		p = p[:min(int64(len(p)), c.limit-c.n)]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// get returns an idle connection that is still open, or dials a new one.
func (p *upstreamPool) get(ctx context.Context) (*upstreamConn, error) {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return p.dial(ctx)
		}
		uc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		// A connection the upstream closed (or wrote to out of turn)
		// while it was idle would fail the job; the look costs one
		// system call. An idempotent job looks too, though it could go
		// out again on a new connection: found by looking, before the
		// job is accepted, an upstream that is down gets the job
		// declined, for the hub to run elsewhere; found by trying, it
		// would cost the job (TestE2EWorkerMetrics).
		if time.Since(uc.idleSince) < upstreamIdleTimeout && uc.br.Buffered() == 0 && !peerSent(uc.raw) {
			return uc, nil
		}
		uc.conn.Close()
	}
}

func (p *upstreamPool) dial(ctx context.Context) (*upstreamConn, error) {
	c, err := p.dialer.DialContext(ctx, p.network, p.addr)
	if err != nil {
		return nil, err
	}
	uc := &upstreamConn{conn: c, raw: rawConn(c), src: countingReader{r: c, limit: -1}}
	uc.br = bufio.NewReaderSize(&uc.src, 4<<10)
	uc.bw = bufio.NewWriterSize(c, 4<<10)
	return uc, nil
}

// put gives back a connection whose exchange ended cleanly.
func (p *upstreamPool) put(uc *upstreamConn) {
	uc.reused = true
	uc.idleSince = time.Now()
	p.mu.Lock()
	if len(p.idle) < maxIdleUpstream {
		p.idle = append(p.idle, uc)
		uc = nil
	}
	p.mu.Unlock()
	if uc != nil {
		uc.conn.Close()
	}
}

// hopHeaders are the hop-by-hop headers, which end at each hop (RFC 9110,
// 7.6.1), as httputil.ReverseProxy removes them.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// isHop reports whether k is one of hopHeaders.
func isHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// endToEnd copies h without its hop-by-hop headers and those the
// Connection header names. The value slices are shared, not
// copied: nothing changes them.
func endToEnd(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		out[k] = v
	}
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				delete(out, http.CanonicalHeaderKey(name))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(out, k)
	}
	return out
}

// direct reports whether the job r takes the direct exchange.
func (f *Forwarder) direct(r *http.Request) bool {
	return f.pool != nil && r.ContentLength == 0 && (r.Body == nil || r.Body == http.NoBody)
}

// requestURI is the job's request target at the upstream.
func (f *Forwarder) requestURI(r *http.Request) string {
	u := *r.URL
	u.Scheme, u.Host = "", ""
	u.Path, u.RawPath = joinURLPath(f.target, r.URL)
	switch {
	case f.target.RawQuery == "":
	case u.RawQuery == "":
		u.RawQuery = f.target.RawQuery
	default:
		u.RawQuery = f.target.RawQuery + "&" + u.RawQuery
	}
	return u.RequestURI()
}

// hopExcluded are the request headers that stay behind: the hop-by-hop
// ones and Expect, since the hub's 100-continue is between hub and worker
// (passing it on would make the upstream wait for a body that is not
// coming).
var hopExcluded = func() map[string]bool {
	m := map[string]bool{"Expect": true}
	for _, k := range hopHeaders {
		m[k] = true
	}
	return m
}()

// writeHead writes the request head of the job r, as the upstream gets it,
// to bw: the request line, Host, and r's end-to-end headers (without
// copying them, as httputil.ReverseProxy does, which under a load of tiny
// jobs costs more than the write). A missing User-Agent stays missing.
func (f *Forwarder) writeHead(bw *bufio.Writer, r *http.Request) error {
	host := r.Host
	if host == "" {
		host = f.target.Host
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(f.requestURI(r))
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	exclude := hopExcluded
	if named := r.Header["Connection"]; len(named) > 0 {
		exclude = maps.Clone(hopExcluded)
		for _, v := range named {
			for name := range strings.SplitSeq(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					exclude[http.CanonicalHeaderKey(name)] = true
				}
			}
		}
	}
	if err := r.Header.WriteSubset(bw, exclude); err != nil {
		return err
	}
	// "TE: trailers" says the client takes trailers, which the
	// forwarder relays.
	if httpHeaderHasToken(r.Header["Te"], "trailers") {
		bw.WriteString("Te: trailers\r\n")
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// serveDirect forwards the job r by the direct exchange.
func (f *Forwarder) serveDirect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	uc, err := f.pool.get(ctx)
	if err != nil {
		f.failJob(w, r, err, true, false)
		return
	}
	Accept(r)
	resp, stop, err := f.exchange(w, uc, r)
	if err != nil && uc.reused && uc.src.n == 0 && ctx.Err() == nil && idempotent(r) {
		// The upstream closed a pooled connection as the request went out,
		// before it answered anything: as http.Transport does for an
		// idempotent request without a body, try once on a new
		// connection. Any other may have been acted on, and must not run
		// twice.
		uc.conn.Close()
		if uc, err = f.pool.dial(ctx); err != nil {
			f.failJob(w, r, err, true, true)
			return
		}
		resp, stop, err = f.exchange(w, uc, r)
	}
	if err != nil {
		uc.conn.Close()
		f.failJob(w, r, err, true, true)
		return
	}
	complete := f.relay(w, uc, resp)
	if stop() && complete && !resp.Close {
		f.pool.put(uc)
		return
	}
	uc.conn.Close()
	if !complete {
		// As httputil.ReverseProxy does: a response cut short must not
		// look whole to the hub.
		panic(http.ErrAbortHandler)
	}
}

// exchange writes the job r on uc and reads the response head, relaying
// informational responses other than 100 Continue to w. Until the
// returned stop is called, the job's end (the hub closing its connection)
// closes uc, which ends a wait for the upstream.
func (f *Forwarder) exchange(w http.ResponseWriter, uc *upstreamConn, r *http.Request) (*http.Response, func() bool, error) {
	stop := context.AfterFunc(r.Context(), func() { uc.conn.Close() })
	resp, err := f.roundTrip(w, uc, r)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return resp, stop, nil
}

func (f *Forwarder) roundTrip(w http.ResponseWriter, uc *upstreamConn, r *http.Request) (*http.Response, error) {
	uc.src.n = 0
	if err := f.writeHead(uc.bw, r); err != nil {
		return nil, err
	}
	if err := uc.bw.Flush(); err != nil {
		return nil, err
	}
	uc.src.limit = maxUpstreamHeader
	defer func() { uc.src.limit = -1 }()
	for informational := 0; ; informational++ {
		resp, err := http.ReadResponse(uc.br, r)
		if err != nil {
			if uc.src.n >= maxUpstreamHeader {
				err = errUpstreamHeaderTooLarge
			}
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("upstream switched protocols, which the worker does not relay")
		case resp.StatusCode >= 200:
			return resp, nil
		case informational == maxInformational:
			return nil, fmt.Errorf("upstream sent more than %d informational responses", maxInformational)
		case resp.StatusCode != http.StatusContinue:
			relayInformational(w, resp)
		}
	}
}

// relayInformational writes a 1xx response from upstream to w, with its
// headers, which the final response does not keep.
func relayInformational(w http.ResponseWriter, resp *http.Response) {
	h := w.Header()
	added := endToEnd(resp.Header)
	for k, v := range added {
		h[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	for k := range added {
		delete(h, k)
	}
}

// relay writes the response to w and copies its body, flushing whenever
// the upstream has sent nothing more yet. It reports whether the body was
// read to its end and written.
func (f *Forwarder) relay(w http.ResponseWriter, uc *upstreamConn, resp *http.Response) bool {
	defer resp.Body.Close()
	h := w.Header()
	named := resp.Header["Connection"]
	for k, v := range resp.Header {
		if !isHop(k) && (len(named) == 0 || !httpHeaderHasToken(named, k)) {
			h[k] = v
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		names := make([]string, 0, announced)
		for k := range resp.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := copyBuffers{}.Get()
	defer copyBuffers{}.Put(buf)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			f.log.Warn("upstream response body failed", "upstream", f.upstream.String(), "err", err)
			return false
		}
		// Responses are flushed as they arrive: once the upstream has
		// nothing more buffered, the next read may wait. A small body
		// read whole with its end goes out with the response's end.
		if uc.br.Buffered() == 0 {
			// A writer that cannot flush (a wrapper without Unwrap)
			// gets the body as it comes all the same.
			if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return false
			}
		}
	}
	if len(resp.Trailer) > 0 {
		for k, v := range resp.Trailer {
			if len(resp.Trailer) != announced {
				k = http.TrailerPrefix + k
			}
			h[k] = v
		}
	}
	return true
}

// joinURLPath joins the upstream URL's path and the job's, as
// httputil.ProxyRequest.SetURL does.
func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return joinSlash(a.Path, b.Path), ""
	}
	ap, bp := a.EscapedPath(), b.EscapedPath()
	as, bs := strings.HasSuffix(ap, "/"), strings.HasPrefix(bp, "/")
	switch {
	case as && bs:
		return a.Path + b.Path[1:], ap + bp[1:]
	case !as && !bs:
		return a.Path + "/" + b.Path, ap + "/" + bp
	}
	return a.Path + b.Path, ap + bp
}

// joinSlash joins two paths with exactly one slash between them.
func joinSlash(a, b string) string {
	as, bs := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case as && bs:
		return a + b[1:]
	case !as && !bs:
		return a + "/" + b
	}
	return a + b
}

// httpHeaderHasToken reports whether a comma-separated header names tok.
func httpHeaderHasToken(values []string, tok string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}

// idempotent reports whether r may be sent again after a connection broke
// before any answer, by the rule of Go's http.Transport: a method that
// RFC 9110 makes idempotent and safe to retry, or a request that carries an
// Idempotency-Key.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	return key || xkey
}
