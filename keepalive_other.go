//go:build !linux

package reversehttp

import "net"

// workerListenConfig is how worker listeners open their sockets: net sets
// the keepalive settings on each accepted connection.
func workerListenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAliveConfig: workerKeepAlive}
}

// hasWorkerKeepAlive reports true: net has set the settings.
func hasWorkerKeepAlive(net.Conn) bool { return true }
