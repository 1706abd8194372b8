package reversehttp

import (
	"math"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// share is what a route does before a request reaches the queue, when it
// coalesces identical requests or caches results: nil for a route that
// does neither, which then costs a request one nil check.
type share struct {
	h        *Handler
	coalesce *coalescer
	cache    *resultCache
}

// shareObs counts what coalescing and caching did, for the metrics.
type shareObs struct {
	coalesced atomic.Uint64 // requests that joined another's job
	consumers atomic.Int64  // consumers of shared jobs now
	cache     [numCacheResults]atomic.Uint64
	// filled counts the misses whose job and store have ended: a result
	// is stored after its consumer has the last byte, and tests wait for
	// it.
	filled atomic.Uint64
	// hitBytes are the bytes of cache entries loaded for the hits the
	// pool's routes are answering now (see cacheHitBudget).
	hitBytes atomic.Int64
}

// provisionShare sets up coalescing and caching for the route.
func (h *Handler) provisionShare(ctx caddy.Context) error {
	if h.Coalesce == nil && h.Cache == nil {
		return nil
	}
	s := &share{h: h}
	if h.Coalesce != nil {
		g, err := newCoalescer(h.Coalesce, h.pool, h.logger)
		if err != nil {
			return err
		}
		s.coalesce = g
	}
	if h.Cache != nil {
		rc, err := newResultCache(ctx, h.Cache, h.pool, h.logger)
		if err != nil {
			return err
		}
		s.cache = rc
	}
	h.share = s
	return nil
}

// Cleanup stops the cache's scans of the storage.
func (h *Handler) Cleanup() error {
	if h.share != nil && h.share.cache != nil {
		h.share.cache.stop()
	}
	return nil
}

// serve answers r from the route's cache, else through its coalescing,
// else with a job of its own. A result that may be stored is stored by
// the job that made it, so once however many consumers shared it.
func (s *share) serve(w http.ResponseWriter, r *http.Request) error {
	run := s.h.serveJob
	if rc := s.cache; rc != nil {
		if !rc.applies(r) {
			rc.count(cacheBypass)
			w.Header().Set("Cache-Status", "reverse_http; fwd=bypass")
		} else {
			key, full := rc.storageKey(r)
			if rc.serveHit(w, r, key, full) {
				return nil
			}
			rc.count(cacheMiss)
			w.Header().Set("Cache-Status", "reverse_http; fwd=miss")
			run = func(w http.ResponseWriter, r *http.Request) error {
				return rc.fill(w, r, key, full, s.h.serveJob)
			}
		}
	}
	if s.coalesce != nil && s.coalesce.applies(r) {
		return s.coalesce.serve(w, r, run)
	}
	return run(w, r)
}

// parseSize reads one positive size argument (10MB, 64KiB).
func parseSize(d *caddyfile.Dispenser) (int64, error) {
	opt := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	size, err := humanize.ParseBytes(s)
	if err != nil || size < 1 || size > math.MaxInt64 {
		return 0, d.Errf("%s must be a positive size such as 10MB, not %q", opt, s)
	}
	return int64(size), nil
}

// parseKey reads the placeholders of a key option.
func parseKey(d *caddyfile.Dispenser) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	return args, nil
}

// Interface guards
var _ caddy.CleanerUpper = (*Handler)(nil)

// keyHeaders returns the request headers that key's placeholders name
// ({http.request.header.NAME}).
func keyHeaders(key []string) map[string]bool {
	in := map[string]bool{}
	for _, k := range key {
		for rest := k; ; {
			_, after, ok := strings.Cut(rest, "{http.request.header.")
			if !ok {
				break
			}
			name, tail, _ := strings.Cut(after, "}")
			in[http.CanonicalHeaderKey(name)] = true
			rest = tail
		}
	}
	return in
}

// privateRequest reports whether r carries credentials (Authorization or
// Cookie) that a key made of the headers inKey does not include: its answer
// may be for its consumer alone, and is neither shared nor cached.
func privateRequest(r *http.Request, inKey map[string]bool) bool {
	for _, name := range []string{"Authorization", "Cookie"} {
		if r.Header.Get(name) != "" && !inKey[name] {
			return true
		}
	}
	return false
}

// shareableHead reports whether a response with header h may be given to
// consumers other than the one it was made for: not if it sets a cookie or
// says it is private or not to be stored (as a worker's out-of-band 303,
// whose key works once, does).
func shareableHead(h http.Header) bool {
	if len(h.Values("Set-Cookie")) > 0 {
		return false
	}
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			d, _, _ = strings.Cut(strings.TrimSpace(d), "=")
			if strings.EqualFold(d, "private") || strings.EqualFold(d, "no-store") {
				return false
			}
		}
	}
	return true
}
