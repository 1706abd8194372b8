package reversehttp

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/reversehttp/reverse_http/internal/testpki"
	"github.com/reversehttp/reverse_http/worker"
)

// nameHandler answers with name; jobs with "hold" in the query run until
// release is closed.
func nameHandler(name string, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("hold") {
			<-release
		}
		io.WriteString(w, name)
	})
}

// unloadedHub is a hub whose ports are chosen but which has no config yet.
func unloadedHub(t *testing.T) *hub {
	h := &hub{t: t, site: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), worker: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	t.Cleanup(func() { caddy.Stop() })
	return h
}

func (h *hub) workerPort() string {
	_, port, _ := net.SplitHostPort(h.worker)
	return port
}

// caddyRoots returns a pool holding the root of Caddy's internal CA, which
// signs the worker listeners' certificates under local_certs.
func caddyRoots(t *testing.T) *x509.CertPool {
	t.Helper()
	rootFile := filepath.Join(testStorage(), "pki", "authorities", "local", "root.crt")
	waitFor(t, "Caddy's local root certificate", func() bool {
		_, err := os.Stat(rootFile)
		return err == nil
	})
	data, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(data)
	return roots
}

// TestRevokedTokenRetiresWorkers reloads without the token a worker was
// admitted with: its idle connection leaves the pool at once, its busy one
// finishes its job and then closes, and no job goes to it meanwhile; a
// worker with a token that stays is kept.
func TestRevokedTokenRetiresWorkers(t *testing.T) {
	const twoTokens = `{
	reverse_http {
		pool jobs {
			listen {workers}
			token tokenA
			token tokenB
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`
	h := newHub(t, twoTokens)
	p := livePool(t, "jobs")
	release := make(chan struct{})
	letGo := sync.OnceFunc(func() { close(release) })
	t.Cleanup(letGo)
	runWorker(t, worker.Config{Hub: h.worker, Pool: "jobs", Token: "tokenA", Slots: 2, Handler: nameHandler("A", release)})
	waitFor(t, "A's connections", func() bool { return p.Stats().Idle == 2 })
	held := getAsync(h, "/?hold")
	waitFor(t, "A's running job", func() bool { return p.Stats().Busy == 1 })
	startWorker(t, h, "jobs", "tokenB", 1, nameHandler("B", nil))
	waitFor(t, "B's connection", func() bool { return p.Stats().Idle == 2 })

	h.load(strings.Replace(twoTokens, "\t\t\ttoken tokenA\n", "", 1))
	waitFor(t, "A's idle connection to leave", func() bool { s := p.Stats(); return s.Idle == 1 && s.Busy == 1 })
	for range 5 {
		if resp, body := h.get("/"); resp.StatusCode != 200 || body != "B" {
			t.Fatalf("after the reload a job got %d %q, want 200 from B", resp.StatusCode, body)
		}
	}
	letGo()
	if got := <-held; got != "200 A" {
		t.Fatalf("the job running on A got %q, want it to finish", got)
	}
	waitFor(t, "A's busy connection to close after its job", func() bool { s := p.Stats(); return s.Idle+s.Busy == 1 })
	for _, info := range conns(p) {
		if string(info.admission.token) != "tokenB" {
			t.Fatalf("the pool holds a connection admitted with %q", info.admission.token)
		}
	}
}

// TestFailedReloadKeepsLimits reloads with max_queue 1 and a listener that
// cannot start: the load fails, and the live pool keeps its limits.
func TestFailedReloadKeepsLimits(t *testing.T) {
	h := newHub(t, basicConfig)
	p := livePool(t, "jobs")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	failing := strings.Replace(basicConfig, "\t\t\ttoken secret\n", "\t\t\ttoken secret\n\t\t\tmax_queue 1\n", 1)
	failing = strings.Replace(failing, "\t\tpool jobs {", "\t\tpool other {\n\t\t\tlisten "+taken.Addr().String()+"\n\t\t\ttoken secret\n\t\t}\n\t\tpool jobs {", 1)
	if err := h.tryLoad(failing); err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("got %v, want the load to fail on the taken address", err)
	}
	p.mu.Lock()
	maxQueue := p.limits.maxQueue
	p.mu.Unlock()
	if maxQueue != DefaultMaxQueue {
		t.Fatalf("the live pool's max_queue is %d after the failed reload, want %d", maxQueue, DefaultMaxQueue)
	}
	first, second := getAsync(h, "/1"), getAsync(h, "/2")
	waitFor(t, "two queued requests", func() bool { return p.Stats().Waiting == 2 })
	startWorker(t, h, "jobs", "secret", 1, nameHandler("w", nil))
	for _, got := range []string{<-first, <-second} {
		if got != "200 w" {
			t.Fatalf("a queued request got %q", got)
		}
	}
}

