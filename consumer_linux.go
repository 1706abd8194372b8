//go:build linux

package reversehttp

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketHungUp reports whether the peer of raw has shut its side down or
// reset the connection. POLLRDHUP says so even while unread bytes (an
// upload the handler has not read) sit before the end of the stream.
func socketHungUp(raw syscall.RawConn) bool {
	gone := false
	_ = raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		for {
			n, err := unix.Poll(fds, 0)
			if err == unix.EINTR {
				continue
			}
			gone = err == nil && n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
			return
		}
	})
	return gone
}
