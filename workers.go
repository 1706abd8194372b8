package reversehttp

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// workerRecord is what a pool knows of one worker, a name on a host
// (workerConn.key): the connections it holds, the jobs it served and
// failed. A record outlives the worker's last connection for a while
// (goneRetention), so that a worker that reconnects, as POTHEAD's do after
// every job, keeps its counts.
type workerRecord struct {
	key, name, host string

	// Guarded by poolObs.mu.
	conns    int       // connections held now
	since    time.Time // when it last went from none to one
	lastSeen time.Time // when it last went to none; zero while it holds one
	// routine says that its latest connection to leave closed after its
	// job, as POTHEAD's do after every job.
	routine bool

	jobs     atomic.Uint64 // requests it answered
	failures atomic.Uint64 // requests it took and failed (502, 504)
}

// How long, and how many, records of workers that hold no connection are
// kept.
const (
	goneRetention  = 10 * time.Minute
	maxGoneWorkers = 256
)

// Which comings and goings are news, logged at info level and announced
// as events (the others are logged at debug level): a worker's first
// connection, and any connection that leaves for a reason other than a
// routine close after its job. A worker that closes its connection after
// every job and dials again, as POTHEAD's do, is news only when it does
// not dial again within redialQuiet, and when it comes back.
const redialQuiet = time.Second

// connObs is what observation keeps of one connection (workerConn.obs).
type connObs struct {
	w    *workerRecord // set when the pool takes it in, under p.mu and poolObs.mu
	news bool          // its arrival is news (see redialQuiet); set with w
	left bool          // guarded by poolObs.mu
	// note is why the connection is closing; the first cause given wins.
	note atomic.Pointer[leaveNote]
}

type leaveNote struct {
	reason leaveReason
	err    error
}

// leaving records why c, whose job ended with err, is about to close.
func (c *workerConn) leaving(err error) {
	c.obs.note.CompareAndSwap(nil, &leaveNote{reason: leaveReasonOf(err, false), err: err})
}

// leavingIdle records why c, found unusable while idle, is about to close.
func (c *workerConn) leavingIdle(err error) {
	c.obs.note.CompareAndSwap(nil, &leaveNote{reason: leaveReasonOf(err, true), err: err})
}

// closeWith closes c for the reason err gives.
func (c *workerConn) closeWith(err error) {
	c.leaving(err)
	c.close()
}

// joinLocked enters c, which its pool is taking in, in its worker's books,
// unless the operator drained the worker. It returns how many connections
// the worker now holds. p.mu is held.
func (o *poolObs) joinLocked(c *workerConn) (held int, ok bool) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.drainedLocked(c.info.name, c.key) {
		o.handshakes[resultDrained].Add(1)
		return 0, false
	}
	o.handshakes[resultOK].Add(1)
	w := o.workers[c.key]
	if w == nil {
		o.pruneLocked(now)
		w = &workerRecord{key: c.key, name: c.info.name, host: hostOf(c.conn.RemoteAddr())}
		o.workers[c.key] = w
	}
	redial := w.routine && now.Sub(w.lastSeen) < redialQuiet
	if w.conns == 0 {
		w.since, w.lastSeen = now, time.Time{}
	}
	w.conns++
	c.obs.w = w
	c.obs.news = w.conns == 1 && !redial
	return w.conns, true
}

// joined announces c, which joinLocked took in; held is what its worker
// holds now.
func (o *poolObs) joined(c *workerConn, held int) {
	view := o.getView()
	news := c.obs.news
	level := zapcore.DebugLevel
	if news {
		level = zapcore.InfoLevel
	}
	if ce := o.pool.log().Check(level, "worker connected"); ce != nil {
		ce.Write(zap.String("worker", c.info.name), zap.String("remote", c.remote()), zap.Int("connections", held))
	}
	if news {
		o.emit(view, eventWorkerConnected, map[string]any{
			"pool": o.pool.name, "worker": c.info.name, "remote": c.remote(), "connections": held,
		})
	}
}

// left takes c, which has just closed, out of its worker's books and
// announces why it left. A connection the pool never took in is ignored.
func (o *poolObs) left(c *workerConn) {
	now := time.Now()
	note := c.obs.note.Load()
	if note == nil {
		note = &leaveNote{}
	}
	o.mu.Lock()
	w := c.obs.w
	if w == nil || c.obs.left {
		o.mu.Unlock()
		return
	}
	c.obs.left = true
	w.conns--
	held := w.conns
	if held == 0 {
		w.lastSeen = now
	}
	routine := note.reason == leaveClosedAfterJob
	w.routine = routine
	view := o.view
	o.mu.Unlock()
	o.leaves[note.reason].Add(1)
	if !routine {
		o.announceLeft(view, c, held, note, zapcore.InfoLevel)
		return
	}
	o.announceLeft(view, c, held, note, zapcore.DebugLevel)
	if held == 0 {
		time.AfterFunc(redialQuiet, func() { o.checkGone(c, now, note) })
	}
}

