package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"
)

// execBuffer is the size of the buffers between the hub's connection and
// a command's pipes, one each way.
const execBuffer = 32 << 10

// stderrGrace is how long the worker waits, after a command's process
// group is gone, for stderr to close: only a process that left the group
// could hold it open longer.
const stderrGrace = time.Second

// execJob is one job's command and the goroutines around it: feed copies
// the request body to stdin, stream (on the handler's goroutine) copies
// stdout to the response, drainStderr keeps stderr's tail, and wait reaps
// the command and kills what is left of its group.
type execJob struct {
	e      *Exec
	w      http.ResponseWriter
	r      *http.Request
	ctx    context.Context // ends with the job: cancelled, timed out
	cancel context.CancelCauseFunc
	start  time.Time

	cmd                   *exec.Cmd
	stdin, stdout, stderr *os.File // the worker's ends of the pipes
	tail                  *tailBuffer
	wrote                 int64 // bytes of stdout sent to the hub

	fed, drained chan struct{} // feed and drainStderr have returned
	exited       chan struct{} // closed once waitErr is set
	waitErr      error

	groupMu   sync.Mutex
	groupGone bool // killed after the leader was reaped: do not signal again
}

// startCommand starts the command with its three pipes.
func (j *execJob) startCommand(env []string) error {
	var child, parent [3]*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	for i := range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(child[:])
			closeAll(parent[:])
			return err
		}
		if i == 0 { // stdin: the child reads
			child[i], parent[i] = r, w
		} else {
			child[i], parent[i] = w, r
		}
	}
	j.cmd = &exec.Cmd{
		Path:        j.e.path,
		Args:        j.e.args,
		Env:         env,
		Stdin:       child[0],
		Stdout:      child[1],
		Stderr:      child[2],
		SysProcAttr: groupAttr(),
	}
	err := j.cmd.Start()
	closeAll(child[:])
	if err != nil {
		closeAll(parent[:])
		return err
	}
	j.stdin, j.stdout, j.stderr = parent[0], parent[1], parent[2]
	return nil
}

// run serves the job whose command has started, and returns once the
// command's group is gone and no goroutine uses the request any more.
func (j *execJob) run() {
	j.tail = newTailBuffer(stderrTail)
	j.fed, j.drained, j.exited = make(chan struct{}), make(chan struct{}), make(chan struct{})
	go j.wait()
	go j.feed()
	go j.drainStderr()
	stop := context.AfterFunc(j.ctx, j.forceEnd)
	// The command may answer while it still reads its input; net/http
	// would otherwise consume the rest of the body before the response.
	http.NewResponseController(j.w).EnableFullDuplex()

	readErr := j.stream()
	<-j.exited
	cause := context.Cause(j.ctx)
	stop()
	// A command that exits without reading all its input leaves feed in
	// a write (closing stdin ends it) or in a read of the body, which
	// returns with the next bytes from the hub.
	j.stdin.Close()
	<-j.fed
	j.stderr.SetReadDeadline(time.Now().Add(stderrGrace))
	<-j.drained
	j.stdout.Close()
	j.stderr.Close()
	j.finish(cause, readErr)
}

// stream copies stdout to the response, flushing every read; the first
// bytes send the status and headers.
func (j *execJob) stream() error {
	buf := make([]byte, execBuffer)
	rc := http.NewResponseController(j.w)
	j.w.Header().Set("Content-Type", j.e.contentType)
	for {
		n, err := j.stdout.Read(buf)
		if n > 0 {
			if j.wrote == 0 {
				j.w.WriteHeader(http.StatusOK)
			}
			j.wrote += int64(n)
			if _, werr := j.w.Write(buf[:n]); werr != nil {
				j.cancel(fmt.Errorf("%w: %v", errResponseWrite, werr))
				return nil
			}
			if ferr := rc.Flush(); ferr != nil {
				j.cancel(fmt.Errorf("%w: %v", errResponseWrite, ferr))
				return nil
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// feed copies the request body to stdin and closes it. A body that breaks
// off ends the job: the command must not take a truncated input for a
// whole one.
func (j *execJob) feed() {
	defer close(j.fed)
	defer j.stdin.Close()
	buf := make([]byte, execBuffer)
	for {
		n, err := j.r.Body.Read(buf)
		if n > 0 {
			if _, werr := j.stdin.Write(buf[:n]); werr != nil {
				return // the command does not read any more
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			j.cancel(fmt.Errorf("%w: %v", errBodyBroken, err))
			return
		}
	}
}

func (j *execJob) drainStderr() {
	defer close(j.drained)
	io.Copy(j.tail, j.stderr)
}

// wait reaps the command and then kills its group, so that what the
// command left running does not outlive the job. (The group's id cannot
// be given to a new process while any member lives, so the signal reaches
// the job's leftovers or nobody.)
func (j *execJob) wait() {
	j.waitErr = j.cmd.Wait()
	j.groupMu.Lock()
	killGroup(j.cmd.Process)
	j.groupGone = true
	j.groupMu.Unlock()
	close(j.exited)
}

// forceEnd kills the command's group when the job's context ends, and
// stops the read of stdout, which a process that left the group might
// otherwise hold open.
func (j *execJob) forceEnd() {
	j.groupMu.Lock()
	if !j.groupGone {
		killGroup(j.cmd.Process)
	}
	j.groupMu.Unlock()
	j.stdout.SetReadDeadline(time.Now())
}

// finish logs how the job ended and, if the command failed, answers 502
// or 504 when nothing was sent yet, and otherwise cuts the response off.
func (j *execJob) finish(cause, readErr error) {
	attrs := []any{"command", j.e.path, "method", j.r.Method, "uri", j.r.RequestURI,
		"elapsed", time.Since(j.start).Round(time.Millisecond), "wrote", j.wrote}
	if j.waitErr != nil {
		attrs = append(attrs, "exit", j.waitErr.Error())
	}
	if s := j.tail.String(); s != "" {
		attrs = append(attrs, "stderr", s)
	}
	switch {
	case cause == nil && readErr == nil && j.waitErr == nil:
		j.e.log.Debug("job done", attrs...)
		return
	case errors.Is(cause, errCommandTimeout):
		j.e.log.Warn("command timed out: killed its process group", append(attrs, "timeout", j.e.timeout)...)
		j.fail(http.StatusGatewayTimeout, "command timed out")
	case cause != nil:
		if j.r.Context().Err() != nil {
			cause = errors.New("the hub closed the connection")
		}
		j.e.log.Info("job cancelled: killed its command's process group", append(attrs, "reason", cause.Error())...)
		jobCancelled(j.w)
		panic(http.ErrAbortHandler)
	default:
		if readErr != nil {
			attrs = append(attrs, "err", readErr)
		}
		j.e.log.Warn("command failed", attrs...)
		j.fail(http.StatusBadGateway, "command failed")
	}
}

// fail answers status if no output was sent, and otherwise cuts off the
// response (net/http closes the connection without ending the body).
func (j *execJob) fail(status int, msg string) {
	jobFailed(j.w)
	if j.wrote > 0 {
		panic(http.ErrAbortHandler)
	}
	if j.waitErr != nil {
		msg += ": " + j.waitErr.Error()
	}
	http.Error(j.w, msg, status)
}
