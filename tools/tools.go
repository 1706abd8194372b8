// Package tools is a separate module that pins the build tools of
// reverse_http, so that the plugin's own go.mod carries only what the
// plugin needs. Its go.mod lists xcaddy as a Go tool (go get -tool), run
// with `go tool xcaddy` from this directory:
//
//	cd tools && go tool xcaddy build v2.11.9 \
//		--with github.com/reversehttp/reverse_http@v0.0.0=.. --output ../bin/caddy
//
// `make build` at the root does this. To move to another xcaddy release:
//
//	cd tools && go get -tool github.com/caddyserver/xcaddy/cmd/xcaddy@vX.Y.Z
package tools
