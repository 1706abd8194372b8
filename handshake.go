package reversehttp

import (
	"bufio"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/reversehttp/reverse_http/worker"

	"golang.org/x/net/http/httpguts"
)

// maxHandshakeBytes bounds a ptth handshake request, its request line and
// headers together. A worker's takes a few hundred bytes; the bound is read
// before any credential is checked, so it is all an unauthenticated peer can
// make the hub hold.
const maxHandshakeBytes = 8 << 10

// handshakeBufferSize is the handshake reader's buffer: small, so that
// thousands of workers dialling in at once cost little. Longer lines still
// parse, up to maxHandshakeBytes.
const handshakeBufferSize = 1024

// handshakeRequest is what a worker's ptth handshake asks for.
type handshakeRequest struct {
	pool     string   // the pool the target names
	authz    string   // the Authorization header, if any
	worker   string   // the name it gives (worker.WorkerHeader)
	features features // those it asks for that the hub speaks
}

// rejection is why a handshake is refused, as the hub answers it. Status 0
// means the peer closed before sending a byte: there is nothing to answer.
type rejection struct {
	status int
	reason string
	kind   handshakeResult // what it counts as; resultUnset: what its status says
}

func reject(status int, format string, args ...any) *rejection {
	return &rejection{status: status, reason: fmt.Sprintf(format, args...)}
}

// boundedReader reads at most n bytes from r; a read beyond them fails, and
// sets exceeded.
type boundedReader struct {
	r        io.Reader
	n        int
	exceeded bool
}

var errHandshakeTooLarge = errors.New("handshake too large")

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		b.exceeded = true
		return 0, errHandshakeTooLarge
	}
	if len(p) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= n
	return n, err
}

// tlsRecordStart is how a TLS connection begins: a handshake record (type
// 22) of TLS version 3.x.
var tlsRecordStart = []byte{0x16, 0x03}

// readHandshake reads a ptth handshake request from r and checks its form,
// reading no more than maxHandshakeBytes from r. It returns the reader it
// used, which may hold bytes the worker sent beyond its request.
func readHandshake(r io.Reader) (handshakeRequest, *bufio.Reader, *rejection) {
	lr := &boundedReader{r: r, n: maxHandshakeBytes}
	br := bufio.NewReaderSize(lr, handshakeBufferSize)
	start, err := br.Peek(len(tlsRecordStart))
	if len(start) == 0 && isTimeout(err) {
		return handshakeRequest{}, br, reject(http.StatusRequestTimeout, "no handshake within the handshake timeout")
	}
	if len(start) == 0 && err != nil {
		// A worker stopping mid-dial, or a port check.
		return handshakeRequest{}, br, &rejection{}
	}
	if string(start) == string(tlsRecordStart) {
		return handshakeRequest{}, br, reject(http.StatusBadRequest,
			"this worker listener does not use TLS, but the worker began a TLS handshake: dial it without TLS, or give the pool a tls block")
	}
	req, err := http.ReadRequest(br)
	if lr.exceeded {
		return handshakeRequest{}, br, reject(http.StatusRequestHeaderFieldsTooLarge,
			"the handshake's request line and headers exceed %d bytes", maxHandshakeBytes)
	}
	if isTimeout(err) {
		return handshakeRequest{}, br, reject(http.StatusRequestTimeout, "the handshake did not end within the handshake timeout")
	}
	if err != nil {
		return handshakeRequest{}, br, reject(http.StatusBadRequest, "malformed handshake: %v", err)
	}
	if req.ContentLength != 0 {
		return handshakeRequest{}, br, reject(http.StatusBadRequest, "a handshake has no body")
	}
	if !httpguts.HeaderValuesContainsToken(req.Header["Upgrade"], worker.UpgradeToken) ||
		!httpguts.HeaderValuesContainsToken(req.Header["Connection"], "upgrade") {
		return handshakeRequest{}, br, reject(http.StatusBadRequest,
			"expected a handshake with Connection: Upgrade and Upgrade: %s", worker.UpgradeToken)
	}
	// The target is unescaped once, as for any HTTP request; pool names
	// need no escaping (see validPoolName), so nothing is unescaped twice.
	return handshakeRequest{
		pool:     strings.TrimPrefix(req.URL.Path, "/"),
		authz:    req.Header.Get("Authorization"),
		worker:   req.Header.Get(worker.WorkerHeader),
		features: parseFeatures(req.Header[worker.FeaturesHeader]),
	}, br, nil
}

// admitTo picks the pool that hs names among pools and checks hs's token.
func admitTo(pools map[string]*poolEntry, hs handshakeRequest) (*poolEntry, *rejection) {
	entry := pools[hs.pool]
	if entry == nil {
		return nil, reject(http.StatusNotFound, "no pool %q on this listener", hs.pool)
	}
	if status, reason := checkToken(entry.config.tokens, hs.authz); status != 0 {
		return nil, &rejection{status: status, reason: reason}
	}
	return entry, nil
}

// checkToken returns 0 when the Authorization header admits the worker, or
// the status and reason to reject it with.
func checkToken(tokens [][]byte, authz string) (int, string) {
	if len(tokens) == 0 {
		return 0, ""
	}
	given := bearerToken(authz)
	if given == "" {
		return http.StatusUnauthorized, "a bearer token is required"
	}
	if !tokenMatches(tokens, []byte(given)) {
		return http.StatusForbidden, "the token is not valid for this pool"
	}
	return 0, ""
}

// tokenMatches reports whether given is one of tokens, in time that does
// not depend on where they differ.
func tokenMatches(tokens [][]byte, given []byte) bool {
	match := 0
	for _, t := range tokens {
		match |= subtle.ConstantTimeCompare(t, given)
	}
	return match == 1
}

// bearerToken returns the token an Authorization header carries, or "".
func bearerToken(authz string) string {
	scheme, token, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return token
}

// hubFeatures are the optional parts of the protocol the hub speaks.
var hubFeatures = features{accept: true, ready: true}

// parseFeatures returns the features that both the worker, in its
// FeaturesHeader values, and the hub speak. Unknown tokens are ignored, so
// that newer workers can offer what older hubs do not know.
func parseFeatures(values []string) features {
	var f features
	for _, v := range values {
		for tok := range strings.SplitSeq(v, ",") {
			switch tok = strings.TrimSpace(tok); {
			case strings.EqualFold(tok, worker.FeatureAccept):
				f.accept = hubFeatures.accept
			case strings.EqualFold(tok, worker.FeatureReady):
				f.ready = hubFeatures.ready
			}
		}
	}
	return f
}

// header lists f as the hub's 101 answers it in FeaturesHeader; "" for none.
func (f features) header() string {
	var agreed []string
	if f.accept {
		agreed = append(agreed, worker.FeatureAccept)
	}
	if f.ready {
		agreed = append(agreed, worker.FeatureReady)
	}
	return strings.Join(agreed, ", ")
}
