package reversehttp

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(StatusPage{})
	httpcaddyfile.RegisterHandlerDirective("reverse_http_status", parseStatusDirective)
	httpcaddyfile.RegisterDirectiveOrder("reverse_http_status", httpcaddyfile.After, "metrics")
}

// statusAssets are the page and what it loads, served by the handler
// itself: the page works with no network beyond the hub.
//
//go:embed status/index.html status/status.css status/status.js
var statusAssets embed.FS

// StatusPage is the `reverse_http_status` handler: a live page of the
// pools, their queues and workers, which polls its own JSON. Use it like
// Caddy's `metrics` handler, on a route behind whatever authentication the
// site has: it shows worker names and addresses.
type StatusPage struct {
	// The pools to show. Default: every pool of the reverse_http app.
	Pools []string `json:"pools,omitempty"`

	pools []*Pool
}

// CaddyModule returns the Caddy module information.
func (StatusPage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.reverse_http_status",
		New: func() caddy.Module { return new(StatusPage) },
	}
}

// Provision finds the pools to show.
func (s *StatusPage) Provision(ctx caddy.Context) error {
	appIface, err := ctx.App("reverse_http")
	if err != nil {
		return err
	}
	app := appIface.(*App)
	names := s.Pools
	if len(names) == 0 {
		names = sortedKeys(app.pools)
	}
	s.pools = s.pools[:0]
	for _, name := range names {
		p := app.pools[name]
		if p == nil {
			return fmt.Errorf("unknown pool %q: define it in the reverse_http global option", name)
		}
		s.pools = append(s.pools, p)
	}
	return nil
}

// statusJSON is what the page polls.
type statusJSON struct {
	Time  int64        `json:"time"` // Unix time in milliseconds
	Pools []poolStatus `json:"pools"`
}

// ServeHTTP serves the page, its assets (?asset=) and its data
// (?format=json).
func (s *StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("the status page takes GET, not %s", r.Method))
	}
	q := r.URL.Query()
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	if q.Get("format") == "json" {
		now := time.Now()
		out := statusJSON{Time: now.UnixMilli(), Pools: make([]poolStatus, 0, len(s.pools))}
		for _, p := range s.pools {
			st := p.status(now)
			st.History = p.obs.samples()
			out.Pools = append(out.Pools, st)
		}
		return writeJSON(w, out)
	}
	name, ctype := "status/index.html", "text/html; charset=utf-8"
	switch q.Get("asset") {
	case "":
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	case "status.js":
		name, ctype = "status/status.js", "text/javascript; charset=utf-8"
	case "status.css":
		name, ctype = "status/status.css", "text/css; charset=utf-8"
	default:
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("no status page asset %q", q.Get("asset")))
	}
	body, err := statusAssets.ReadFile(name)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	h.Set("Content-Type", ctype)
	_, err = w.Write(body)
	return err
}

// parseStatusDirective sets up the handler from the directive:
//
//	reverse_http_status [<pool...>]
//
// Without pools it shows every pool.
func parseStatusDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(StatusPage)
	if err := s.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	defined := map[string]*PoolConfig{}
	if opt, ok := h.Option("reverse_http").(httpcaddyfile.App); ok {
		var app App
		if err := json.Unmarshal(opt.Value, &app); err != nil {
			return nil, err
		}
		defined = app.Pools
	}
	for _, name := range s.Pools {
		if _, ok := defined[name]; !ok {
			h.Reset()
			h.Next()
			return nil, h.Errf("reverse_http_status: unknown pool %q: define it in the reverse_http global option", name)
		}
	}
	return s, nil
}

// UnmarshalCaddyfile reads the directive; see parseStatusDirective.
func (s *StatusPage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	s.Pools = append(s.Pools, d.RemainingArgs()...)
	if d.NextBlock(d.Nesting()) {
		return d.Errf("reverse_http_status takes no block")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*StatusPage)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusPage)(nil)
	_ caddyfile.Unmarshaler       = (*StatusPage)(nil)
)
