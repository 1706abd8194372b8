//go:build !linux

package reversehttp

import "syscall"

// socketHungUp cannot tell a hang-up from unread bytes here: only the
// request's context says that a consumer left.
func socketHungUp(syscall.RawConn) bool { return false }
