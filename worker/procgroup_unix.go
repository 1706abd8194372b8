//go:build unix

package worker

import (
	"os"
	"syscall"
)

// groupAttr starts a job's command as the leader of a process group of
// its own, so that everything it starts can be killed with it.
func groupAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// killGroup sends SIGKILL to the process group that p leads.
func killGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGKILL) }
