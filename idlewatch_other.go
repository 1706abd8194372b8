//go:build !linux

package reversehttp

// pollState is empty where no poller watches idle connections: a goroutine
// of each connection's own does (see watch).
type pollState struct{}

// pollIdle reports that no poller can watch c.
func (c *workerConn) pollIdle() bool { return false }

// armIdle and unpoll are called only for polled connections.
func (c *workerConn) armIdle() {}

func (c *workerConn) unpoll() {}
