package reversehttp

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A consumer that hangs up while its request waits in the queue must not be
// dispatched. net/http cancels a request's context when its connection
// ends, but on HTTP/1 it can tell only while it reads the connection, which
// it does not before the handler has read the request body: a queued POST
// whose consumer left looks alive. So the handler keeps a way to the
// consumer's socket and asks it (consumerGone) when a worker is found.

// consumerConnKey carries the consumer's connection in a request's context.
type consumerConnKey struct{}

// registerConsumerConns makes the Caddy server being provisioned with ctx
// put each connection in its requests' contexts. Each handler on a server
// registers once; a connection then carries a context value per handler,
// which costs less than keeping a set of servers across config loads.
func registerConsumerConns(ctx caddy.Context) {
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		srv.RegisterConnContext(func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, consumerConnKey{}, c)
		})
	}
}

// consumerGone returns a function that reports whether r's consumer has
// hung up, or nil where only r's context can tell (HTTP/2 and HTTP/3 have
// a stream of their own to end; a connection that is no socket).
func consumerGone(r *http.Request) func() bool {
	if r.ProtoMajor != 1 {
		return nil
	}
	c, _ := r.Context().Value(consumerConnKey{}).(net.Conn)
	raw := rawSocket(c)
	if raw == nil {
		return nil
	}
	return func() bool { return socketHungUp(raw) }
}

// rawSocket finds the socket under a consumer connection: TLS and the
// wrappers of Caddy's listener wrappers give their underlying connection
// with NetConn.
func rawSocket(c net.Conn) syscall.RawConn {
	for range 8 {
		switch conn := c.(type) {
		case nil:
			return nil
		case *tls.Conn:
			c = conn.NetConn()
			continue
		case syscall.Conn:
			raw, err := conn.SyscallConn()
			if err != nil {
				return nil
			}
			return raw
		case interface{ NetConn() net.Conn }:
			c = conn.NetConn()
			continue
		}
		return nil
	}
	return nil
}
