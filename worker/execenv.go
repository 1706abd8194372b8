package worker

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// Bounds on what a job's request puts into a command's environment.
const (
	// DefaultMaxEnvBytes bounds the environment of a job's command, as
	// "NAME=value" strings with their terminating NUL, when
	// [ExecConfig.MaxEnvBytes] or [CGIConfig.MaxEnvBytes] is zero. Linux
	// refuses a single string over 128 KiB and all of them over a quarter
	// of the stack limit; this stays well below both.
	DefaultMaxEnvBytes = 64 << 10
	// DefaultMaxHeaders bounds the header fields of a job's request that
	// reach a command, when [ExecConfig.MaxHeaders] or
	// [CGIConfig.MaxHeaders] is zero.
	DefaultMaxHeaders = 100
)

// defaultPath is a command's PATH when the worker has none.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// errJobEnvTooLarge is why a job is refused with 431.
var errJobEnvTooLarge = errors.New("request headers too large for a command's environment")

// jobEnv builds the environments of job commands, CGI-style: the worker's
// PATH and the variables it was told to pass on, then the request's meta
// variables.
type jobEnv struct {
	base       []string // "NAME=value" from the worker's environment
	maxBytes   int
	maxHeaders int
}

func newJobEnv(inherit []string, maxBytes, maxHeaders int) (*jobEnv, error) {
	if maxBytes < 0 || maxHeaders < 0 {
		return nil, errors.New("negative limit on a command's environment")
	}
	if maxBytes == 0 {
		maxBytes = DefaultMaxEnvBytes
	}
	if maxHeaders == 0 {
		maxHeaders = DefaultMaxHeaders
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	e := &jobEnv{base: []string{"PATH=" + path}, maxBytes: maxBytes, maxHeaders: maxHeaders}
	for _, name := range inherit {
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return nil, fmt.Errorf("cannot pass on environment variable %q", name)
		}
		if v, ok := os.LookupEnv(name); ok && name != "PATH" {
			e.base = append(e.base, name+"="+v)
		}
	}
	return e, nil
}

// build returns the environment for a command run for r: the base, then
//
//	REQUEST_METHOD   r.Method
//	REQUEST_URI      the request target as the hub sent it
//	PATH_INFO        the URL's path, unescaped
//	QUERY_STRING     the URL's query, as sent, without "?"
//	SERVER_PROTOCOL  r.Proto, "HTTP/1.1"
//	CONTENT_TYPE     the Content-Type header, if any
//	CONTENT_LENGTH   the body's length, if the request says it and it is not 0
//	HTTP_HOST        r.Host
//	HTTP_<NAME>      every other header field that [jobHeaders] keeps, its
//	                 name upper-cased with "-" as "_", values joined with
//	                 ", " ("; " for Cookie)
//
// It fails with errJobEnvTooLarge when the request has more header fields
// than allowed or the environment would exceed its size.
func (e *jobEnv) build(r *http.Request) ([]string, error) {
	h := jobHeaders(r.Header)
	n := 0
	for _, vv := range h {
		n += len(vv)
	}
	if n > e.maxHeaders {
		return nil, fmt.Errorf("%w: %d header fields, at most %d", errJobEnvTooLarge, n, e.maxHeaders)
	}
	env := append(make([]string, 0, len(e.base)+8+len(h)), e.base...)
	env = append(env,
		"REQUEST_METHOD="+r.Method,
		"REQUEST_URI="+r.RequestURI,
		"PATH_INFO="+r.URL.Path,
		"QUERY_STRING="+r.URL.RawQuery,
		"SERVER_PROTOCOL="+r.Proto,
		"HTTP_HOST="+r.Host,
	)
	if ct := r.Header.Get("Content-Type"); ct != "" {
		env = append(env, "CONTENT_TYPE="+ct)
	}
	if r.ContentLength > 0 {
		env = append(env, "CONTENT_LENGTH="+strconv.FormatInt(r.ContentLength, 10))
	}
	for k, vv := range h {
		if k == "Content-Type" || k == "Content-Length" {
			continue
		}
		sep := ", "
		if k == "Cookie" {
			sep = "; "
		}
		env = append(env, "HTTP_"+envName(k)+"="+strings.Join(vv, sep))
	}
	size := 0
	for _, kv := range env {
		if strings.IndexByte(kv, 0) >= 0 {
			return nil, fmt.Errorf("%w: a NUL byte in %.40q", errJobEnvTooLarge, kv)
		}
		size += len(kv) + 1
	}
	if size > e.maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errJobEnvTooLarge, size, e.maxBytes)
	}
	return env, nil
}

// jobHeaders returns the header fields of h that may reach a command. It
// drops fields whose names hold anything but letters, digits and "-": as
// variables, "X_Id" and "X.Id" would become the same HTTP_X_ID as "X-Id"
// and could pass for it (nginx drops them for this reason, too). It drops
// "Proxy", which would become HTTP_PROXY, a variable that many programs
// take for their proxy (CVE-2016-5386), "Expect", which is between the
// hub and the worker, and "Host", which is in r.Host.
func jobHeaders(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, vv := range h {
		if k == "Proxy" || k == "Expect" || k == "Host" || !plainHeaderName(k) {
			continue
		}
		out[k] = vv
	}
	return out
}

func plainHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// envName is the CGI spelling of a plain header name.
func envName(k string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' {
			return '_'
		}
		if 'a' <= r && r <= 'z' {
			return r - ('a' - 'A')
		}
		return r
	}, k)
}
