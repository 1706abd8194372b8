//go:build !linux

package reversehttp

// pollState is empty where no poller watches idle connections: a goroutine
// of each connection's own does (see watch).
type pollState struct{}

// pollIdle reports that no poller can watch c.
func (c *workerConn) pollIdle() bool { return false }

// armIdle, quietIdle and unpoll have nothing to do without a poller.
func (c *workerConn) armIdle() {}

func (c *workerConn) quietIdle() {}

func (c *workerConn) unpoll() {}

func (c *workerConn) spoiled() bool { return false }
