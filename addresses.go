package reversehttp

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Caddy opens every listener with SO_REUSEPORT, so two listeners whose
// addresses overlap do not fail to bind: the kernel splits the connections
// between them. Among them a pool's workers and a site's consumers would
// each meet the wrong server; these checks make that a config error.

// checkSiteAddresses refuses a pool that listens where an http server does.
// The http app may be half provisioned (it provisions the handlers that
// provision this app), but its servers' listen addresses, those of its
// automatic HTTPS redirects included, are known by then.
func (a *App) checkSiteAddresses(ctx caddy.Context) error {
	appIface, err := ctx.AppIfConfigured("http")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil
	}
	if err != nil {
		return err
	}
	httpApp, ok := appIface.(*caddyhttp.App)
	if !ok {
		return nil
	}
	repl := caddy.NewReplacer()
	for _, srvName := range sortedKeys(httpApp.Servers) {
		for _, sl := range httpApp.Servers[srvName].Listen {
			sa, err := caddy.ParseNetworkAddress(repl.ReplaceAll(sl, ""))
			if err != nil {
				continue // the http app reports it
			}
			for _, wl := range a.listeners {
				if addrsOverlap(wl.addr, sa) {
					return fmt.Errorf("pool %s: listen %s overlaps the listen address %s of http server %s; a pool needs an address that no site listens on",
						wl.first, wl.listen, sl, srvName)
				}
			}
		}
	}
	return nil
}

// overlapsListener refuses a listen address l (parsed: na) of pool name that
// differs from, but overlaps, one an earlier pool listens on.
func overlapsListener(name, l string, na caddy.NetworkAddress, byAddr map[string]*workerListener) error {
	for _, wl := range byAddr {
		if addrsOverlap(wl.addr, na) {
			return fmt.Errorf("pool %s: listen %s overlaps listen %s of pool %s; pools that share a port must give the same address",
				name, l, wl.listen, wl.first)
		}
	}
	return nil
}

// addrsOverlap reports whether listeners on a and b could take each other's
// connections: same kind of network and port, and hosts that share an
// interface (either a wildcard of a family the other binds, or the same
// address).
func addrsOverlap(a, b caddy.NetworkAddress) bool {
	if netKind(a.Network) != netKind(b.Network) {
		return false
	}
	if a.IsUnixNetwork() || a.IsFdNetwork() {
		return a.Host == b.Host
	}
	if a.EndPort < b.StartPort || b.EndPort < a.StartPort {
		return false
	}
	ba, bb := bindsOf(a), bindsOf(b)
	if ba.wildcard || bb.wildcard {
		return (ba.v4 && bb.v4) || (ba.v6 && bb.v6)
	}
	for _, x := range ba.hosts {
		for _, y := range bb.hosts {
			if x == y {
				return true
			}
		}
	}
	return false
}

// netKind is a network without its IP version: tcp4 and tcp6 listeners can
// overlap a tcp one.
func netKind(network string) string {
	return strings.TrimRight(network, "46")
}

// binds is what a listener's host binds: every address of the families v4
// and v6 (wildcard), or the addresses in hosts, which also say the families.
type binds struct {
	wildcard bool
	v4, v6   bool
	hosts    []string // canonical IPs, or a name as given
}

func bindsOf(na caddy.NetworkAddress) binds {
	only4, only6 := strings.HasSuffix(na.Network, "4"), strings.HasSuffix(na.Network, "6")
	switch na.Host {
	case "":
		return binds{wildcard: true, v4: !only6, v6: !only4}
	case "localhost":
		return withFamilies(binds{hosts: []string{"127.0.0.1", "::1"}}, only4, only6)
	}
	ip := net.ParseIP(na.Host)
	if ip == nil {
		return binds{hosts: []string{na.Host}, v4: !only6, v6: !only4}
	}
	if ip.IsUnspecified() {
		if ip.To4() != nil {
			return binds{wildcard: true, v4: true}
		}
		// Go listens on both families on [::] unless told tcp6.
		return binds{wildcard: true, v4: !only6, v6: true}
	}
	return withFamilies(binds{hosts: []string{ip.String()}}, only4, only6)
}

// withFamilies keeps those of b's IP hosts that the network can bind, and
// sets b's families from them.
func withFamilies(b binds, only4, only6 bool) binds {
	var kept []string
	for _, h := range b.hosts {
		if is4 := net.ParseIP(h).To4() != nil; (is4 && !only6) || (!is4 && !only4) {
			kept = append(kept, h)
			b.v4, b.v6 = b.v4 || is4, b.v6 || !is4
		}
	}
	b.hosts = kept
	return b
}
