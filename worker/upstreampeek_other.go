//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package worker

import (
	"net"
	"syscall"
)

func rawConn(net.Conn) syscall.RawConn { return nil }

// peerSent cannot look without reading here: a connection the upstream
// closed while idle fails its next request, which is then tried once on a
// new connection.
func peerSent(syscall.RawConn) bool { return false }
