//go:build linux || darwin || freebsd || netbsd || openbsd

package worker

import (
	"net"
	"syscall"
)

// rawConn is what peerSent looks at: c's descriptor, or nil.
func rawConn(c net.Conn) syscall.RawConn {
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			return raw
		}
	}
	return nil
}

// peerSent reports whether the peer of a connection that nobody reads has
// sent anything (bytes, an end of stream or an error), without waiting: a
// pooled upstream connection that did is not used again.
func peerSent(raw syscall.RawConn) bool {
	if raw == nil {
		return false
	}
	var buf [1]byte
	sent := false
	err := raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		sent = n > 0 || rerr == nil || rerr != syscall.EAGAIN && rerr != syscall.EWOULDBLOCK
		return true
	})
	return sent || err != nil
}
