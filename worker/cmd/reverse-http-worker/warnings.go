package main

import (
	"net"
	"os"

	"github.com/reversehttp/reverse_http/worker"
)

// warning is a flag given that has no effect with the others, or a
// setting that deserves a second look.
type warning struct {
	flag, why string
}

// warnings lists what the flags given do not do: every flag that the
// protocol, or the choice of what runs the jobs, ignores.
func (o *options) warnings() []warning {
	var ws []warning
	add := func(flag, why string) { ws = append(ws, warning{flag, why}) }
	if o.protocol == worker.ProtocolPothead {
		const noHandshake = "with --protocol pothead the worker sends no handshake"
		if o.given["pool"] {
			add("--pool", noHandshake+": the address dialled chooses the pool")
		}
		if o.given["token"] {
			add("--token", noHandshake+" to carry a token")
		} else if os.Getenv("REVERSE_HTTP_TOKEN") != "" {
			add("$REVERSE_HTTP_TOKEN", noHandshake+" to carry a token")
		}
		if o.given["name"] {
			add("--name", noHandshake+" to carry a name")
		}
	}
	j := &o.jobs
	if o.given["exec-content-type"] && j.exec == "" {
		add("--exec-content-type", "only --exec responses get it (a --cgi script sends its own Content-Type)")
	}
	if o.upstream != "" {
		for _, f := range []string{"exec-timeout", "exec-env"} {
			if o.given[f] {
				add("--"+f, "it applies to --exec and --cgi, not to --upstream")
			}
		}
	}
	g := &o.gates
	if o.given["gate-timeout"] && g.url == "" {
		add("--gate-timeout", "it applies to --gate-url only")
	}
	if o.given["gate-interval"] && g.maxCPU == 0 && g.minFree == 0 && g.url == "" {
		add("--gate-interval", "no gate is set (--max-cpu, --min-free-memory, --gate-url)")
	}
	if o.given["resolve-interval"] && allLiteral(o.hubs) {
		add("--resolve-interval", "every --hub is an IP address: there is nothing to resolve")
	}
	if o.metrics != "" {
		if host, _, err := net.SplitHostPort(o.metrics); err == nil {
			if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
				add("--metrics", "it listens on every interface, and /jobs shows request paths: bind it to localhost or a private address")
			}
		}
	}
	return ws
}

// allLiteral reports whether every hub address is an IP address.
func allLiteral(hubs []string) bool {
	for _, h := range hubs {
		host, _, err := net.SplitHostPort(h)
		if err != nil || net.ParseIP(host) == nil {
			return false
		}
	}
	return true
}
