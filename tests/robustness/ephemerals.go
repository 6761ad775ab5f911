package robustness

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// Ephemerals is the workload of ephemeral keys: zero to two owners (one or
// two in long schedules), each on a client that reaches the cluster through
// one member's proxy only, the members the schedule cuts off longest first,
// so that the schedule's faults on that member or proxy cut the owner off.
// Each owner holds its key with NewEphemeral, updates its value now and
// then, and records its state changes. After the heal its key must be back
// with the owner's latest value under the owner's current lease; the history
// is then checked against the owner's outages (see Check).
type Ephemerals struct {
	run    *Run
	owners []*owner
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

type owner struct {
	rec    *EphemeralRecord
	member int
	c      *etcdkit.Client
	key    *etcdkit.Key[string]
	e      *etcdkit.Ephemeral[string]

	// values are the values the key may hold at the end.
	values *candidates
}

// Name returns "ephemerals".
func (es *Ephemerals) Name() string { return "ephemerals" }

// Start makes the owners and their keys.
func (es *Ephemerals) Start(ctx context.Context, run *Run) error {
	es.run = run
	rng := run.Rand("ephemerals")
	n := rng.IntN(3)
	if run.Schedule().Duration >= 2*time.Second {
		n = 1 + rng.IntN(2)
	}
	members := cutOrder(run.Schedule(), rng.IntN(3))
	tctx, cancel := context.WithCancel(ctx)
	es.cancel = cancel
	for i := range n {
		o := &owner{member: members[i]}
		ttl := 2 * time.Second
		if run.Schedule().Duration >= 2*time.Second && rng.Chance(0.5) {
			ttl = time.Second
		}
		name := fmt.Sprintf("o%d", i)
		stall := rng.Duration(300*time.Millisecond, time.Second)
		c, err := run.Client(ctx, ClientOptions{Name: name, Members: []int{o.member}, StallTimeout: stall})
		if err != nil {
			return err
		}
		o.c = c
		o.key = etcdkit.NewKey(c, fmt.Sprintf("%s/%s", EphemeralPrefix, name), etcdkit.String())
		o.values = newCandidates(name + ".0")
		o.rec = &EphemeralRecord{Owner: fmt.Sprintf("%s via m%d", name, o.member), Key: o.key.Name(), TTL: ttl,
			Member: o.member, StallTimeout: stall}
		// A put whose answer was lost is overwritten by the next attempt,
		// under its own lease; a failed attempt revokes its lease.
		if err := run.StartStep(ctx, o.rec.Owner+": NewEphemeral", func() (err error) {
			o.e, err = etcdkit.NewEphemeral(ctx, o.key, o.values.get()[0], ttl)
			return err
		}); err != nil {
			return err
		}
		o.rec.Created = run.Rec.Now()
		run.Rec.Ephemeral(o.rec)
		es.owners = append(es.owners, o)
		es.wg.Go(func() { o.watchStates(run.Rec) })
		urng := run.Rand("ephemeral " + name)
		es.wg.Go(func() {
			// The pace of the updates is part of the workload's definition.
			keepUpdating(tctx, run.Rec, urng, 50*time.Millisecond, 300*time.Millisecond, "eph", o.rec.Owner, name, o.values, o.e.Update)
		})
	}
	return nil
}

// cutOrder returns the members sorted by the longest single fault that cuts
// the path of a client using only that member's proxy, longest first, so
// that owners sit where the schedule hurts most; ties go in rotation from
// first.
func cutOrder(s *Schedule, first int) []int {
	var longest [3]time.Duration
	for _, f := range s.Faults {
		cuts := f.Kind == ProxyStop || f.Kind.isMember() || f.silencesUpstream()
		if cuts && f.Member >= 0 && f.For > longest[f.Member] {
			longest[f.Member] = f.For
		}
	}
	order := []int{first % 3, (first + 1) % 3, (first + 2) % 3}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(longest[b], longest[a]) })
	return order
}

// watchStates records the owner's state changes until the Ephemeral ends.
func (o *owner) watchStates(rec *Recorder) {
	for st := range o.e.States() {
		rec.Note("eph", "%s %v", o.rec.Owner, st)
		if st == etcdkit.SessionLost {
			o.rec.LostAt = append(o.rec.LostAt, rec.Now())
		}
	}
}

// Quiesce stops the updates.
func (es *Ephemerals) Quiesce(*Run) {
	if es.cancel != nil {
		es.cancel()
	}
}

// Settle waits until every owner's key is back with its latest value under
// its current lease, records the owner's outages, and closes the owner,
// which deletes the key.
func (es *Ephemerals) Settle(ctx context.Context, run *Run) error {
	for _, o := range es.owners {
		want := o.values.get()
		full := run.Namespace + "/" + o.key.Name()
		got, ok := awaitKey(ctx, run, full, o.e.Done(),
			func() int64 { return int64(o.e.Lease()) }, func(v []byte) bool { return slices.Contains(want, string(v)) })
		if !ok {
			o.rec.Lost = fmt.Sprintf("after the heal its key %s is %s, want one of %q under lease %x (state %v, err %v)",
				o.key.Name(), got, want, int64(o.e.Lease()), o.e.State(), o.e.Err())
		} else {
			run.Rec.Note("eph", "%s holds %s: %s", o.rec.Owner, o.key.Name(), got)
		}
		o.rec.Closed = run.Rec.Now()
		o.rec.Outages = run.Outages(o.member, o.rec.Created, o.rec.Closed)
		if err := o.e.Close(); err != nil {
			run.Rec.Note("eph", "%s close: %v", o.rec.Owner, err)
		}
	}
	es.wg.Wait()
	return nil
}

// Converge does nothing: owners observe nothing after Settle.
func (es *Ephemerals) Converge(context.Context, *Run) {}

// Close closes the owners and their clients.
func (es *Ephemerals) Close() {
	es.once.Do(func() {
		es.Quiesce(es.run)
		for _, o := range es.owners {
			_ = o.e.Close()
		}
		es.wg.Wait()
		for _, o := range es.owners {
			_ = o.c.Close()
		}
	})
}
