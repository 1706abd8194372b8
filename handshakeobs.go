package reversehttp

import (
	"fmt"
	"net"
	"net/http"
)

// countHandshake counts a handshake's result under the pool it named, or,
// when it named none of the listener's pools (or came before naming one),
// under the listener's first pool by name: a peer must not be able to
// invent label values.
func (wl *workerListener) countHandshake(pool string, r handshakeResult) {
	var p *Pool
	switch {
	case wl.pools[pool] != nil:
		p = wl.pools[pool].pool
	case wl.bare != nil:
		p = wl.bare.pool
	case len(wl.pools) > 0:
		p = wl.pools[sortedKeys(wl.pools)[0]].pool
	}
	if p != nil {
		p.obs.handshakes[r].Add(1)
	}
}

// tlsFailure is what a failed TLS handshake counts as.
func tlsFailure(err error) handshakeResult {
	if isTimeout(err) {
		return resultTimeout
	}
	return resultTLSError
}

// drainedRejection refuses a worker the operator drained: 503, which a
// worker retries, so that it comes back once the drain is lifted.
func drainedRejection(conn net.Conn, entry *poolEntry, name string) *rejection {
	if !entry.pool.obs.isDrained(name, name+"@"+hostOf(conn.RemoteAddr())) {
		return nil
	}
	return &rejection{
		status: http.StatusServiceUnavailable,
		reason: fmt.Sprintf("worker %q is drained by the hub's operator; it is refused until the drain is lifted", name),
		kind:   resultDrained,
	}
}
