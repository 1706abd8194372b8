package reversehttp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"
)

// workerInfo is what a connection's handshake told the pool about the
// worker behind it.
type workerInfo struct {
	name      string    // the name it gave (worker.WorkerHeader); may be empty
	features  features  // optional parts of the protocol used on the connection
	admission admission // how it was let in
}

// features are the optional parts of the wire protocol that the hub and the
// worker agreed on in the handshake (worker.FeaturesHeader).
type features struct {
	// accept: the worker sends 100 Continue only once it has accepted a
	// job and before any of it runs (worker.FeatureAccept).
	accept bool
	// ready: the worker says with readiness frames whether the
	// connection may carry a job (worker.FeatureReady).
	ready bool
}

// admission records the credentials a connection was admitted with, so that
// a reload that withdraws them can close it.
type admission struct {
	protocol  string              // the pool's protocol it was admitted under
	tls       bool                // it came over TLS
	token     []byte              // the bearer token it presented; nil for none
	peerCerts []*x509.Certificate // the client certificate chain it presented over TLS, leaf first
}

// admits reports whether pc, as provisioned, would let in a connection
// admitted with adm: same protocol, TLS as the pool has it, a token the pool
// still holds if it holds any, and a client certificate that the pool's
// client authentication would still accept.
func (pc *PoolConfig) admits(adm admission) bool {
	if adm.protocol != pc.Protocol || adm.tls != (pc.TLS != nil) {
		return false
	}
	if len(pc.tokens) > 0 && (adm.token == nil || !tokenMatches(pc.tokens, adm.token)) {
		return false
	}
	if pc.tlsPolicy == nil {
		return true
	}
	return clientCertAdmitted(pc.tlsPolicy, adm.peerCerts) == nil
}

// clientCertAdmitted checks a client certificate chain as a TLS handshake
// under cfg would: whether cfg requires one, verifies it, and what its
// VerifyConnection (where Caddy's client_auth verifiers run) says.
func clientCertAdmitted(cfg *tls.Config, certs []*x509.Certificate) error {
	switch cfg.ClientAuth {
	case tls.NoClientCert:
		return nil
	case tls.RequireAnyClientCert, tls.RequireAndVerifyClientCert:
		if len(certs) == 0 {
			return errNoClientCert
		}
	}
	var chains [][]*x509.Certificate
	if len(certs) > 0 && cfg.ClientAuth >= tls.VerifyClientCertIfGiven {
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		var err error
		chains, err = certs[0].Verify(x509.VerifyOptions{
			Roots:         cfg.ClientCAs,
			Intermediates: inter,
			CurrentTime:   time.Now(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return err
		}
	}
	if cfg.VerifyConnection != nil {
		return cfg.VerifyConnection(tls.ConnectionState{PeerCertificates: certs, VerifiedChains: chains})
	}
	return nil
}

var errNoClientCert = errors.New("the pool requires a client certificate, and the connection presented none")
