package reversehttp

import (
	"math"
	"net/http"
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
}

// shareObs counts what coalescing and caching did, for the metrics.
type shareObs struct {
	coalesced atomic.Uint64 // requests that joined another's job
	consumers atomic.Int64  // consumers of shared jobs now
}

// provisionShare sets up coalescing and caching for the route.
func (h *Handler) provisionShare(ctx caddy.Context) error {
	if h.Coalesce == nil {
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
	h.share = s
	return nil
}

// serve answers r through the route's coalescing and cache.
func (s *share) serve(w http.ResponseWriter, r *http.Request) error {
	if s.coalesce != nil && s.coalesce.applies(r) {
		return s.coalesce.serve(w, r, s.h.serveJob)
	}
	return s.h.serveJob(w, r)
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
