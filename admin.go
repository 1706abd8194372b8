package reversehttp

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the `admin.api.reverse_http` module: the live pools on
// Caddy's admin endpoint.
//
//	GET    /reverse_http/pools                                  every pool
//	GET    /reverse_http/pools/<pool>                           one pool
//	POST   /reverse_http/pools/<pool>/workers/<worker>/drain    drain a worker
//	DELETE /reverse_http/pools/<pool>/workers/<worker>/drain    lift the drain
//
// <worker> is a worker's name (all its hosts) or its id, name@host (one
// host); a worker that gives no name, as POTHEAD's, is @host.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.reverse_http",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

const adminPrefix = "/reverse_http/"

// Routes returns the module's routes on the admin endpoint.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

func (adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, adminPrefix), "/"), "/")
	if parts[0] != "pools" {
		return apiError(http.StatusNotFound, "no such endpoint: %s (see /reverse_http/pools)", r.URL.Path)
	}
	switch {
	case len(parts) == 1:
		if err := allowMethods(r, http.MethodGet); err != nil {
			return err
		}
		now := time.Now()
		out := []poolStatus{}
		for _, p := range livePools() {
			out = append(out, p.status(now))
		}
		return writeJSON(w, out)
	case len(parts) == 2:
		if err := allowMethods(r, http.MethodGet); err != nil {
			return err
		}
		p, err := livePoolNamed(parts[1])
		if err != nil {
			return err
		}
		return writeJSON(w, p.status(time.Now()))
	case len(parts) >= 5 && parts[2] == "workers" && parts[len(parts)-1] == "drain":
		// A worker's name may hold a slash (escaped as %2F in the URL).
		return serveDrain(w, r, parts[1], strings.Join(parts[3:len(parts)-1], "/"))
	}
	return apiError(http.StatusNotFound, "no such endpoint: %s", r.URL.Path)
}

// serveDrain drains a worker (POST) or lifts its drain (DELETE).
func serveDrain(w http.ResponseWriter, r *http.Request, pool, target string) error {
	if err := allowMethods(r, http.MethodPost, http.MethodDelete); err != nil {
		return err
	}
	p, err := livePoolNamed(pool)
	if err != nil {
		return err
	}
	if r.Method == http.MethodDelete {
		if !p.undrainWorker(target) {
			return apiError(http.StatusNotFound, "worker %q of pool %s is not drained", target, pool)
		}
		return writeJSON(w, map[string]any{"pool": pool, "worker": target, "drained": false})
	}
	retired, known := p.drainWorker(target)
	if !known {
		return apiError(http.StatusNotFound, "pool %s has no worker %q (give its name, or its id name@host)", pool, target)
	}
	return writeJSON(w, map[string]any{"pool": pool, "worker": target, "drained": true, "connections_closing": retired})
}

// livePools returns the pools that some loaded config uses, by name.
func livePools() []*Pool {
	byName := make(map[string]*Pool)
	pools.Range(func(k, v any) bool {
		byName[k.(string)] = v.(*Pool)
		return true
	})
	out := make([]*Pool, 0, len(byName))
	for _, name := range sortedKeys(byName) {
		out = append(out, byName[name])
	}
	return out
}

func livePoolNamed(name string) (*Pool, error) {
	for _, p := range livePools() {
		if p.name == name {
			return p, nil
		}
	}
	return nil, apiError(http.StatusNotFound, "no pool %q", name)
}

func allowMethods(r *http.Request, methods ...string) error {
	for _, m := range methods {
		if r.Method == m {
			return nil
		}
	}
	return apiError(http.StatusMethodNotAllowed, "method %s not allowed (want %s)", r.Method, strings.Join(methods, " or "))
}

func apiError(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	return nil
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
