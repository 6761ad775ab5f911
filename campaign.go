package etcdkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// Campaign enters the election as candidate id and blocks until it leads,
// ctx ends, or it can no longer win. It puts the candidate's key under a new
// lease of the election's TTL, then waits until every older candidate key is
// gone. It returns the Leadership once this candidate leads and its lease is
// safely alive: not within the step-down margin of Lost (see Leadership).
//
// ctx bounds the campaign only, not the Leadership it returns. Campaign fails
// when ctx ends (the error wraps ctx's cause), when the candidate's lease is
// lost (ErrLeaseLost; a lease revoked by someone else is lost too: a
// candidate that sees its key deleted asks the server whether the lease went
// with it) or its key deleted by someone else (ErrNotLeader), and
// when the client is closed (ErrClosed). A failed Campaign removes its
// candidate key by revoking its lease: before it returns when ctx ended,
// in the background when the lease was lost (the cluster is then most likely
// out of reach). If the revoke cannot reach the cluster, the key expires
// with the lease, which nothing keeps alive any more. An id larger than
// Config.MaxValueSize fails with ErrTooLarge.
func (e *Election) Campaign(ctx context.Context, id string) (*Leadership, error) {
	return e.campaign(ctx, id, false)
}

// campaign is Campaign; with try, it gives up as soon as it sees that it
// does not hold at once, with a *HeldError naming those who do. A Mutex's
// or a Semaphore's candidate whose shared lease the server no longer knows
// retires it and starts again on a new one, until ctx ends; an election's
// candidate has a lease of its own, granted for this call, and fails.
func (e *Election) campaign(ctx context.Context, id string, try bool) (*Leadership, error) {
	if e.err != nil {
		return nil, e.err
	}
	if len(id) > e.c.cfg.MaxValueSize {
		return nil, e.fail(e.kind.verb, fmt.Errorf("%w: id of %d bytes, limit %d", ErrTooLarge, len(id), e.c.cfg.MaxValueSize))
	}
	if e.c.closed() {
		return nil, e.fail(e.kind.verb, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, e.fail(e.kind.verb, context.Cause(ctx))
	}

	var (
		l     *Leadership
		cd    *candidate
		retry *backoff.Backoff // made by the first retry
	)
	for {
		var err error
		cd, err = e.newCandidate(ctx, id, try)
		if err != nil {
			return nil, e.fail(e.kind.verb, err)
		}
		l, err = cd.campaign(ctx)
		if err == nil && !cd.unhook() {
			// ctx ended just as the campaign was won.
			l, err = nil, context.Cause(ctx)
		}
		if err == nil {
			break
		}
		cd.unhook()
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		// A shared lease the server no longer knows (revoked by another
		// client, or expired) is retired before the key is given up, so
		// that the holding's release ends it and the next try takes a new
		// one.
		again := cd.ss != nil && ctx.Err() == nil && cd.s.goneLease(cd.lease)
		if again {
			cd.ss.retire()
		}
		// A session that lost its lease or ended with the client revokes
		// its lease on its own, which a silent link can make take a while:
		// do not make the caller wait for it.
		if st, _ := cd.s.feed.get(); st != SessionLost || !e.c.spawn(func() { _ = cd.abandon() }) {
			_ = cd.abandon()
		}
		if !again {
			return nil, e.fail(e.kind.verb, err)
		}
		e.c.log.Info(e.kind.name+"'s lease was revoked or expired, taking a new one", zap.String(e.kind.name, e.name),
			zap.String("id", id), zap.Int64("lease", int64(cd.lease)), zap.Error(err))
		// The first retry goes at once; a lease revoked again and again
		// (a script) is not fought at network speed.
		if retry == nil {
			retry = backoff.New(100*time.Millisecond, 2*time.Second)
		} else if !retry.Wait(ctx) {
			return nil, e.fail(e.kind.verb, fmt.Errorf("%w (%w)", context.Cause(ctx), err))
		}
	}
	if !l.start() {
		_ = cd.abandon()
		return nil, e.fail(e.kind.verb, ErrClosed)
	}
	e.countChange()
	e.c.log.Info(e.kind.noun+" won", zap.String(e.kind.name, e.name), zap.String("id", id), zap.Int64("token", l.token))
	return l, nil
}

// candidate is one Campaign under way.
type candidate struct {
	e  *Election
	id string
	keyHold
	// life bounds what follows the election for the candidate: ctx until
	// the campaign is won (unhook undoes that), then the holding.
	life    context.Context
	endLife context.CancelCauseFunc
	unhook  func() bool
	// What the candidate follows: the election's keys (a cache, and w
	// subscribed to it) while it waits, or only its own key (w, and no
	// cache) when it held at once.
	ca  *Cache[[]byte]
	w   *Watch[[]byte]
	try bool
}

// newCandidate prepares a campaign: the lease its key goes under (a
// session of its own for an election, the shared one for a Mutex or a
// Semaphore) and the key's name.
func (e *Election) newCandidate(ctx context.Context, id string, try bool) (*candidate, error) {
	life, endLife := context.WithCancelCause(context.Background())
	unhook := context.AfterFunc(ctx, func() { endLife(context.Cause(ctx)) })
	cd := &candidate{e: e, id: id, life: life, endLife: endLife, unhook: unhook, try: try}
	if e.share != nil {
		ss, slot, err := e.share.take(ctx)
		if err != nil {
			unhook()
			endLife(nil)
			return nil, err
		}
		cd.ss, cd.slot, cd.s, cd.name = ss, slot, ss.s, ss.keyName(slot)
	} else {
		// The session outlives this call if it wins, so its life is the
		// candidate's: until then, ctx ending ends it, which revokes the
		// lease and with it the candidate key.
		s, err := e.c.NewSession(life, e.ttl, e.o.session...)
		if err != nil {
			unhook()
			endLife(nil)
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
			}
			return nil, err
		}
		cd.s, cd.name = s, fmt.Sprintf("%x", int64(s.Lease()))
	}
	cd.lease = cd.s.Lease()
	cd.key = e.cands.path + cd.name
	return cd, nil
}

