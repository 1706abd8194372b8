package reversehttp

// TLS mistakes of a worker against the real hub: each ends worker.Run at
// start-up with a SetupError that names it.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/reversehttp/reverse_http/internal/testpki"
	"github.com/reversehttp/reverse_http/worker"
)

func TestWorkerTLSMistakes(t *testing.T) {
	dir := t.TempDir()
	clientCA := testpki.NewCA(t, "workers CA")
	caFile := filepath.Join(dir, "workers-ca.pem")
	if err := os.WriteFile(caFile, clientCA.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	workerCert := clientCA.Issue(t, testpki.Leaf{Names: []string{"w1"}, Client: true})
	strangerCert := testpki.NewCA(t, "stranger").Issue(t, testpki.Leaf{Names: []string{"w2"}, Client: true})
	plainAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := newHub(t, fmt.Sprintf(`{
	local_certs
	skip_install_trust
	reverse_http {
		pool secure {
			listen {workers}
			tls {
				hostnames localhost
				client_auth {
					trust_pool file %s
				}
			}
		}
		pool plain {
			listen %s
			token secret
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	reverse_http secure
}`, caFile, plainAddr))
	rootFile := filepath.Join(testStorage(), "pki", "authorities", "local", "root.crt")
	waitFor(t, "Caddy's local root certificate", func() bool {
		_, err := os.Stat(rootFile)
		return err == nil
	})
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	for _, tc := range []struct {
		name string
		hub  string
		pool string
		tls  *tls.Config
		want worker.SetupProblem
	}{
		{"untrusted hub", h.worker, "secure", &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool()}, worker.UntrustedHub},
		// No name: the worker verifies the IP address of --hub, the hub
		// serves its default name.
		{"wrong server name", h.worker, "secure", &tls.Config{RootCAs: roots}, worker.WrongServerName},
		{"no client certificate", h.worker, "secure", &tls.Config{ServerName: "localhost", RootCAs: roots}, worker.ClientCertificateRequired},
		{"client certificate from another CA", h.worker, "secure",
			&tls.Config{ServerName: "localhost", RootCAs: roots, Certificates: []tls.Certificate{strangerCert}}, worker.ClientCertificateRejected},
		{"TLS to a plain pool", plainAddr, "plain", &tls.Config{ServerName: "localhost", RootCAs: roots}, worker.HubWithoutTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := worker.Run(ctx, worker.Config{
				Hub: tc.hub, Pool: tc.pool, Token: "secret", Slots: 2, TLS: tc.tls,
				Handler: http.NotFoundHandler(), Logger: slog.New(slog.DiscardHandler),
			})
			if ctx.Err() != nil {
				t.Fatalf("still retrying after 10 s: %v", err)
			}
			var se *worker.SetupError
			if !errors.As(err, &se) || se.Problem != tc.want {
				t.Fatalf("Run returned %v (%T), want a SetupError %q", err, err, tc.want)
			}
			t.Log(err)
		})
	}

	// A name the hub has no certificate for (yet: it may be obtaining one)
	// is retried.
	t.Run("no certificate for the name", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := worker.Run(ctx, worker.Config{
			Hub: h.worker, Pool: "secure", Handler: http.NotFoundHandler(), Logger: slog.New(slog.DiscardHandler),
			TLS: &tls.Config{ServerName: "hub.example", RootCAs: roots, Certificates: []tls.Certificate{workerCert}},
		})
		if ctx.Err() == nil {
			t.Fatalf("Run returned %v, want it to keep retrying", err)
		}
	})

	// The right settings get in.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := worker.New(worker.Config{
		Hub: h.worker, Pool: "secure", Handler: http.NotFoundHandler(), Logger: slog.New(slog.DiscardHandler),
		TLS: &tls.Config{ServerName: "localhost", RootCAs: roots, Certificates: []tls.Certificate{workerCert}},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, "the worker with a certificate to connect", func() bool { return livePool(t, "secure").Stats().Idle == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
