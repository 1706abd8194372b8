//go:build unix

package reversehttp

import "golang.org/x/sys/unix"

// peek reports what c's socket holds without taking it: n > 0 for bytes, 0
// with a nil error at end of file, or the socket's error (EAGAIN when it
// holds nothing; errNoPeek when c is not a socket).
func (c *workerConn) peek() (n int, err error) {
	if c.raw == nil {
		return 0, errNoPeek
	}
	var buf [1]byte
	if cerr := c.raw.Control(func(fd uintptr) {
		for {
			n, _, err = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return 0, cerr
	}
	return n, err
}

// recvNow reads what c's socket holds without waiting: n > 0 bytes, 0 with
// a nil error at end of file, or the socket's error (EAGAIN when it holds
// nothing; errNoPeek when c is not a socket). Only c's reader calls it.
func (c *workerConn) recvNow(p []byte) (n int, err error) {
	if c.raw == nil {
		return 0, errNoPeek
	}
	if cerr := c.raw.Control(func(fd uintptr) {
		for {
			n, _, err = unix.Recvfrom(int(fd), p, unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return 0, cerr
	}
	if n < 0 {
		n = 0
	}
	return n, err
}
