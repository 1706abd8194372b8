//go:build linux

package reversehttp

import (
	"net"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// workerListenConfig is how worker listeners open their sockets. Linux
// gives an accepted TCP socket the listening socket's keepalive settings,
// so they are set once, on the listener, instead of with four system calls
// on every connection: a POTHEAD worker dials once per job. The accept
// loop checks that the first connection has them (workerListener.keepAlive).
// A socket that refuses them still listens: its connections are then given
// them one by one, which is all that net would have done.
func workerListenConfig() net.ListenConfig {
	return net.ListenConfig{
		KeepAlive: -1, // net sets nothing on accepted connections
		Control: func(network, _ string, rc syscall.RawConn) error {
			if strings.HasPrefix(network, "tcp") {
				_ = rc.Control(func(fd uintptr) { _ = setWorkerKeepAlive(int(fd)) })
			}
			return nil
		},
	}
}

// keepAliveOpts are workerKeepAlive as socket options.
func keepAliveOpts() [4]struct{ level, opt, val int } {
	return [4]struct{ level, opt, val int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(workerKeepAlive.Idle.Seconds())},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(workerKeepAlive.Interval.Seconds())},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, workerKeepAlive.Count},
	}
}

func setWorkerKeepAlive(fd int) error {
	for _, o := range keepAliveOpts() {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return err
		}
	}
	return nil
}

// hasWorkerKeepAlive reports whether conn's socket has workerKeepAlive's
// settings; false for what is not a socket.
func hasWorkerKeepAlive(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	has := true
	if err := rc.Control(func(fd uintptr) {
		for _, o := range keepAliveOpts() {
			if v, err := unix.GetsockoptInt(int(fd), o.level, o.opt); err != nil || v != o.val {
				has = false
				return
			}
		}
	}); err != nil {
		return false
	}
	return has
}
