package main

import "syscall"

// childAttr makes the kernel kill a child if the benchmark dies without
// cleaning up (SIGKILL, a crash), so that no worker or Caddy outlives it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
