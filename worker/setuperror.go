package worker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
)

// SetupError is returned by Run when no handshake has succeeded yet and a
// connection attempt failed in a way that retrying cannot heal: the
// worker's TLS settings do not fit the hub's listener. Failures that can
// heal (a refused connection, a timeout, a DNS error, a 5xx, a connection
// closed without an answer) are retried, and after a first success every
// failure is.
type SetupError struct {
	Problem SetupProblem
	Err     error // the dial, TLS or handshake error
}

func (e *SetupError) Error() string { return e.Problem.String() + ": " + e.Err.Error() }

func (e *SetupError) Unwrap() error { return e.Err }

// SetupProblem names what a SetupError found wrong.
type SetupProblem int

const (
	// UntrustedHub: the hub's certificate is not signed by a CA that
	// Config.TLS trusts (x509.UnknownAuthorityError).
	UntrustedHub SetupProblem = iota + 1
	// WrongServerName: the hub's certificate is for other names than
	// Config.TLS.ServerName (x509.HostnameError).
	WrongServerName
	// InvalidHubCertificate: the hub's certificate has expired, is not yet
	// valid or may not be used by a server (x509.CertificateInvalidError).
	InvalidHubCertificate
	// ClientCertificateRequired: the hub wants a client certificate and
	// Config.TLS has none.
	ClientCertificateRequired
	// ClientCertificateRejected: the hub refused the client certificate
	// (or none of those in Config.TLS is from a CA it accepts).
	ClientCertificateRejected
	// HubWithoutTLS: Config.TLS is set but the hub's listener does not
	// speak TLS (tls.RecordHeaderError).
	HubWithoutTLS
	// HubRequiresTLS: Config.TLS is nil but the hub's listener wants TLS
	// (its 400 says so).
	HubRequiresTLS
)

func (p SetupProblem) String() string {
	switch p {
	case UntrustedHub:
		return "the hub's certificate is not signed by a trusted CA"
	case WrongServerName:
		return "the hub's certificate is for another name"
	case InvalidHubCertificate:
		return "the hub's certificate is not valid"
	case ClientCertificateRequired:
		return "the hub requires a client certificate"
	case ClientCertificateRejected:
		return "the hub refused the client certificate"
	case HubWithoutTLS:
		return "the hub does not use TLS on this address"
	case HubRequiresTLS:
		return "the hub requires TLS on this address"
	}
	return "connection setup failed"
}

// clientCertAlerts are the TLS alerts a server sends about the client's
// certificate: bad_certificate, unsupported_certificate,
// certificate_revoked, certificate_expired, certificate_unknown,
// unknown_ca and certificate_required.
var clientCertAlerts = []tls.AlertError{42, 43, 44, 45, 46, 48, 116}

// alertHandshakeFailure is what a TLS 1.2 server (Go's, so Caddy's) sends
// when the client gave no certificate, as well as for other failures.
const alertHandshakeFailure tls.AlertError = 40

// alertInternalError is what Caddy sends when it has no certificate for the
// name the client asked for, perhaps because it is still obtaining one.
const alertInternalError tls.AlertError = 80

// permanent returns the error that should end Run, made from err, an error
// of a first connection attempt; nil if err may heal.
func (w *Worker) permanent(err error) error {
	var he *HandshakeError
	if errors.As(err, &he) {
		if w.cfg.TLS == nil && he.Status == http.StatusBadRequest && mentionsTLS(he.Reason) {
			return &SetupError{Problem: HubRequiresTLS, Err: he}
		}
		if fatalStatus(he.Status) {
			return he
		}
		return nil
	}
	if p := w.tlsProblem(err); p != 0 {
		return &SetupError{Problem: p, Err: err}
	}
	return nil
}

// tlsProblem classifies a dial or handshake error that TLS caused; 0 means
// it is not one that retrying cannot heal.
func (w *Worker) tlsProblem(err error) SetupProblem {
	if w.cfg.TLS == nil {
		return 0
	}
	var (
		unknownCA x509.UnknownAuthorityError
		noRoots   x509.SystemRootsError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		notTLS    tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &noRoots):
		return UntrustedHub
	case errors.As(err, &hostname):
		return WrongServerName
	case errors.As(err, &invalid):
		return InvalidHubCertificate
	case errors.As(err, &notTLS):
		return HubWithoutTLS
	}
	var attempt *tlsAttemptError
	errors.As(err, &attempt)
	asked := attempt != nil && attempt.askedForCert
	a, ok := remoteAlert(err)
	if !ok || !slices.Contains(clientCertAlerts, a) && !(a == alertHandshakeFailure && asked) {
		return 0
	}
	// With certificates but none sent, none was from a CA the hub named:
	// for the operator that is a refused certificate too.
	if attempt != nil && attempt.sentCert || len(w.cfg.TLS.Certificates) > 0 || w.cfg.TLS.GetClientCertificate != nil {
		return ClientCertificateRejected
	}
	return ClientCertificateRequired
}

// remoteAlert returns the TLS alert that the hub sent, if err is one.
// crypto/tls reports a received alert as a *net.OpError "remote error"
// around an unexported type, whose text is that of the tls.AlertError with
// the same number.
func remoteAlert(err error) (tls.AlertError, bool) {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "remote error" || oe.Err == nil {
		return 0, false
	}
	msg := oe.Err.Error()
	for a := range tls.AlertError(255) {
		if msg == a.Error() {
			return a, true
		}
	}
	return 0, false
}

// retryHint says what a failure that is retried may mean, where crypto/tls
// is terse; "" if there is nothing to add.
func (w *Worker) retryHint(err error, ep *endpoint) string {
	if w.cfg.TLS == nil {
		return ""
	}
	if a, ok := remoteAlert(err); ok && a == alertInternalError {
		name := w.cfg.TLS.ServerName
		if name == "" {
			name = ep.hub.host
		}
		return "the hub may have no certificate for " + name + " (yet)"
	}
	return ""
}

// mentionsTLS reports whether a hub's rejection reason says that the
// address wants TLS.
func mentionsTLS(reason string) bool {
	r := strings.ToLower(reason)
	return strings.Contains(r, "tls") || strings.Contains(r, "https")
}
