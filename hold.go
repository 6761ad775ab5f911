package etcdkit

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// holdKind is what sets an Election, a Mutex and a Semaphore apart: the
// three are one machinery (see Election), and everything that differs
// between them, in behaviour or in messages, is a field here. The package
// has one value per kind, never compared by name.
type holdKind struct {
	// name names the contest in errors and log fields: "election",
	// "mutex" or "semaphore". HeldError.Kind carries it.
	name string
	// noun names what a holder holds, in messages: "leadership",
	// "mutex" or "permit".
	noun string
	// verb names the call that acquires a holding, in errors:
	// "campaign", "lock" or "acquire".
	verb string
	// keyWord names the holder's key, in messages: "leader", "lock" or
	// "permit".
	keyWord string
	// root is the reserved name, under the client's namespace, below which
	// the candidate keys live.
	root string
	// lost is the sentinel a holding that ends, or may have, wraps.
	lost error
	// resigned is the cause of a holding ended by Resign (Unlock, Release)
	// or Close.
	resigned error
	// shared says that the holders of one contest keep their keys under
	// one lease (see leaseShare); otherwise each candidate has a session
	// of its own.
	shared bool
	// leadershipChange says that a won holding counts as a change of
	// leader (MetricLeadershipChanges): locks and permits are not
	// leaderships, and the metric is about elections.
	leadershipChange bool
	// busy is the sentinel a try that found the holding taken matches
	// (see HeldError), and busyText what its message says.
	busy     error
	busyText string
}

var (
	electionKind = &holdKind{name: "election", noun: "leadership", verb: "campaign", keyWord: "leader",
		root: electionRoot, lost: ErrNotLeader, resigned: errResigned, leadershipChange: true}
	mutexKind = &holdKind{name: "mutex", noun: "mutex", verb: "lock", keyWord: "lock",
		root: mutexRoot, lost: ErrNotHeld, resigned: fmt.Errorf("%w: lock released", ErrClosed), shared: true,
		busy: ErrLocked, busyText: "locked"}
	semaphoreKind = &holdKind{name: "semaphore", noun: "permit", verb: "acquire", keyWord: "permit",
		root: semaphoreRoot, lost: ErrNotHeld, resigned: fmt.Errorf("%w: permit released", ErrClosed), shared: true,
		busy: ErrNoPermit, busyText: "no permit available"}
)

// heldKind returns the kind a HeldError's Kind names: a Semaphore's, or
// else a Mutex's.
func heldKind(name string) *holdKind {
	if name == semaphoreKind.name {
		return semaphoreKind
	}
	return mutexKind
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
