package watch

import (
	"context"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"
)

// link watches over one generation of the stream connection while etcd
// watches run on it. gRPC keepalive cannot notice a silent link in less than
// 10 s (its floor), so the link asks the server for a progress notification
// whenever the connection has been quiet for a while; every watch on the
// connection shares one gRPC stream, and etcd answers a progress request on
// it, so any message counts as a sign of life. No message within
// Config.StallTimeout of a request means the link is stalled: the whole
// connection is dropped and every stream moves to the next member together.
// A connection that goes down, or that does not come up within StallTimeout,
// is dropped the same way, so that the streams re-watch from their own
// positions rather than letting clientv3 resume them.
type link struct {
	h    *Hub
	conn *clientv3.Client
	gen  uint64
	refs int // guarded by h.mu

	// lastRecv is when the last message arrived on any watch of the link,
	// in nanoseconds since h.epoch.
	lastRecv atomic.Int64
	poked    atomic.Bool
	// ctx ends the monitor: with the link's last user, or the client.
	ctx    context.Context
	cancel context.CancelFunc
}

// touch records a sign of life.
func (l *link) touch() { l.lastRecv.Store(l.h.now()) }

// poke asks for a progress notification soon, even if the link is busy.
func (l *link) poke() { l.poked.Store(true) }

// acquireLink returns the link of conn's generation, starting its monitor if
// it is the first user. Release it with releaseLink.
func (h *Hub) acquireLink(conn *clientv3.Client, gen uint64) *link {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.links[gen]
	if l == nil {
		l = &link{h: h, conn: conn, gen: gen}
		l.ctx, l.cancel = context.WithCancel(h.cfg.Life)
		l.touch()
		h.links[gen] = l
		h.cfg.Spawn(l.monitor)
	}
	l.refs++
	return l
}

func (h *Hub) releaseLink(l *link) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		l.cancel()
		if h.links[l.gen] == l {
			delete(h.links, l.gen)
		}
	}
}

// Timing of the monitor, derived from StallTimeout (2s by default: a probe
// after 250ms of silence, checked every 100ms, so a link that goes silent is
// declared stalled within 2.35s, and Suspended right after).
func linkTiming(stall time.Duration) (idle, tick time.Duration) {
	idle = stall / 8
	tick = min(max(stall/20, 5*time.Millisecond), 100*time.Millisecond)
	return idle, tick
}

func (l *link) monitor() {
	cfg := l.h.cfg
	stall := cfg.StallTimeout
	idle, tick := linkTiming(stall)
	cc := l.conn.ActiveConnection()
	st := cc.GetState()
	everReady := st == connectivity.Ready
	since := l.h.now() // start of the current not-ready spell
	var sentAt int64 = -1
	pinged := false // a ping backs up the current progress request
	// alive is when the link last told the pool its member answers.
	alive := l.lastRecv.Load()
	for {
		// Waiting for a state change doubles as the monitor's tick. A change
		// away from Ready counts even if the connection is back by the time
		// it is looked at: clientv3 would then have resumed the watches by
		// itself, from revisions of its own choosing.
		tctx, cancel := context.WithTimeout(l.ctx, tick)
		changed := cc.WaitForStateChange(tctx, st)
		cancel()
		if l.ctx.Err() != nil {
			return
		}
		now := l.h.now()
		if changed {
			if st == connectivity.Ready {
				l.fail("stream connection lost", zap.Stringer("state", cc.GetState()))
				return
			}
			st = cc.GetState()
			if st == connectivity.Ready {
				everReady = true
			}
		}
		if st != connectivity.Ready {
			if !everReady && time.Duration(now-since) >= stall {
				l.fail("stream connection did not come up", zap.Stringer("state", st))
				return
			}
			continue
		}
		last := l.lastRecv.Load()
		if sentAt >= 0 && last >= sentAt {
			sentAt = -1
		}
		if last > alive && time.Duration(now-alive) >= idle {
			// What the member sent counts in the one view of its health.
			alive = now
			cfg.Conns.Alive(l.gen)
		}
		if sentAt >= 0 {
			if time.Duration(now-sentAt) >= stall {
				call(cfg.Observe.Stalled)
				l.fail("stream connection stalled", zap.Duration("silent", time.Duration(now-last)))
				return
			}
			if !pinged && time.Duration(now-sentAt) >= stall/2 {
				pinged = true
				l.ping(stall / 2)
			}
			continue
		}
		pinged = false
		if time.Duration(now-last) >= idle || l.poked.Swap(false) {
			sentAt = now
			l.requestProgress(tick)
		}
	}
}

// requestProgress asks the server for a progress notification on the gRPC
// stream the watches share: clientv3 picks the stream by the context's
// metadata, which WithRequireLeader sets as it does for the watches. The
// request is only queued; if clientv3 cannot even queue it within wait, the
// stream is not taking requests, which the stall deadline covers as well.
func (l *link) requestProgress(wait time.Duration) {
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(l.ctx), wait)
	defer cancel()
	if err := l.conn.RequestProgress(ctx); err != nil {
		l.h.cfg.Log.Debug("watch progress request not sent", zap.Uint64("generation", l.gen), zap.Error(err))
	}
}

// ping backs up a progress request that is slow to be answered. etcd
// withholds progress notifications on a gRPC stream while any watch on it
// is not yet synced or starts at a revision the member has not reached, and
// watches other than this engine's (a raw watch from the current revision
// + 1, for instance) share the stream. A request on the same connection
// that a member answers from its own state tells a live link from a silent
// one all the same; its answer counts as a sign of life.
func (l *link) ping(wait time.Duration) {
	l.h.cfg.Spawn(func() {
		ctx, cancel := context.WithTimeout(l.ctx, wait)
		defer cancel()
		if _, err := l.conn.MemberList(ctx, clientv3.WithSerializable()); err == nil {
			l.touch()
		}
	})
}

func (l *link) fail(msg string, fields ...zap.Field) {
	l.h.cfg.Log.Debug(msg, append(fields, zap.Uint64("generation", l.gen))...)
	l.h.cfg.Conns.Fail(l.gen)
}
