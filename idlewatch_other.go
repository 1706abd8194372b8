//go:build !linux

package reversehttp

// pollState is empty where no poller watches idle connections: a goroutine
// watcher does (see watchLoop).
type pollState struct{}

// pollIdle reports that no poller can watch c.
func (c *workerConn) pollIdle() bool { return false }

// arm, disarm and unpoll have nothing to do without a poller.
func (c *workerConn) arm() {}

func (c *workerConn) disarm() {}

func (c *workerConn) unpoll() {}
