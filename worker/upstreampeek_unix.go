//go:build linux || darwin || freebsd || netbsd || openbsd

package worker

import (
	"net"
	"syscall"
)

// peerSent reports whether the peer of c, which nobody reads, has sent
// anything (bytes, an end of stream or an error), without waiting: a
// pooled upstream connection that did is not used again.
func peerSent(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	var buf [1]byte
	sent := false
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		sent = n > 0 || rerr == nil || rerr != syscall.EAGAIN && rerr != syscall.EWOULDBLOCK
		return true
	})
	return sent || err != nil
}
