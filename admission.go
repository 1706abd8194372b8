package reversehttp

import "crypto/x509"

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
	token     []byte              // the bearer token it presented; nil for none
	peerCerts []*x509.Certificate // the client certificate chain TLS verified, if any
}