// campaign puts the candidate key and waits until it leads. The put reads
// the oldest keys too, so that a candidate that holds at once (or, trying,
// cannot) knows it from that one request.
func (cd *candidate) campaign(ctx context.Context) (*Leadership, error) {
	e := cd.e
	res, err := cd.put(ctx)
	if errors.Is(err, ErrLimitMismatch) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("put candidate key: %w", err)
	}
	switch {
	case !cd.among(res.peers) && cd.try:
		return nil, e.held(res.rev, res.peers)
	case cd.among(res.peers) && cd.s.Remaining() > e.o.stepDown:
		// Older keys cannot appear: it holds until its own key goes, which
		// is all the holding follows (see Leadership.run).
		return newLeadership(cd), nil
	}
	ca, err := e.cands.Cache(cd.life)
	if err != nil {
		return nil, err
	}
	cd.ca = ca
	// Subscribed before the cache is synced, so that no change after the
	// state it is judged on goes unnoticed.
	cd.w = ca.Subscribe()

	synced := ca.Synced()
	poll := time.NewTimer(time.Hour)
	defer poll.Stop()
	for {
		st, epoch := cd.s.feed.get()
		if st == SessionLost {
			return nil, fmt.Errorf("%w before this candidate could lead", ErrLeaseLost)
		}
		if synced == nil {
			leads, err := cd.standing(ctx)
			if err != nil {
				return nil, err
			}
			if leads {
				// Winning with a lease about to be given up would hand the
				// caller a leadership that ends at once: wait for a
				// keepalive to succeed, or for the lease to be lost.
				if cd.s.Remaining() > e.o.stepDown {
					return newLeadership(cd), nil
				}
				poll.Reset(20 * time.Millisecond)
			}
		}
		select {
		case <-synced:
			synced = nil
		case _, ok := <-cd.w.Events():
			if !ok {
				return nil, fmt.Errorf("election watch ended: %w", cd.w.Err())
			}
		case <-epoch.Done():
		case <-cd.s.Done():
			return nil, fmt.Errorf("session ended: %w", cd.s.Err())
		case <-poll.C:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// among reports whether the candidate's key is among peers, the oldest
// keys of the election, so that it holds.
func (cd *candidate) among(peers []*mvccpb.KeyValue) bool {
	for _, kv := range peers {
		if string(kv.Key) == cd.key {
			return true
		}
	}
	return false
}

// put creates the candidate key under the candidate's lease and records its
// create revision; it returns the transaction's result, which holds the
// election's oldest keys. A retry whose first attempt applied finds the key
// ours.
func (cd *candidate) put(ctx context.Context) (casResult, error) {
	c := cd.e.c
	ctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return casResult{}, err
	}
	defer cancel()
	// A put stuck on a silent link must end when the session does (its
	// lease lost), with the session's cause, not at the request timeout.
	ctx, endPut := context.WithCancelCause(ctx)
	defer endPut(nil)
	stop := context.AfterFunc(cd.s.ctx, func() { endPut(sessionCause(context.Cause(cd.s.ctx))) })
	defer stop()
	res, err := c.casStreams(ctx, casOp{key: cd.key, value: []byte(cd.id), lease: cd.lease,
		peers: cd.e.cands.path, peerLimit: int64(cd.e.slots), guard: cd.e.guard, guardValue: cd.e.guardValue})
	// An attempt given up on may still apply, after the one that answered.
	cd.clean = res.attempts == 1
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		cd.s.leaseNotFound(cd.lease)
		return res, fmt.Errorf("%w: the lease was revoked or expired (%w)", ErrLeaseLost, err)
	case err != nil:
		return res, err
	case res.ok:
		cd.token = res.rev
	case res.guard != nil && !bytes.Equal(res.guard.Value, cd.e.guardValue):
		// The name's limit is another. A put answered on its first
		// attempt surely did not apply: the key's name is free again.
		cd.unput = cd.clean
		return res, cd.e.mismatch(res.guard)
	case res.cur == nil || res.cur.Lease != int64(cd.lease):
		return res, fmt.Errorf("candidate key %q taken by someone else", cd.key)
	default:
		// An earlier attempt applied, and its answer was lost.
		cd.token = res.cur.CreateRevision
	}
	return res, nil
}