// TestListenerStartedLoggedOnce reloads twice with the same listener: only
// the first load logs "worker listener started" at info; a listener a
// reload adds is logged so.
func TestListenerStartedLoggedOnce(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	withLog := strings.Replace(basicConfig, "{\n\treverse_http {", "{\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n\treverse_http {", 1)
	h := newHub(t, withLog)
	h.load(strings.Replace(withLog, "token secret", "token secret\n\t\t\tmax_queue 10", 1))
	h.load(withLog)
	added := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h.load(strings.Replace(withLog, "\t\tpool jobs {", "\t\tpool other {\n\t\t\tlisten "+added+"\n\t\t\ttoken secret\n\t\t}\n\t\tpool jobs {", 1))

	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var info, debug []string
	for line := range strings.Lines(string(data)) {
		var entry struct {
			Level, Msg, Address string
			Pool                []string `json:"pool"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg != "worker listener started" {
			continue
		}
		if strings.Count(line, `"pool":`) > 1 {
			t.Errorf("a line names the pool twice: %s", line)
		}
		switch entry.Level {
		case "info":
			info = append(info, entry.Address)
		case "debug":
			debug = append(debug, entry.Address)
		}
	}
	if want := []string{h.worker, added}; fmt.Sprint(info) != fmt.Sprint(want) {
		t.Fatalf("logged at info for %v, want %v (debug for %v)", info, want, debug)
	}
	if len(debug) != 3 {
		t.Fatalf("logged at debug for %v, want the kept listener on each of three reloads", debug)
	}
}

// selfSignedClient is a client certificate that no CA the hub knows
// signed.
func selfSignedClient(t *testing.T) tls.Certificate {
	return testpki.NewCA(t, "rogue").Issue(t, testpki.Leaf{Names: []string{"rogue"}, Client: true})
}

// TestUnverifiedClientAuthIsNotAuthentication checks that client_auth
// blocks that verify no certificate against a configured trust pool leave a
// pool on a non-loopback address unauthenticated, which is a config error:
// on today's main such a pool loaded and a worker with a self-signed
// certificate got in.
func TestUnverifiedClientAuthIsNotAuthentication(t *testing.T) {
	for _, tc := range []struct{ name, block string }{
		{"empty block", "client_auth {\n\t\t\t\t}"},
		{"mode require", "client_auth {\n\t\t\t\t\tmode require\n\t\t\t\t}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := unloadedHub(t)
			config := `{
	local_certs
	skip_install_trust
	reverse_http {
		pool jobs {
			listen 0.0.0.0:` + h.workerPort() + `
			tls {
				hostnames localhost
				` + tc.block + `
			}
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`
			err := h.tryLoad(config)
			if err == nil {
				runWorker(t, worker.Config{Hub: h.worker, Pool: "jobs", Handler: nameHandler("rogue", nil),
					TLS: &tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t), Certificates: []tls.Certificate{selfSignedClient(t)}}})
				p := livePool(t, "jobs")
				deadline := time.Now().Add(5 * time.Second)
				for time.Now().Before(deadline) && p.Stats().Idle == 0 {
					time.Sleep(10 * time.Millisecond)
				}
				t.Fatalf("the pool loaded without authentication on a non-loopback address; a self-signed worker joined it: %v", p.Stats().Idle == 1)
			}
			if !strings.Contains(err.Error(), "requires neither a token nor a client certificate") {
				t.Fatalf("got %v, want the unauthenticated-pool error", err)
			}
			if conn, err := net.Dial("tcp", h.worker); err == nil {
				conn.Close()
				t.Fatal("something listens on the refused pool's address")
			}
		})
	}
}

// tlsHandshake dials addr over TLS presenting cert (nil: none) and sends a
// ptth handshake for pool jobs; it returns the status of the hub's answer,
// or the error that came instead.
func tlsHandshake(addr string, roots *x509.CertPool, cert *tls.Certificate) (int, error) {
	cfg := &tls.Config{ServerName: "localhost", RootCAs: roots}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, handshakeHead("/jobs")); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// TestMutualTLSWorkers runs a pool whose only credential is a client
// certificate from a CA the config names: a worker with such a certificate
// joins, one with an untrusted certificate or none is refused at the TLS
// handshake, and a reload that trusts another CA retires it.
func TestMutualTLSWorkers(t *testing.T) {
	pki := newTestPKI(t)
	h := unloadedHub(t)
	mtls := `{
	local_certs
	skip_install_trust
	reverse_http {
		pool jobs {
			listen 0.0.0.0:` + h.workerPort() + `
			tls {
				hostnames localhost
				client_auth {
					trusted_ca_cert_file ` + pki.caFile(t) + `
				}
			}
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`
	h.load(mtls)
	roots := caddyRoots(t)
	p := livePool(t, "jobs")
	cert := pki.clientCert(t)
	runWorker(t, worker.Config{Hub: h.worker, Pool: "jobs", Handler: nameHandler("mtls", nil),
		TLS: &tls.Config{ServerName: "localhost", RootCAs: roots, Certificates: []tls.Certificate{cert}}})
	waitFor(t, "the mTLS worker to join", func() bool { return p.Stats().Idle == 1 })
	if resp, body := h.get("/"); resp.StatusCode != 200 || body != "mtls" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	adm := conns(p)[0].admission
	if !adm.tls || len(adm.peerCerts) == 0 || !slices.Equal(adm.peerCerts[0].DNSNames, []string{"worker"}) {
		t.Fatalf("admission recorded tls=%v and %d certificates", adm.tls, len(adm.peerCerts))
	}

	rogue := selfSignedClient(t)
	for name, c := range map[string]*tls.Certificate{"untrusted certificate": &rogue, "no certificate": nil} {
		status, err := tlsHandshake(h.worker, roots, c)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("%s: got status %d, error %v; want a TLS certificate error", name, status, err)
		}
	}
	if n := len(conns(p)); n != 1 {
		t.Fatalf("the pool holds %d connections, want only the trusted worker's", n)
	}

	other := newTestPKI(t)
	h.load(strings.Replace(mtls, pki.caFile(t), other.caFile(t), 1))
	waitFor(t, "the worker whose CA is no longer trusted to leave", func() bool { s := p.Stats(); return s.Idle+s.Busy == 0 })
}

// TestClientCertRequiredByReload reloads a token pool over TLS so that it
// also requires client certificates: a connection that presented none is
// retired.
func TestClientCertRequiredByReload(t *testing.T) {
	pki := newTestPKI(t)
	tokenTLS := `{
	local_certs
	skip_install_trust
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			tls {
				hostnames localhost
			}
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http jobs
}`
	h := newHub(t, tokenTLS)
	p := livePool(t, "jobs")
	runWorker(t, worker.Config{Hub: h.worker, Pool: "jobs", Token: "secret", Handler: nameHandler("w", nil),
		TLS: &tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t)}})
	waitFor(t, "the worker to join", func() bool { return p.Stats().Idle == 1 })
	h.load(strings.Replace(tokenTLS, "\t\t\t\thostnames localhost\n",
		"\t\t\t\thostnames localhost\n\t\t\t\tclient_auth {\n\t\t\t\t\ttrusted_ca_cert_file "+pki.caFile(t)+"\n\t\t\t\t}\n", 1))
	waitFor(t, "the connection without a client certificate to leave", func() bool { s := p.Stats(); return s.Idle+s.Busy == 0 })
}
