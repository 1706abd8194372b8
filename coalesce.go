package reversehttp

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// CoalesceConfig makes concurrent identical requests of a route share one
// job: the first is queued as usual, the others attach to it, and each gets
// the job's status, headers and body as they arrive from the worker.
type CoalesceConfig struct {
	// Placeholders whose values, with the request's method, make the key
	// that says which requests are identical. Default:
	// `{http.request.host} {http.request.uri}`. A worker whose response
	// varies with a request header (Vary) needs that header in the key.
	Key []string `json:"key,omitempty"`

	// The methods whose requests are coalesced. Default: GET and HEAD, the
	// safe methods with no body. Requests with a body are never coalesced:
	// the key does not see the body.
	Methods []string `json:"methods,omitempty"`

	// How many bytes of the response a shared job holds for consumers
	// that read more slowly than the fastest one, and for requests that
	// arrive after the response began. A consumer that falls further
	// behind the fastest is cut off; a request that arrives when the
	// response has outgrown it runs a job of its own. Default: 1MiB;
	// at least 64KiB.
	Buffer int64 `json:"buffer,omitempty"`
}

const (
	defaultCoalesceBuffer = 1 << 20
	minCoalesceBuffer     = 64 << 10
)

var defaultShareKey = []string{"{http.request.host}", "{http.request.uri}"}

// coalescer holds the shared jobs (flights) of one handler.
type coalescer struct {
	key     []string
	inKey   map[string]bool // request headers the key includes
	methods map[string]bool
	limit   int64
	pool    *Pool
	logger  *zap.Logger

	mu      sync.Mutex
	flights map[string]*flight
}

func newCoalescer(c *CoalesceConfig, pool *Pool, logger *zap.Logger) (*coalescer, error) {
	g := &coalescer{key: c.Key, limit: c.Buffer, pool: pool, logger: logger, flights: map[string]*flight{}}
	if len(g.key) == 0 {
		g.key = defaultShareKey
	}
	g.inKey = keyHeaders(g.key)
	if g.limit == 0 {
		g.limit = defaultCoalesceBuffer
	}
	if g.limit < minCoalesceBuffer {
		return nil, errors.New("coalesce: buffer must be at least 64KiB")
	}
	methods := c.Methods
	if len(methods) == 0 {
		methods = []string{http.MethodGet, http.MethodHead}
	}
	g.methods = map[string]bool{}
	for _, m := range methods {
		if m != strings.ToUpper(m) || m == "" {
			return nil, errors.New("coalesce: methods must be upper case, as HTTP spells them")
		}
		g.methods[m] = true
	}
	return g, nil
}

// applies reports whether r may share a job: not if it carries
// credentials (Authorization, Cookie) that the key does not include, as
// one consumer's answer must not go to another.
func (g *coalescer) applies(r *http.Request) bool {
	return g.methods[r.Method] && !hasContent(r) && r.Header.Get("Upgrade") == "" && !privateRequest(r, g.inKey)
}

// errNotShared is what relay returns to a consumer that joined a flight
// whose response turned out to be for its first consumer alone (see
// shareableHead), before anything was written to it: it runs a job of its
// own.
var errNotShared = errors.New("the shared job's response is not for sharing")

// requestKey is the method and the values of the key's placeholders.
func requestKey(r *http.Request, placeholders []string) string {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var b strings.Builder
	b.WriteString(r.Method)
	for _, p := range placeholders {
		b.WriteByte(0)
		if repl != nil {
			b.WriteString(repl.ReplaceAll(p, ""))
		} else {
			b.WriteString(p)
		}
	}
	return b.String()
}