// checkGone announces that c's worker, whose last connection closed after
// its job at lastSeen, is gone: it did not dial again within redialQuiet.
func (o *poolObs) checkGone(c *workerConn, lastSeen time.Time, note *leaveNote) {
	o.mu.Lock()
	w := c.obs.w
	gone := w.conns == 0 && w.lastSeen.Equal(lastSeen)
	view := o.view
	o.mu.Unlock()
	if gone {
		o.announceLeft(view, c, 0, note, zapcore.InfoLevel)
	}
}

func (o *poolObs) announceLeft(view poolView, c *workerConn, held int, note *leaveNote, level zapcore.Level) {
	if ce := o.pool.log().Check(level, "worker disconnected"); ce != nil {
		fields := []zap.Field{
			zap.String("worker", c.info.name), zap.String("remote", c.remote()), zap.Int("connections", held),
			zap.String("reason", leaveNames[note.reason]),
		}
		if note.err != nil {
			fields = append(fields, zap.Error(note.err))
		}
		ce.Write(fields...)
	}
	if level == zapcore.InfoLevel {
		o.emit(view, eventWorkerDisconnected, map[string]any{
			"pool": o.pool.name, "worker": c.info.name, "remote": c.remote(), "connections": held,
			"reason": leaveNames[note.reason],
		})
	}
}

// pruneLocked forgets the workers that have held no connection for
// goneRetention, and the longest gone beyond maxGoneWorkers. o.mu is held.
func (o *poolObs) pruneLocked(now time.Time) {
	var gone []*workerRecord
	for key, w := range o.workers {
		switch {
		case w.conns > 0:
		case now.Sub(w.lastSeen) > goneRetention:
			delete(o.workers, key)
		default:
			gone = append(gone, w)
		}
	}
	for len(gone) >= maxGoneWorkers {
		oldest := 0
		for i, w := range gone {
			if w.lastSeen.Before(gone[oldest].lastSeen) {
				oldest = i
			}
		}
		delete(o.workers, gone[oldest].key)
		gone[oldest] = gone[len(gone)-1]
		gone = gone[:len(gone)-1]
	}
}

// drainedLocked reports whether the operator drained the worker with this
// name and key. o.mu is held.
func (o *poolObs) drainedLocked(name, key string) bool {
	if _, ok := o.drained[key]; ok {
		return true
	}
	_, ok := o.drained[name]
	return ok && name != ""
}

// isDrained reports whether the operator drained the worker with this name
// and key.
func (o *poolObs) isDrained(name, key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.drainedLocked(name, key)
}

// matches reports whether target, as an operator gives it, names the
// worker with this name and key.
func matchesWorker(target, name, key string) bool {
	return target == key || (name != "" && target == name)
}

// drainWorker drains the worker that target names (its name, or name@host
// for one host's): its connections take no further job and close, idle
// ones at once and busy ones when their job ends, and it is refused when it
// dials again, until undrainWorker. It returns how many connections it
// retired, and whether the pool knew such a worker.
func (p *Pool) drainWorker(target string) (retired int, known bool) {
	o := p.obs
	o.mu.Lock()
	_, known = o.drained[target]
	for _, w := range o.workers {
		known = known || matchesWorker(target, w.name, w.key)
	}
	if known {
		if _, ok := o.drained[target]; !ok {
			o.drained[target] = time.Now()
		}
	}
	o.mu.Unlock()
	if !known {
		return 0, false
	}
	retired = p.retireIf(func(c *workerConn) bool {
		if !matchesWorker(target, c.info.name, c.key) {
			return false
		}
		c.leaving(errDrained)
		return true
	})
	p.log().Info("worker drained", zap.String("worker", target), zap.Int("connections", retired))
	return retired, true
}

// undrainWorker lifts the drain of target and reports whether there was one.
func (p *Pool) undrainWorker(target string) bool {
	o := p.obs
	o.mu.Lock()
	_, ok := o.drained[target]
	delete(o.drained, target)
	o.mu.Unlock()
	if ok {
		p.log().Info("worker drain lifted", zap.String("worker", target))
	}
	return ok
}
