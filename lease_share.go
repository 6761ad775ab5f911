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

// keyHold is what a candidate, then its Leadership, holds in the cluster: a
// key under a lease, the candidate's own session's or a shared one's.
type keyHold struct {
	s     *Session
	ss    *sharedSession // s's share, for a Mutex's or a Semaphore's holder; nil for an election's
	slot  int            // the key's slot in ss
	lease clientv3.LeaseID
	name  string // the key's name under the election's prefix
	key   string // the key's full etcd key
	token int64  // the key's create revision, once put; 0 if its put failed
	// clean reports that the put applied on its first attempt, so that no
	// copy of it given up on can apply later, once the key is gone.
	clean bool
	// unput reports that the put was answered on its first attempt and did
	// not apply (a Semaphore's limit did not match): there is no key, and
	// there never will be.
	unput bool
}

// letGo gives up the key. An election's candidate ends its own session,
// which revokes its lease and with it the key. A Mutex's or a Semaphore's
// deletes its key (see deleteOwn), bounded by ctx and
// Config.RequestTimeout, and hands the shared session back. The key's name
// is free for a later holding only when nothing of this one can reach the
// cluster later: the put and the delete each applied on their first
// attempt. Otherwise the session takes no new holdings, and ends, revoking
// its lease, with its last one; a delete that failed is retried in the
// background (see deleteUntilDone). It returns the error of the revoke or
// the first delete.
func (h *keyHold) letGo(ctx context.Context, e *Election) error {
	ss := h.ss
	if ss == nil {
		return h.s.Close()
	}
	if h.unput {
		ss.release(h.slot, true)
		return nil
	}
	once, err := e.c.deleteOwn(ctx, h.key, h.token, h.lease)
	if err == nil && once && h.token != 0 && h.clean {
		ss.release(h.slot, true)
		return nil
	}
	ss.retire()
	if err == nil {
		ss.release(h.slot, false)
		return nil
	}
	key, token, lease := h.key, h.token, h.lease
	if !e.c.spawn(func() { ss.deleteUntilDone(key, token, lease); ss.release(h.slot, false) }) {
		ss.release(h.slot, false)
	}
	return err
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

// deleteOwn deletes a holder's key on the pinned stream connection,
// which moves off a member that stalls (see casStreams), within ctx and
// Config.RequestTimeout: the key created at revision token (a plain
// delete: no other holding has a key by that name while token's holding
// has not let go), or, with token 0 (a put that may not have applied), the
// key if it is under lease. once reports that the first attempt answered,
// so that no attempt given up on can apply later.
func (c *Client) deleteOwn(ctx context.Context, key string, token int64, lease clientv3.LeaseID) (once bool, err error) {
	ctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return false, err
	}
	defer cancel()
	var cmps []clientv3.Cmp
	if token == 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.LeaseValue(key), "=", lease))
	}
	attempts := 0
	err = c.onStreams(ctx, c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		attempts++
		var err error
		if cmps == nil {
			_, err = cli.Delete(ctx, key)
		} else {
			_, err = cli.Txn(ctx).If(cmps...).Then(clientv3.OpDelete(key)).Commit()
		}
		return mapServerError(err)
	})
	return attempts == 1, err
}