// serve answers r from the flight of its key, starting one if there is
// none that it can join; run runs the job.
func (g *coalescer) serve(w http.ResponseWriter, r *http.Request, run func(http.ResponseWriter, *http.Request) error) error {
	key := requestKey(r, g.key)
	g.mu.Lock()
	f := g.flights[key]
	var s *subscriber
	if f != nil {
		s = f.join()
	}
	if s == nil {
		f = g.start(key, r)
		s = f.join()
		g.mu.Unlock()
		go f.run(run)
	} else {
		g.mu.Unlock()
		g.pool.obs.shared.coalesced.Add(1)
		if err := f.relay(s, w, r, false); err != errNotShared {
			return err
		}
		g.pool.obs.shared.coalesced.Add(^uint64(0)) // it was not shared after all
		return run(w, r)
	}
	return f.relay(s, w, r, true)
}

// start makes the flight for key, whose job runs r detached from r's
// consumer: it ends when the last of its consumers leaves.
func (g *coalescer) start(key string, r *http.Request) *flight {
	// The job must not take the first consumer's hang-up for its end, so
	// its context is not the consumer's and keeps no way to its socket.
	// It outlives that consumer's handler, so it has vars, a replacer
	// (with the request placeholders of its own request) and access log
	// fields of its own.
	base := context.WithValue(context.WithoutCancel(r.Context()), consumerConnKey{}, nil)
	base = context.WithValue(base, caddyhttp.ExtraLogFieldsCtxKey, new(caddyhttp.ExtraLogFields))
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	vars = maps.Clone(vars)
	if vars == nil {
		vars = map[string]any{}
	}
	base = context.WithValue(base, caddyhttp.VarsCtxKey, vars)
	ctx, cancel := context.WithCancel(base)
	jr := r.Clone(ctx)
	caddyhttp.NewTestReplacer(jr)
	f := &flight{g: g, key: key, ctx: ctx, cancel: cancel, req: jr, header: http.Header{}, subs: map[*subscriber]struct{}{}}
	f.data.L = &f.mu
	f.room.L = &f.mu
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.room.Broadcast()
		f.mu.Unlock()
	})
	g.flights[key] = f
	return f
}

// forget removes f from the flights that requests may join.
func (g *coalescer) forget(f *flight) {
	g.mu.Lock()
	if g.flights[f.key] == f {
		delete(g.flights, f.key)
	}
	g.mu.Unlock()
}

// flight is one shared job and the consumers it answers. The job writes the
// response into a window of at most g.limit bytes; each consumer relays
// from the window at its own pace. When the window is full the job waits:
// for the fastest consumer as long as it takes, as a job of its own would,
// and for consumers a window behind the fastest up to slowGrace each in
// all, after which they are cut off.
type flight struct {
	g      *coalescer
	key    string
	ctx    context.Context
	cancel context.CancelFunc
	req    *http.Request
	header http.Header // the job's response header; the job's goroutine only

	mu   sync.Mutex
	data sync.Cond // signalled when the window grows or the job ends
	room sync.Cond // signalled when a consumer moves on or leaves
	// head is the response's status and header once the job wrote them.
	status int
	head   http.Header
	// buf holds the response's bytes from offset base to end.
	buf       []byte
	base, end int64
	done      bool
	err       error       // the job's error
	broke     bool        // the response broke off midway
	trailer   http.Header // trailers, once done
	closed    bool        // no consumer may join any more
	subs      map[*subscriber]struct{}
}

// subscriber is one consumer of a flight.
type subscriber struct {
	off  int64         // bytes of the body relayed
	held time.Duration // how long the job waited for it, a window behind another
	cut  bool          // cut off for holding the job back beyond slowGrace
	gone bool          // the consumer went away
}

// slowGrace is how long in all a shared job waits for a consumer a window
// behind another before it cuts that consumer off: a consumer that lags
// for a moment (a busy machine, a TCP window) is waited for, one that
// stalls costs the others this much once.
const slowGrace = time.Second

// join attaches a new consumer, or returns nil if the flight's response
// has moved past what a late consumer could still be given in full.
// The coalescer's lock is held.
func (f *flight) join() *subscriber {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.base > 0 {
		return nil
	}
	s := &subscriber{}
	f.subs[s] = struct{}{}
	f.g.pool.obs.shared.consumers.Add(1)
	return s
}

