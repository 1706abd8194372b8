//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package worker

import "net"

// peerSent cannot look without reading here: a connection the upstream
// closed while idle fails its next request, which is then tried once on a
// new connection.
func peerSent(net.Conn) bool { return false }
