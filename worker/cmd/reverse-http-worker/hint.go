package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/reversehttp/reverse_http/worker"
)

// caddyLocalRoot says where Caddy keeps the root of its local CA
// (local_certs, tls internal).
const caddyLocalRoot = "for Caddy's local_certs that is ~/.local/share/caddy/pki/authorities/local/root.crt " +
	"on the hub's machine (under $XDG_DATA_HOME/caddy if that is set)"

// hint says, in terms of the command line, how to fix the error that ended
// the worker; "" if there is nothing to add.
func (o *options) hint(err error) string {
	var se *worker.SetupError
	if !errors.As(err, &se) {
		var he *worker.HandshakeError
		if errors.As(err, &he) {
			return rejectionHint(he.Status)
		}
		return ""
	}
	switch se.Problem {
	case worker.UntrustedHub:
		if o.ca != "" {
			return fmt.Sprintf("no CA in --ca %s signed the hub's certificate: pass the one that did; %s", o.ca, caddyLocalRoot)
		}
		return "pass --ca FILE with the CA that signed the hub's certificate; " + caddyLocalRoot
	case worker.WrongServerName:
		var he x509.HostnameError
		if errors.As(err, &he) && he.Certificate != nil {
			names := certNames(he.Certificate)
			if len(names) > 0 {
				return fmt.Sprintf("the certificate is for %s, not %s: use --server-name %s", strings.Join(names, ", "), he.Host, names[0])
			}
		}
		return "use --server-name with a name the hub's certificate is for"
	case worker.InvalidHubCertificate:
		var ce x509.CertificateInvalidError
		if errors.As(err, &ce) && ce.Reason == x509.Expired {
			return "the hub's certificate has expired or is not valid yet: renew it on the hub, or check the clocks of both machines"
		}
		return "the hub's certificate cannot be used by a TLS server: give the pool's tls block another certificate"
	case worker.ClientCertificateRequired:
		return "the pool requires a client certificate: pass --cert FILE --key FILE"
	case worker.ClientCertificateRejected:
		return "the hub did not accept the certificate in --cert: it must be valid and signed by a CA in the pool's client_auth trust pool"
	case worker.HubWithoutTLS:
		return "the hub does not use TLS on this port: drop --tls"
	case worker.HubRequiresTLS:
		return "the hub requires TLS: add --tls (and --ca FILE if its certificate is not from a public CA)"
	}
	return ""
}

// rejectionHint says what a rejected first handshake usually means.
func rejectionHint(status int) string {
	switch status {
	case 401:
		return "the pool requires a token: pass --token or set $REVERSE_HTTP_TOKEN"
	case 403:
		return "the pool does not accept this token: check --token or $REVERSE_HTTP_TOKEN"
	case 404:
		return "there is no such pool on this address: check --pool and --hub"
	}
	return ""
}

// certNames lists the names a certificate is valid for.
func certNames(c *x509.Certificate) []string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}