// leave detaches s; the last consumer to leave an unfinished job ends it.
func (f *flight) leave(s *subscriber) {
	f.g.pool.obs.shared.consumers.Add(-1)
	f.mu.Lock()
	delete(f.subs, s)
	last := len(f.subs) == 0 && !f.done
	if last {
		f.closed = true
	}
	f.room.Broadcast()
	f.mu.Unlock()
	if last {
		f.g.forget(f)
		f.cancel()
	}
}

// run runs the job and records how it ended.
func (f *flight) run(run func(http.ResponseWriter, *http.Request) error) {
	var err error
	broke := true
	defer func() {
		if p := recover(); p != nil && p != http.ErrAbortHandler {
			f.g.logger.Error("shared job panicked", zap.Any("panic", p))
		}
		f.finish(err, broke)
	}()
	err = run(flightWriter{f}, f.req)
	broke = false
}

// finish records the job's end and wakes its consumers.
func (f *flight) finish(err error, broke bool) {
	f.g.forget(f)
	f.mu.Lock()
	if f.status == 0 {
		f.head = f.header.Clone()
		if err == nil && !broke {
			f.status = http.StatusOK
		}
	}
	f.trailer = trailers(f.header)
	f.err, f.broke, f.done, f.closed = err, broke, true, true
	f.data.Broadcast()
	f.mu.Unlock()
	f.cancel()
}

// trailers are the header fields announced in Trailer, or given with
// http.TrailerPrefix, once the handler has written the body.
func trailers(h http.Header) http.Header {
	var t http.Header
	for _, v := range h.Values("Trailer") {
		for _, name := range strings.Split(v, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			if vs, ok := h[name]; ok {
				if t == nil {
					t = http.Header{}
				}
				t[name] = vs
			}
		}
	}
	for k, vs := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if t == nil {
				t = http.Header{}
			}
			t[k] = vs
		}
	}
	return t
}

// writeHead records the response's status and header.
func (f *flight) writeHead(status int) {
	f.mu.Lock()
	if f.status == 0 {
		f.status, f.head = status, f.header.Clone()
		f.data.Broadcast()
	}
	f.mu.Unlock()
}

// errFlightOver is what the job's writes get once no consumer is left.
var errFlightOver = errors.New("every consumer of the shared job went away")

// append adds p to the window, cutting off consumers a window behind the
// fastest and waiting while the fastest is that far behind.
func (f *flight) append(p []byte) error {
	for len(p) > 0 {
		chunk := p[:min(int64(len(p)), f.g.limit/2)]
		if err := f.appendChunk(chunk); err != nil {
			return err
		}
		p = p[len(chunk):]
	}
	return nil
}

func (f *flight) appendChunk(p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.ctx.Err() != nil {
			return errFlightOver
		}
		// Every consumer must have relayed up to need for the window to
		// take p.
		need := f.end + int64(len(p)) - f.g.limit
		if need <= f.base {
			break
		}
		fastest := int64(-1)
		for s := range f.subs {
			fastest = max(fastest, s.off)
		}
		if fastest < need {
			// Even the fastest consumer is a window behind: the job
			// goes at its pace, as a job of its own would.
			f.room.Wait()
			continue
		}
		// Those behind hold back the others: they are waited for within
		// what is left of their grace, then cut off.
		wait, holding := slowGrace, false
		for s := range f.subs {
			if s.off < need && !s.cut {
				if s.held >= slowGrace {
					s.cut = true
					continue
				}
				wait, holding = min(wait, slowGrace-s.held), true
			}
		}
		if !holding {
			f.data.Broadcast() // the cut consumers stop
			f.buf = f.buf[need-f.base:]
			f.base = need
			break
		}
		start := time.Now()
		t := time.AfterFunc(wait, func() {
			f.mu.Lock()
			f.room.Broadcast()
			f.mu.Unlock()
		})
		f.room.Wait()
		t.Stop()
		waited := time.Since(start)
		for s := range f.subs {
			if s.off < need {
				s.held += waited
			}
		}
	}
	f.buf = append(f.buf, p...)
	f.end += int64(len(p))
	if f.base > 0 {
		// The start of the body is gone: a late request cannot be given
		// the whole response, and starts a flight of its own.
		f.closed = true
	}
	f.data.Broadcast()
	return nil
}

