package worker

// The constants of the wire protocol between a hub and its workers. The hub
// (the reverse_http Caddy module) imports them from here, so that both sides
// spell every name the same way. The protocol is described in the README's
// "Wire protocol" section.

// Protocols a pool's workers speak, as [Config.Protocol] and the hub's
// `protocol` pool option name them.
const (
	// ProtocolPTTH opens each connection with an HTTP/1.1 Upgrade request
	// (to UpgradeToken) naming the pool, and waits for "101 Switching
	// Protocols" before serving jobs.
	ProtocolPTTH = "ptth"
	// ProtocolPothead skips the handshake: the worker dials and waits for
	// the first request, as POTHEAD's workers do.
	ProtocolPothead = "pothead"
)

// UpgradeToken is what a ptth worker asks the hub to upgrade its connection
// to. It is the token of the old "Reverse HTTP" draft.
const UpgradeToken = "PTTH/1.0"

// Headers of the handshake and of jobs.
const (
	// WorkerHeader carries the worker's name in the handshake request.
	WorkerHeader = "Reverse-Http-Worker"
	// FeaturesHeader lists, in the handshake request, the optional parts
	// of the protocol the worker speaks (comma-separated tokens); the
	// hub's 101 lists those it will use on the connection.
	FeaturesHeader = "Reverse-Http-Features"
	// DeclinedHeader marks a worker's 503 as "declined before starting":
	// the hub puts the request back at the head of the queue.
	DeclinedHeader = "Reverse-Http-Declined"
)

// Optional features, negotiated with FeaturesHeader.
const (
	// FeatureAccept: for a request that carries "Expect: 100-continue",
	// the worker sends "100 Continue" only once it has accepted the job
	// and before any of the job has run; a worker whose connection ends
	// before it, cleanly, never started the job, so the hub may give the
	// job to another worker.
	FeatureAccept = "accept"
	// FeatureReady: the worker tells the hub, on a connection that
	// carries no job, whether it is ready for one, with readiness frames
	// (FrameReady, FrameNotReady). The connection starts not ready, and
	// is not ready again after every response until the worker says so;
	// the hub sends jobs only to ready connections. A worker connected to
	// several hubs, or one whose gates close, takes an offer back without
	// closing the connection.
	FeatureReady = "ready"
)

// Readiness frames: single bytes a worker sends, with FeatureReady, only
// while its connection carries no job (after the 101, and after the last
// byte of a response). The last one sent counts. Neither can begin an
// HTTP response, so a hub that reads one where a response may begin knows
// it for a frame sent before the worker read the job.
const (
	// FrameReady offers the connection for one job.
	FrameReady byte = '+'
	// FrameNotReady withdraws the offer.
	FrameNotReady byte = '-'
)
