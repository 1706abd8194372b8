package reversehttp

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// TestRequiresClientCert checks which client authentication counts as
// authenticating workers: a mode that requires a certificate, verified
// against trust the config names.
func TestRequiresClientCert(t *testing.T) {
	caPool := json.RawMessage(`{"provider":"file","pem_files":["/ca.pem"]}`)
	leaf := []json.RawMessage{json.RawMessage(`{"verifier":"leaf","leaf_certs_loaders":[{"loader":"file","files":["/w.pem"]}]}`)}
	other := []json.RawMessage{json.RawMessage(`{"verifier":"revocation"}`)}
	for _, tc := range []struct {
		name string
		ca   *caddytls.ClientAuthentication
		want bool
	}{
		{"no client_auth", nil, false},
		{"empty block", &caddytls.ClientAuthentication{}, false},
		{"require", &caddytls.ClientAuthentication{Mode: "require"}, false},
		{"require with a CA, which it does not check", &caddytls.ClientAuthentication{Mode: "require", CARaw: caPool}, false},
		{"require with pinned leaves", &caddytls.ClientAuthentication{Mode: "require", TrustedLeafCerts: []string{"MIIB"}}, true},
		{"require_and_verify against the system roots", &caddytls.ClientAuthentication{Mode: "require_and_verify"}, false},
		{"require_and_verify with a trust pool", &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: caPool}, true},
		{"default mode with a trust pool", &caddytls.ClientAuthentication{CARaw: caPool}, true},
		{"default mode with trusted_ca_certs", &caddytls.ClientAuthentication{TrustedCACerts: []string{"MIIB"}}, true},
		{"default mode with trusted_ca_certs_pem_files", &caddytls.ClientAuthentication{TrustedCACertPEMFiles: []string{"/ca.pem"}}, true},
		{"default mode with trusted_leaf_certs", &caddytls.ClientAuthentication{TrustedLeafCerts: []string{"MIIB"}}, true},
		{"default mode with the leaf verifier", &caddytls.ClientAuthentication{VerifiersRaw: leaf}, true},
		{"default mode with another verifier only", &caddytls.ClientAuthentication{VerifiersRaw: other}, false},
		{"request", &caddytls.ClientAuthentication{Mode: "request", CARaw: caPool}, false},
		{"verify_if_given", &caddytls.ClientAuthentication{Mode: "verify_if_given", CARaw: caPool}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := &PoolConfig{TLS: &PoolTLS{Hostnames: []string{"w"}, ClientAuth: tc.ca}}
			if got := pc.requiresClientCert(); got != tc.want {
				t.Fatalf("requiresClientCert() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestValidPoolName(t *testing.T) {
	for name, want := range map[string]bool{
		"jobs": true, "gpu-1": true, "a_b.c": true, "aA": true, "0": true,
		"": false, "a%41": false, "50%": false, "a b": false, "a/b": false, "é": false, "a?b": false, "a#b": false,
	} {
		if got := validPoolName(name); got != want {
			t.Errorf("validPoolName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestAddrsOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{":4040", ":4040", true},
		{":4040", ":4041", false},
		{":4040", "127.0.0.1:4040", true},
		{"0.0.0.0:4040", "127.0.0.1:4040", true},
		{"0.0.0.0:4040", "[::1]:4040", false},
		{"[::]:4040", "127.0.0.1:4040", true},
		{"tcp6/[::]:4040", "127.0.0.1:4040", false},
		{"tcp4/:4040", "[::1]:4040", false},
		{"127.0.0.1:4040", "127.0.0.2:4040", false},
		{"localhost:4040", "127.0.0.1:4040", true},
		{"localhost:4040", "[::1]:4040", true},
		{"127.0.0.1:4040", "127.0.0.1:4000-4100", true},
		{"127.0.0.1:4040", "127.0.0.1:4041-4100", false},
		{"unix//run/w.sock", "unix//run/w.sock", true},
		{"unix//run/w.sock", "unix//run/x.sock", false},
		{"unix//run/w.sock", ":4040", false},
		{"udp/:4040", ":4040", false},
	} {
		a, err := caddy.ParseNetworkAddress(tc.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := caddy.ParseNetworkAddress(tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := addrsOverlap(a, b); got != tc.want {
			t.Errorf("addrsOverlap(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := addrsOverlap(b, a); got != tc.want {
			t.Errorf("addrsOverlap(%s, %s) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}

// validate adapts a Caddyfile template as hub.tryLoad does and runs
// caddy.Validate on it, as `caddy validate` does.
func (h *hub) validate(template string) error {
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(h.site, "http://"))
	cf := strings.NewReplacer("{siteport}", port, "{workers}", h.worker).Replace(template)
	cf = fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tstorage file_system %s\n", testStorage()) +
		strings.TrimPrefix(strings.TrimSpace(cf), "{") + "\n"
	out, err := adapt(cf)
	if err != nil {
		return fmt.Errorf("adapt: %w", err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(out, &cfg); err != nil {
		return err
	}
	return caddy.Validate(&cfg)
}

// TestListenAddressConflicts checks the config errors of listen addresses
// that would split one port's connections, and of pools sharing an address
// that disagree on the listener's settings, both at validation and at load.
func TestListenAddressConflicts(t *testing.T) {
	h := &hub{t: t, site: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), worker: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	t.Cleanup(func() { caddy.Stop() })
	_, sitePort, _ := net.SplitHostPort(strings.TrimPrefix(h.site, "http://"))
	_, workerPort, _ := net.SplitHostPort(h.worker)
	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{"a pool on a site's address", `{
	reverse_http {
		pool jobs {
			listen 127.0.0.1:{siteport}
			token secret
		}
	}
}
http://:{siteport} {
	reverse_http jobs
}`, []string{"pool jobs: listen 127.0.0.1:" + sitePort + " overlaps the listen address :" + sitePort + " of http server srv0"}},
		{"a pool on the address of a site without it", `{
	reverse_http {
		pool jobs {
			listen :{siteport}
			token secret
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	respond "hello"
}`, []string{"pool jobs: listen :" + sitePort + " overlaps the listen address 127.0.0.1:" + sitePort + " of http server srv0"}},
		{"pools on overlapping addresses", `{
	reverse_http {
		pool a {
			listen :` + workerPort + `
			token secret
		}
		pool b {
			listen {workers}
			token secret
		}
	}
}`, []string{"pool b: listen " + h.worker + " overlaps listen :" + workerPort + " of pool a"}},
		{"a pool giving an address twice", `{
	reverse_http {
		pool a {
			listen {workers} {workers}
			protocol pothead
		}
	}
}`, []string{"pool a: listen " + h.worker + " is given twice"}},
		{"pools sharing an address with different handshake timeouts", `{
	reverse_http {
		pool a {
			listen {workers}
			token secret
			handshake_timeout 5s
		}
		pool b {
			listen {workers}
			token secret
		}
	}
}`, []string{"pool b: listen " + h.worker + " is shared with pool a, whose handshake_timeout differs (5s, not 10s)"}},
		{"pools sharing an address with different max_handshakes", `{
	reverse_http {
		pool a {
			listen {workers}
			token secret
		}
		pool b {
			listen {workers}
			token secret
			max_handshakes 10
		}
	}
}`, []string{"pool b: listen " + h.worker + " is shared with pool a, whose max_handshakes differs (500, not 10)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Caddy provisions its apps in map order: several runs see both
			// the http app and this one provisioned first.
			for range 8 {
				err := h.validate(tc.config)
				for _, want := range tc.want {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("validate: got %v, want an error containing %q", err, want)
					}
				}
			}
			err := h.tryLoad(tc.config)
			for _, want := range tc.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("load: got %v, want an error containing %q", err, want)
				}
			}
		})
	}
	t.Run("a site and a pool on different ports", func(t *testing.T) {
		if err := h.validate(basicConfig); err != nil {
			t.Fatal(err)
		}
	})
}
