package reversehttp

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/reversehttp/reverse_http/worker"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("reverse_http", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("reverse_http", parseHandlerDirective)
	httpcaddyfile.RegisterDirectiveOrder("reverse_http", httpcaddyfile.After, "reverse_proxy")
}

// parseGlobalOption sets up the reverse_http app from the global option;
// see App.UnmarshalCaddyfile for the syntax. The option may appear more
// than once; pool names must be unique.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, app); err != nil {
			return nil, err
		}
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "reverse_http", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile reads the body of the reverse_http global option:
//
//	reverse_http {
//		pool <name> {
//			listen <address...>
//			protocol ptth|pothead
//			token <secret>
//			tls {
//				hostnames <name...>
//				client_auth { ... }
//			}
//			max_queue <n>
//			queue_timeout <duration>
//			handshake_timeout <duration>
//			response_timeout <duration>
//			priority_aging <duration>
//			max_response_header <size>
//			max_attempts <n>
//			max_handshakes <n>
//			allow_unauthenticated
//			metrics per_worker
//		}
//	}
//
// The option may appear more than once; pool names must be unique and
// contain only letters, digits, '-', '_' and '.', which a handshake's
// target carries unescaped. Sizes take units as elsewhere in Caddy (10MB,
// 64KiB). Pools that share a listen address must agree on tls,
// handshake_timeout and max_handshakes. The README describes each option.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "pool" {
			return d.Errf("unrecognized reverse_http option %q (want pool)", d.Val())
		}
		if !d.NextArg() {
			return d.Err("pool needs a name")
		}
		name := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		if _, dup := a.Pools[name]; dup {
			return d.Errf("pool %s is defined twice", name)
		}
		file, line := d.File(), d.Line()
		pc := new(PoolConfig)
		if err := pc.unmarshalCaddyfile(d); err != nil {
			return err
		}
		if err := pc.validate(name); err != nil {
			return fmt.Errorf("reverse_http: %w, at %s:%d", err, file, line)
		}
		if a.Pools == nil {
			a.Pools = make(map[string]*PoolConfig)
		}
		a.Pools[name] = pc
	}
	return nil
}

func (pc *PoolConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "listen":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			pc.Listen = append(pc.Listen, args...)
		case "protocol":
			if !d.AllArgs(&pc.Protocol) {
				return d.ArgErr()
			}
			if pc.Protocol != worker.ProtocolPTTH && pc.Protocol != worker.ProtocolPothead {
				return d.Errf("protocol must be ptth or pothead, not %q", pc.Protocol)
			}
		case "token":
			var tok string
			if !d.AllArgs(&tok) {
				return d.ArgErr()
			}
			pc.Tokens = append(pc.Tokens, tok)
		case "tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			if pc.TLS != nil {
				return d.Err("duplicate tls block")
			}
			pc.TLS = new(PoolTLS)
			if err := pc.TLS.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "max_queue", "max_attempts", "max_handshakes":
			n, err := parsePositiveInt(d)
			if err != nil {
				return err
			}
			switch opt {
			case "max_queue":
				pc.MaxQueue = n
			case "max_attempts":
				pc.MaxAttempts = n
			default:
				pc.MaxHandshakes = n
			}
		case "max_response_header":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			pc.MaxResponseHeader = size
		case "queue_timeout", "handshake_timeout", "response_timeout", "priority_aging":
			dur, err := parseDuration(d)
			if err != nil {
				return err
			}
			switch opt {
			case "queue_timeout":
				pc.QueueTimeout = dur
			case "handshake_timeout":
				pc.HandshakeTimeout = dur
			case "priority_aging":
				pc.PriorityAging = dur
			default:
				pc.ResponseTimeout = dur
			}
		case "allow_unauthenticated":
			if d.NextArg() {
				return d.ArgErr()
			}
			pc.AllowUnauthenticated = true
		case "metrics":
			var what string
			if !d.AllArgs(&what) {
				return d.ArgErr()
			}
			if what != "per_worker" {
				return d.Errf("metrics takes per_worker, not %q", what)
			}
			pc.Metrics = &PoolMetrics{PerWorker: true}
		default:
			return d.Errf("unrecognized pool option %q", opt)
		}
	}
	return nil
}

func (pt *PoolTLS) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "hostnames":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			pt.Hostnames = append(pt.Hostnames, args...)
		case "client_auth":
			if pt.ClientAuth != nil {
				return d.Err("duplicate client_auth block")
			}
			pt.ClientAuth = new(caddytls.ClientAuthentication)
			if err := pt.ClientAuth.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized tls option %q (want hostnames or client_auth)", opt)
		}
	}
	if len(pt.Hostnames) == 0 {
		return d.Err("tls needs hostnames: the names to serve certificates for")
	}
	return nil
}

// parsePositiveInt reads one positive integer argument.
func parsePositiveInt(d *caddyfile.Dispenser) (int, error) {
	opt := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, d.Errf("%s must be a positive integer, not %q", opt, s)
	}
	return n, nil
}

// parseDuration reads one positive duration argument.
func parseDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	opt := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s must be a positive duration, not %q", opt, s)
	}
	return caddy.Duration(dur), nil
}

// parseHandlerDirective sets up the handler from the directive:
//
//	reverse_http <pool> {
//		queue_timeout <duration>
//		priority <integer or placeholders>
//		fair_by <placeholders> {
//			weight <key> <n>
//		}
//		admit_by_estimate
//		coalesce {
//			key <placeholder...>
//			methods <method...>
//			buffer <size>
//		}
//		cache <ttl> {
//			key <placeholder...>
//			max_entry_size <size>
//			max_total_size <size>
//			storage <module> ...
//		}
//	}
//
// The pool must be defined in the reverse_http global option.
func parseHandlerDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
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
	if _, ok := defined[handler.Pool]; !ok {
		// Point at the directive's line, not the end of its block.
		h.Reset()
		h.Next()
		return nil, h.Errf("reverse_http: unknown pool %q: define it with `pool %s { listen ... }` in the reverse_http global option", handler.Pool, handler.Pool)
	}
	return handler, nil
}

// UnmarshalCaddyfile reads the handler directive; see parseHandlerDirective.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if !d.AllArgs(&h.Pool) {
		return d.Err("reverse_http needs exactly one argument: the pool name")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "queue_timeout":
			dur, err := parseDuration(d)
			if err != nil {
				return err
			}
			h.QueueTimeout = dur
		case "coalesce":
			if h.Coalesce != nil {
				return d.Err("duplicate coalesce block")
			}
			h.Coalesce = new(CoalesceConfig)
			if err := h.Coalesce.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "cache":
			if h.Cache != nil {
				return d.Err("duplicate cache directive")
			}
			h.Cache = new(CacheConfig)
			if err := h.Cache.unmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			if ok, err := h.unmarshalSchedOption(d); ok {
				if err != nil {
					return err
				}
				continue
			}
			return d.Errf("unrecognized reverse_http option %q (want queue_timeout, priority, fair_by, admit_by_estimate, coalesce or cache)", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
