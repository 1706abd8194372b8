package worker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
)

// Decline tells the hub that this worker does not take the job, so that the
// hub requeues it on another connection. Call it before reading the request
// body, and write nothing else. It answers 503 with "Reverse-Http-Declined: 1"
// and "Connection: close", then closes the connection (when w allows
// hijacking): a request body that the hub holds back waiting for
// "100 Continue" would otherwise leave the connection stuck. The slot is
// redialled at once.
func Decline(w http.ResponseWriter) {
	h := w.Header()
	h.Set(DeclinedHeader, "1")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(declinedBody)))
	h.Set("Connection", "close")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, declinedBody)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	if conn, _, err := rc.Hijack(); err == nil {
		conn.Close()
	}
}

const declinedBody = "declined\n"

// forwardedHeaders are set by the hub and passed upstream unchanged.
var forwardedHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// NewForwarder returns a handler that forwards each job to upstream, an
// absolute http or https URL whose path (if any) prefixes the job's path.
//
// The job's Host header and the Forwarded/X-Forwarded-* headers the hub set
// are passed on as they are. Request and response bodies are streamed, never
// buffered, and responses are flushed as they arrive. When the hub cancels
// the job (closes the connection), the upstream request is cancelled too.
// If upstream cannot be reached the job gets 502 Bad Gateway. Nil logger
// means slog.Default().
func NewForwarder(upstream *url.URL, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.Default()
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 64
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.Out.Host = pr.In.Host
			// The hub's 100-continue is between hub and worker: the worker's
			// server answers it when the body is first read. Passing it on
			// would make the transport wait a second for upstreams that
			// never send 100 Continue.
			pr.Out.Header.Del("Expect")
			for _, k := range forwardedHeaders {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = slices.Clone(v)
				}
			}
		},
		Transport:     transport,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				logger.Debug("job cancelled by the hub", "method", r.Method, "uri", r.RequestURI)
			} else {
				logger.Warn("upstream request failed", "upstream", upstream.String(), "method", r.Method, "uri", r.RequestURI, "err", err)
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp.ServeHTTP(no100Writer{w}, r)
	})
}

// no100Writer drops "100 Continue" that the reverse proxy relays from
// upstream: net/http's server sends its own 100 Continue to the hub as soon
// as the body is first read, and the hub must not see two.
type no100Writer struct {
	http.ResponseWriter
}

func (w no100Writer) WriteHeader(code int) {
	if code == http.StatusContinue {
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush, Hijack and the like.
func (w no100Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
