package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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
// lost (ErrLeaseLost) or its key deleted by someone else (ErrNotLeader), and
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
// does not hold at once, with a *HeldError naming those who do.
func (e *Election) campaign(ctx context.Context, id string, try bool) (*Leadership, error) {
	if e.err != nil {
		return nil, e.err
	}
	if len(id) > e.c.cfg.MaxValueSize {
		return nil, e.fail(e.verb(), fmt.Errorf("%w: id of %d bytes, limit %d", ErrTooLarge, len(id), e.c.cfg.MaxValueSize))
	}
	if e.c.closed() {
		return nil, e.fail(e.verb(), ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, e.fail(e.verb(), context.Cause(ctx))
	}

	// The session outlives this call if it wins, so its life is its own;
	// until then, ctx ending ends it, which revokes the lease and with it
	// the candidate key.
	life, endLife := context.WithCancelCause(context.Background())
	unhook := context.AfterFunc(ctx, func() { endLife(context.Cause(ctx)) })
	s, err := e.c.NewSession(life, e.ttl, e.o.session...)
	if err != nil {
		unhook()
		endLife(nil)
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, e.fail(e.verb(), err)
	}
	cd := &candidate{e: e, id: id, s: s, lease: s.Lease(), life: life, endLife: endLife, try: try}
	cd.name = fmt.Sprintf("%x", int64(cd.lease))
	cd.key = e.cands.path + cd.name

	l, err := cd.campaign(ctx)
	if err == nil && !unhook() {
		// ctx ended just as the campaign was won.
		l, err = nil, context.Cause(ctx)
	}
	if err != nil {
		unhook()
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		// A session that lost its lease or ended with the client revokes
		// its lease on its own, which a silent link can make take a while:
		// do not make the caller wait for it.
		if st, _ := s.feed.get(); st != SessionLost || !e.c.spawn(func() { _ = cd.abandon() }) {
			_ = cd.abandon()
		}
		return nil, e.fail(e.verb(), err)
	}
	if !l.start() {
		_ = cd.abandon()
		return nil, e.fail(e.verb(), ErrClosed)
	}
	e.countChange()
	e.c.log.Info(e.holding()+" won", zap.String(e.kind, e.name), zap.String("id", id), zap.Int64("token", l.token))
	return l, nil
}

// candidate is one Campaign under way.
type candidate struct {
	e       *Election
	id      string
	s       *Session
	lease   clientv3.LeaseID
	name    string // the key's name under the election's prefix
	key     string // the key's full etcd key
	token   int64  // the key's create revision, once put
	life    context.Context
	endLife context.CancelCauseFunc
	ca      *Cache[[]byte]
	w       *Watch[[]byte]
	try     bool
}

// campaign puts the candidate key and waits until it leads.
func (cd *candidate) campaign(ctx context.Context) (*Leadership, error) {
	e := cd.e
	if err := cd.put(ctx); err != nil {
		return nil, fmt.Errorf("put candidate key: %w", err)
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
			leads, err := cd.standing()
			if err != nil {
				return nil, err
			}
			if !leads && cd.try && cd.ca.Revision() >= cd.token {
				return nil, cd.held()
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

// put creates the candidate key under the candidate's lease and records its
// create revision. A retry whose first attempt applied finds the key ours.
func (cd *candidate) put(ctx context.Context) error {
	c := cd.e.c
	ctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	// A put stuck on a silent link must end when the session does (its
	// lease lost), with the session's cause, not at the request timeout.
	ctx, endPut := context.WithCancelCause(ctx)
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-cd.s.Done():
			endPut(cd.s.Err())
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		<-exited
		endPut(nil)
	}()
	res, err := c.casStreams(ctx, casOp{key: cd.key, value: []byte(cd.id), lease: cd.lease})
	switch {
	case err != nil:
		return err
	case res.ok:
		cd.token = res.rev
	case res.cur == nil || res.cur.Lease != int64(cd.lease):
		return fmt.Errorf("candidate key %q taken by someone else", cd.key)
	default:
		// An earlier attempt applied, and its answer was lost.
		cd.token = res.cur.CreateRevision
	}
	return nil
}

// standing judges the cache's state: whether the candidate leads, or an
// error if its key is gone. A state older than the key says nothing.
func (cd *candidate) standing() (bool, error) {
	rev := cd.ca.Revision()
	if rev < cd.token {
		return false, nil
	}
	entries := cd.ca.List()
	mine := false
	for _, en := range entries {
		if en.Name == cd.name {
			if en.CreateRevision != cd.token || en.Lease != int64(cd.lease) {
				return false, fmt.Errorf("%w: candidate key %q was replaced by someone else by revision %d", cd.e.lost, cd.key, rev)
			}
			mine = true
		}
	}
	if !mine {
		return false, fmt.Errorf("%w: candidate key %q was deleted by revision %d", cd.e.lost, cd.key, rev)
	}
	older := 0
	for _, en := range entries {
		if en.CreateRevision < cd.token {
			older++
		}
	}
	return older < cd.e.slots, nil
}

// abandon stops following the election and ends the session, which revokes
// the lease and so deletes the candidate key. It returns the revoke's error.
func (cd *candidate) abandon() error {
	if cd.w != nil {
		_ = cd.w.Close()
	}
	if cd.ca != nil {
		_ = cd.ca.Close()
	}
	err := cd.s.Close()
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
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for {
		l, err := e.Campaign(ctx, id)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return e.fail("run", context.Cause(ctx))
			case errors.Is(err, ErrClosed), errors.Is(err, ErrInvalidTTL), errors.Is(err, ErrTooLarge):
				return err
			}
			e.c.log.Info("campaign failed, retrying", zap.String("election", e.name), zap.String("id", id), zap.Error(err))
			if !retry.Wait(ctx) {
				return e.fail("run", context.Cause(ctx))
			}
			continue
		}
		retry.Reset()
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