// standing judges the cache's state: whether the candidate leads, or an
// error if its key is gone, matching ErrLeaseLost when the lease went with
// it (see Leadership.deleted). A state older than the key says nothing.
func (cd *candidate) standing(ctx context.Context) (bool, error) {
	rev := cd.ca.Revision()
	if rev < cd.token {
		return false, nil
	}
	entries := cd.ca.List()
	mine := false
	for _, en := range entries {
		if en.Name == cd.name {
			if en.CreateRevision != cd.token || en.Lease != int64(cd.lease) {
				return false, fmt.Errorf("%w: candidate key %q was replaced by someone else by revision %d", cd.e.kind.lost, cd.key, rev)
			}
			mine = true
		}
	}
	if !mine {
		if cd.s.leaseGone(ctx, cd.lease) {
			return false, fmt.Errorf("%w: candidate key %q was deleted by revision %d with its lease (revoked by another client, or expired)",
				ErrLeaseLost, cd.key, rev)
		}
		return false, fmt.Errorf("%w: candidate key %q was deleted by revision %d", cd.e.kind.lost, cd.key, rev)
	}
	older := 0
	for _, en := range entries {
		if en.CreateRevision < cd.token {
			older++
		}
	}
	return older < cd.e.slots, nil
}

// abandon stops following the election and gives up the candidate key. It
// returns the error of that.
func (cd *candidate) abandon() error {
	if cd.w != nil {
		_ = cd.w.Close()
	}
	if cd.ca != nil {
		_ = cd.ca.Close()
	}
	err := cd.letGo(context.Background(), cd.e)
	cd.endLife(nil)
	return err
}

// Run campaigns as id and runs fn while it leads, again and again, until
// ctx ends or fn fails. fn's ctx is Leadership.Context (LeadershipFrom
// returns the Leadership, for guarded writes): fn must return soon after it
// is cancelled. When fn returns nil, or returns after its ctx was
// cancelled (whatever it returns then: leadership was lost), Run gives up
// the leadership and campaigns again. When fn returns an error while still
// leading, Run resigns and returns that error. Failed campaigns are retried
// with backoff, except those that cannot succeed (an invalid election or id,
// a closed client).
//
// Run blocks; it returns ctx's cause once ctx ends (resigning first if it
// leads), ErrClosed-matching errors once the client is closed.
func (e *Election) Run(ctx context.Context, id string, fn func(ctx context.Context) error) error {
	if e.err != nil {
		return e.err
	}
	if fn == nil {
		return fmt.Errorf("etcdkit: election %q: Run: nil function", e.name)
	}
	for {
		l, err := retryTake(ctx, e, func(ctx context.Context) (*Leadership, error) { return e.Campaign(ctx, id) })
		if err != nil {
			return err
		}
		stop := context.AfterFunc(ctx, func() { l.end(fmt.Errorf("%w: Run's context ended", errResigned)) })
		ferr := fn(l.Context())
		lost := l.Context().Err() != nil
		stop()
		_ = l.Close()
		if ctx.Err() != nil {
			return e.fail("run", context.Cause(ctx))
		}
		if ferr != nil && !lost {
			return ferr
		}
	}
}

// held is the error of a try that found the holding taken: it names the
// holders, the oldest keys at revision rev.
func (e *Election) held(rev int64, holders []*mvccpb.KeyValue) error {
	he := &HeldError{Kind: e.kind.name, Name: e.name, Revision: rev}
	for _, kv := range holders {
		he.Holders = append(he.Holders, LeaderInfo{Present: true, ID: string(kv.Value), Token: kv.CreateRevision,
			Lease: kv.Lease, Revision: rev})
	}
	return he
}
