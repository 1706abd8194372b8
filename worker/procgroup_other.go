//go:build !unix

package worker

import (
	"os"
	"syscall"
)

// groupAttr: without process groups, a job's command is started as is.
func groupAttr() *syscall.SysProcAttr { return nil }

// killGroup kills p alone: the processes it started are not tracked here.
func killGroup(p *os.Process) { p.Kill() }
