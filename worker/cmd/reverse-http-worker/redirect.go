package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/reversehttp/reverse_http/worker"
)

// redirectOptions are the flags of out-of-band responses.
type redirectOptions struct {
	addr      string
	publicURL string
	ttl       time.Duration
	minSize   int64
	cert, key string
}

func (o *redirectOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "redirect-response", "", "answer a successful (200) response through the hub with 303 See Other to a one-time URL on a listener at `HOST:PORT` (or just PORT, as POTHEAD takes it), from which the consumer gets the body; the job keeps its slot until then")
	fs.StringVar(&o.publicURL, "public-url", "", "`URL` at which consumers reach --redirect-response's listener (default http://ADDRESS:PORT, ADDRESS being this worker's on its hub connection)")
	fs.DurationVar(&o.ttl, "redirect-ttl", worker.DefaultRedirectTTL, "how long a redirect's key waits for its consumer")
	fs.Func("redirect-min-size", "redirect only responses larger than `SIZE` (e.g. 64K, 1M); one of unknown length is always redirected (default 0)", func(s string) error {
		n, err := parseSize(s)
		o.minSize = n
		return err
	})
	fs.StringVar(&o.cert, "redirect-cert", "", "PEM `FILE` with a certificate to serve --redirect-response's listener over TLS (needs --redirect-key)")
	fs.StringVar(&o.key, "redirect-key", "", "PEM `FILE` with --redirect-cert's private key")
}

// check returns what is wrong with the redirect flags; "" if nothing. It
// turns a bare PORT into ":PORT".
func (o *redirectOptions) check() string {
	switch {
	case o.addr == "" && (o.publicURL != "" || o.cert != "" || o.key != "" || o.minSize != 0 || o.ttl != worker.DefaultRedirectTTL):
		return "--public-url, --redirect-ttl, --redirect-min-size, --redirect-cert and --redirect-key need --redirect-response"
	case o.addr == "":
		return ""
	case o.ttl <= 0:
		return "--redirect-ttl must be positive"
	case (o.cert == "") != (o.key == ""):
		return "--redirect-cert and --redirect-key go together"
	}
	if !strings.Contains(o.addr, ":") {
		o.addr = ":" + o.addr
	}
	if _, port, err := net.SplitHostPort(o.addr); err != nil || port == "" {
		return fmt.Sprintf("--redirect-response %q: want HOST:PORT or PORT", o.addr)
	}
	if o.publicURL != "" {
		if u, err := url.Parse(o.publicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Sprintf("--public-url %q: want an http:// or https:// URL", o.publicURL)
		}
	}
	return ""
}

// config builds the worker's Redirect; nil without --redirect-response.
func (o *redirectOptions) config() (*worker.Redirect, error) {
	if o.addr == "" {
		return nil, nil
	}
	rd := &worker.Redirect{Addr: o.addr, PublicURL: o.publicURL, TTL: o.ttl, MinSize: o.minSize}
	if o.cert != "" {
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("--redirect-cert: %v", err)
		}
		rd.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	}
	return rd, nil
}
