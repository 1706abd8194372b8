//go:build !unix

package reversehttp

// peek cannot look at a socket here: a connection always looks fine until
// its job reads from it.
func (c *workerConn) peek() (int, error) { return 0, errNoPeek }

// recvNow cannot read a socket without waiting here.
func (c *workerConn) recvNow([]byte) (int, error) { return 0, errNoPeek }