// relay answers one consumer from the flight; first says whether it
// started the flight. A consumer that joined it gets errNotShared, with
// nothing written, if the response is not one to share.
func (f *flight) relay(s *subscriber, w http.ResponseWriter, r *http.Request, first bool) error {
	defer f.leave(s)
	stop := context.AfterFunc(r.Context(), func() {
		f.mu.Lock()
		s.gone = true
		f.data.Broadcast()
		f.mu.Unlock()
	})
	defer stop()

	f.mu.Lock()
	for f.status == 0 && !f.done && !s.gone {
		f.data.Wait()
	}
	status, head, done, err := f.status, f.head, f.done, f.err
	if status != 0 && !first && !shareableHead(head) {
		// No one else joins a flight whose answer is its first
		// consumer's alone.
		f.closed = true
		f.mu.Unlock()
		return errNotShared
	}
	f.mu.Unlock()
	if s.gone {
		return r.Context().Err()
	}
	if status == 0 {
		if done && f.broke {
			panic(http.ErrAbortHandler)
		}
		copyHeader(w.Header(), head)
		return err
	}
	copyHeader(w.Header(), head)
	w.WriteHeader(status)
	rc := http.NewResponseController(w)
	for {
		f.mu.Lock()
		for s.off == f.end && !f.done && !s.cut && !s.gone {
			f.data.Wait()
		}
		if s.cut || s.gone {
			f.mu.Unlock()
			panic(http.ErrAbortHandler)
		}
		if s.off == f.end {
			// done, and everything relayed
			broke, trailer := f.broke || f.err != nil, f.trailer
			f.mu.Unlock()
			if broke {
				// Never pass off a response the job did not finish as
				// complete.
				panic(http.ErrAbortHandler)
			}
			copyHeader(w.Header(), trailer)
			return nil
		}
		// The window only grows at its end and is resliced, never
		// overwritten, at its start: the chunk stays valid unlocked.
		chunk := f.buf[s.off-f.base : f.end-f.base]
		f.mu.Unlock()
		if _, err := w.Write(chunk); err != nil {
			panic(http.ErrAbortHandler)
		}
		_ = rc.Flush()
		f.mu.Lock()
		s.off += int64(len(chunk))
		f.room.Signal()
		f.mu.Unlock()
	}
}

// copyHeader sets dst's fields to those of src, replacing any of the same
// name (Caddy's Server header among them, as a worker's replaces it).
func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		dst[k] = append([]string(nil), vs...)
	}
}

// flightWriter is the response writer of a shared job.
type flightWriter struct{ f *flight }

func (fw flightWriter) Header() http.Header { return fw.f.header }

func (fw flightWriter) WriteHeader(status int) {
	if status < 200 {
		// Informational responses are not relayed to the consumers of
		// a shared job.
		return
	}
	fw.f.writeHead(status)
}

func (fw flightWriter) Write(p []byte) (int, error) {
	fw.f.writeHead(http.StatusOK)
	if err := fw.f.append(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush is there for the proxy's flushes: consumers are woken by every
// write.
func (fw flightWriter) Flush() {}

// unmarshalCaddyfile reads the coalesce block of the handler directive.
func (c *CoalesceConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "key":
			key, err := parseKey(d)
			if err != nil {
				return err
			}
			c.Key = append(c.Key, key...)
		case "methods":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, m := range args {
				if m != strings.ToUpper(m) {
					return d.Errf("coalesce methods must be upper case, as HTTP spells them, not %q", m)
				}
			}
			c.Methods = append(c.Methods, args...)
		case "buffer":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			if size < minCoalesceBuffer {
				return d.Errf("coalesce buffer must be at least 64KiB, not %d bytes", size)
			}
			c.Buffer = size
		default:
			return d.Errf("unrecognized coalesce option %q (want key, methods or buffer)", opt)
		}
	}
	return nil
}
