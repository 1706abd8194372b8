package reversehttp

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// A route's part in the pool's scheduling: the class and key its requests
// take in the queue, and what its jobs take (sched.go).

// routeSched is a handler's scheduling options, provisioned.
type routeSched struct {
	prio     int   // the constant priority
	prioExpr bool  // Priority has placeholders, replaced per request
	service  *ewma // how long the route's jobs hold a connection
}

// provisionSched checks the scheduling options of a handler's JSON (the
// Caddyfile checks them as it reads them, to name the line).
func (h *Handler) provisionSched() error {
	h.sched = routeSched{service: new(ewma)}
	if h.Priority != "" {
		if strings.Contains(h.Priority, "{") {
			h.sched.prioExpr = true
		} else {
			n, err := parseConstPriority(h.Priority)
			if err != nil {
				return err
			}
			h.sched.prio = n
		}
	}
	if len(h.FairWeights) > 0 && h.FairBy == "" {
		return fmt.Errorf("fair_weights need fair_by")
	}
	for k, n := range h.FairWeights {
		if n < 1 || n > maxWeight {
			return fmt.Errorf("fair_by weight of %q must be from 1 to %d, not %d", k, maxWeight, n)
		}
	}
	return nil
}

// parseConstPriority reads a priority given as a constant.
func parseConstPriority(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < minPriority || n > maxPriority {
		return 0, fmt.Errorf("priority must be an integer from %d to %d, or placeholders, not %q", minPriority, maxPriority, s)
	}
	return n, nil
}

// priorityOf reads a priority from a placeholder's value: 0 for what is
// no integer, and the nearest bound for one beyond them.
func priorityOf(s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0
	}
	return min(max(n, minPriority), maxPriority)
}

// ticket fills in the ticket of r, which arrived at now.
func (h *Handler) ticket(r *http.Request, now time.Time, tk *ticket) {
	tk.arrived = now
	tk.prio = h.sched.prio
	tk.admit = h.AdmitByEstimate
	if h.sched.service != nil {
		tk.cost = h.sched.service.get()
	}
	if !h.sched.prioExpr && h.FairBy == "" {
		return
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	if h.sched.prioExpr {
		tk.prio = priorityOf(repl.ReplaceAll(h.Priority, ""))
	}
	if h.FairBy != "" {
		tk.key = repl.ReplaceAll(h.FairBy, "")
		tk.weight = h.FairWeights[tk.key]
	}
}

// served records that one of the route's jobs held its connection for d.
func (h *Handler) served(p *Pool, d time.Duration) {
	p.service.add(d)
	if h.sched.service != nil {
		h.sched.service.add(d)
	}
}

// unmarshalSchedOption reads the handler's scheduling option at d, if it
// is one, and reports whether it was.
//
//	priority <integer or placeholders>
//	fair_by <placeholders> {
//		weight <key> <n>
//	}
//	admit_by_estimate
func (h *Handler) unmarshalSchedOption(d *caddyfile.Dispenser) (bool, error) {
	switch d.Val() {
	case "priority":
		if !d.AllArgs(&h.Priority) {
			return true, d.ArgErr()
		}
		if !strings.Contains(h.Priority, "{") {
			if _, err := parseConstPriority(h.Priority); err != nil {
				return true, d.Errf("%v", err)
			}
		}
	case "fair_by":
		if h.FairBy != "" {
			return true, d.Err("duplicate fair_by")
		}
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		h.FairBy = d.Val()
		if d.NextArg() {
			return true, d.ArgErr()
		}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			if d.Val() != "weight" {
				return true, d.Errf("unrecognized fair_by option %q (want weight)", d.Val())
			}
			var key, ns string
			if !d.AllArgs(&key, &ns) {
				return true, d.Err("weight needs a key and a number: weight <key> <n>")
			}
			n, err := strconv.Atoi(ns)
			if err != nil || n < 1 || n > maxWeight {
				return true, d.Errf("weight of %q must be an integer from 1 to %d, not %q", key, maxWeight, ns)
			}
			if h.FairWeights == nil {
				h.FairWeights = make(map[string]int)
			}
			h.FairWeights[key] = n
		}
	case "admit_by_estimate":
		if d.NextArg() {
			return true, d.ArgErr()
		}
		h.AdmitByEstimate = true
	default:
		return false, nil
	}
	return true, nil
}
