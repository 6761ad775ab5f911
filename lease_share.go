package etcdkit

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// leaseShare is the session that the Locks of one Mutex, or the Permits of
// one Semaphore, keep their keys under, so that acquiring costs one
// transaction and releasing one delete instead of a lease grant and a
// revoke each. A holding's key is named "<lease in hex>-<slot>", slot the
// lowest number no other key of the session has: names are reused, since
// etcd keeps every deleted key in its index until the next compaction and
// a range over the prefix (each acquire's) walks them all. A slot is free
// again only once nothing of its holding can reach the cluster any more
// (see keyHold.letGo), so a late or repeated release never deletes a later
// holding's key by the same name.
//
// The session is made by the first acquire, ended when it can no longer
// serve (its lease Lost, or found gone at the server, revoked by someone
// else or expired; or a key it held could not be deleted: see retire), and
// otherwise revoked once nobody has used it for a TTL. An acquire that
// finds its lease gone (its put refused with "requested lease not found",
// or its key deleted with the lease while it waits) retires the session
// and tries again on a new one, within its ctx (see Election.campaign). A
// holding whose release cannot reach the cluster keeps a reference until a
// delete in the background lands, so the session's lease, which keeps the
// key in place, outlives the key only by that background work.
type leaseShare struct {
	e  *Election
	mu sync.Mutex
	// cur is the session new holdings take, or nil.
	cur *sharedSession
}

// sharedSession is one session of a leaseShare and the holdings on it.
type sharedSession struct {
	sh    *leaseShare
	s     *Session
	lease clientv3.LeaseID // s's, which never changes (WithoutRecovery)
	end   context.CancelCauseFunc
	refs  int // holdings and background deletes that use s
	// used[i] reports that a key named with slot i may exist.
	used []bool
	// retired sessions take no new holdings and end with their last one.
	retired bool
	idle    *time.Timer
}

// usable reports whether a new holding may take ss. Call with sh.mu held.
func (ss *sharedSession) usable() bool {
	if ss == nil || ss.retired {
		return false
	}
	select {
	case <-ss.s.Done():
		return false
	default:
	}
	st, _ := ss.s.feed.get()
	return st != SessionLost && !ss.s.goneLease(ss.lease)
}

// take returns the session for a new holding and the slot of its key,
// making a session if there is none that can serve. ctx bounds the lease
// grant.
func (sh *leaseShare) take(ctx context.Context) (*sharedSession, int, error) {
	if ss, slot := sh.takeCurrent(); ss != nil {
		return ss, slot, nil
	}
	// The session outlives this call; until it is installed, ctx ending
	// ends it.
	life, end := context.WithCancelCause(context.Background())
	unhook := context.AfterFunc(ctx, func() { end(context.Cause(ctx)) })
	s, err := sh.e.c.NewSession(life, sh.e.ttl, sh.e.o.session...)
	if !unhook() && err == nil {
		err = context.Cause(ctx)
		_ = s.Close()
	}
	if err != nil {
		end(nil)
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, 0, err
	}
	fresh := &sharedSession{sh: sh, s: s, lease: s.Lease(), end: end}
	sh.mu.Lock()
	if !sh.cur.usable() {
		sh.retireLocked()
		sh.cur = fresh
		fresh = nil
	}
	sh.mu.Unlock()
	if fresh != nil {
		// Another acquire made one meanwhile: use that one.
		fresh.closeLater()
	}
	if ss, slot := sh.takeCurrent(); ss != nil {
		return ss, slot, nil
	}
	return nil, 0, fmt.Errorf("%w before it could be used", ErrLeaseLost)
}

// takeCurrent takes a reference to the current session, if it can serve,
// and a free slot.
func (sh *leaseShare) takeCurrent() (*sharedSession, int) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ss := sh.cur
	if !ss.usable() {
		return nil, 0
	}
	if ss.idle != nil {
		ss.idle.Stop()
		ss.idle = nil
	}
	ss.refs++
	slot := 0
	for slot < len(ss.used) && ss.used[slot] {
		slot++
	}
	if slot == len(ss.used) {
		ss.used = append(ss.used, false)
	}
	ss.used[slot] = true
	return ss, slot
}

// keyName is the name of the key of the holding with slot.
func (ss *sharedSession) keyName(slot int) string {
	return fmt.Sprintf("%x-%d", int64(ss.lease), slot)
}

// retireLocked takes the current session out of service; it ends when its
// last holding does. Call with sh.mu held.
func (sh *leaseShare) retireLocked() {
	ss := sh.cur
	if ss == nil {
		return
	}
	sh.cur = nil
	ss.retired = true
	if ss.idle != nil {
		ss.idle.Stop()
		ss.idle = nil
	}
	if ss.refs == 0 {
		ss.closeLater()
	}
}

// retire takes ss out of service, if it still is in service.
func (ss *sharedSession) retire() {
	ss.sh.mu.Lock()
	defer ss.sh.mu.Unlock()
	if ss.sh.cur == ss {
		ss.sh.retireLocked()
	}
}

// release hands back a reference taken by take; free says the slot's key
// is gone. The last reference ends a retired session at once, and any
// other a TTL after, unless a holding takes it again meanwhile.
func (ss *sharedSession) release(slot int, free bool) {
	sh := ss.sh
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if free {
		ss.used[slot] = false
	}
	ss.refs--
	if ss.refs > 0 {
		return
	}
	if ss.retired || sh.cur != ss {
		ss.closeLater()
		return
	}
	ss.idle = time.AfterFunc(sh.e.ttl, func() {
		sh.mu.Lock()
		idle := ss.refs == 0 && sh.cur == ss
		if idle {
			sh.cur = nil
			ss.retired = true
		}
		sh.mu.Unlock()
		if idle {
			ss.closeLater()
		}
	})
}

// close ends the session, which revokes its lease.
func (ss *sharedSession) close() {
	_ = ss.s.Close()
	ss.end(nil)
}

// closeLater closes the session off the caller's goroutine, as work
// Client.Close waits for. Once the client is closed, the session has ended
// with it: only its life is left to end.
func (ss *sharedSession) closeLater() {
	if !ss.sh.e.c.spawn(ss.close) {
		ss.end(nil)
	}
}

// deleteUntilDone retries deleting a holder's key until it lands, the
// session ends, or two TTLs have passed: a link down for that long has
// lost the lease, and a delete that keeps failing with the link up will not
// land, so it leaves the key to the revoke that ends the session.
func (ss *sharedSession) deleteUntilDone(key string, token int64, lease clientv3.LeaseID) {
	c := ss.sh.e.c
	ctx, cancel := context.WithTimeout(ss.s.ctx, 2*ss.sh.e.ttl)
	defer cancel()
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for retry.Wait(ctx) {
		_, err := c.deleteOwn(ctx, key, token, lease)
		if err == nil {
			return
		}
		c.log.Debug("deleting a released holder's key failed, retrying", zap.String("key", key), zap.Error(err))
	}
	if ss.s.ctx.Err() == nil {
		c.log.Warn("a released holder's key could not be deleted; it goes when the lease is revoked", zap.String("key", key))
	}
}
