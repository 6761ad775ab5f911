package robustness

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// ServiceName is the service the discovery workload registers instances
// of.
const ServiceName = "svc"

// servicePrefix is where etcdkit keeps a service's instances, relative to
// the namespace (see etcdkit.Service).
func servicePrefix(name string) string { return "_etcdkit/service/" + url.PathEscape(name) + "/" }

// Services is the discovery workload: one or two instances of a service
// register, each through one member's proxy only (the members the schedule
// cuts off longest first, after the ephemeral owners'), and update their
// metadata now and then; one or two trackers on clients that use every
// member follow the service and record each view they deliver. A
// registration is an ephemeral key and is checked as one; each tracker view
// must be a state the service had, in order, and each tracker must end with
// the service's final state.
type Services struct {
	run       *Run
	instances []*instance
	trackers  []*tracker
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	once      sync.Once
}

type instance struct {
	rec    *EphemeralRecord
	member int
	c      *etcdkit.Client
	reg    *etcdkit.Registration[string]
	addr   string

	// metas are the metadata the instance may show at the end.
	metas *candidates
}

type tracker struct {
	rec  *TrackerRecord
	c    *etcdkit.Client
	t    *etcdkit.Tracker[string]
	done chan struct{}
}

// Name returns "services".
func (ss *Services) Name() string { return "services" }

// Start registers the instances and starts the trackers, and returns once
// every tracker is synced.
func (ss *Services) Start(ctx context.Context, run *Run) error {
	ss.run = run
	rng := run.Rand("services")
	tctx, cancel := context.WithCancel(ctx)
	ss.cancel = cancel
	order := cutOrder(run.Schedule(), rng.IntN(3))
	ttl := 2 * time.Second
	if run.Schedule().Duration >= 2*time.Second && rng.Chance(0.5) {
		ttl = time.Second
	}
	for i := range 1 + rng.IntN(2) {
		id := fmt.Sprintf("i%d", i)
		in := &instance{member: order[(i+1)%3], addr: fmt.Sprintf("127.0.0.1:%d", 9000+i), metas: newCandidates(id + ".0")}
		stall := rng.Duration(300*time.Millisecond, time.Second)
		c, err := run.Client(ctx, ClientOptions{Name: id, Members: []int{in.member}, StallTimeout: stall})
		if err != nil {
			return err
		}
		in.c = c
		svc := etcdkit.NewService(c, ServiceName, etcdkit.JSON[string]())
		in.rec = &EphemeralRecord{Owner: fmt.Sprintf("%s via m%d", id, in.member), Key: servicePrefix(ServiceName) + id, TTL: ttl,
			Member: in.member, StallTimeout: stall}
		if err := run.StartStep(ctx, "register "+id, func() (err error) {
			in.reg, err = svc.Register(ctx, etcdkit.Instance[string]{ID: id, Addr: in.addr, Meta: in.metas.get()[0]}, ttl)
			return err
		}); err != nil {
			return err
		}
		in.rec.Created = run.Rec.Now()
		run.Rec.Ephemeral(in.rec)
		ss.instances = append(ss.instances, in)
		ss.wg.Go(func() {
			for st := range in.reg.States() {
				run.Rec.Note("svc", "%s %v", in.rec.Owner, st)
				if st == etcdkit.SessionLost {
					in.rec.LostAt = append(in.rec.LostAt, run.Rec.Now())
				}
			}
		})
		urng := run.Rand("instance " + id)
		ss.wg.Go(func() {
			// The pace of the updates is part of the workload's definition.
			keepUpdating(tctx, run.Rec, urng, 100*time.Millisecond, 500*time.Millisecond, "svc", in.rec.Owner, id, in.metas, in.reg.Update)
		})
	}
	for i := range 1 + rng.IntN(2) {
		name := fmt.Sprintf("t%d", i)
		c, err := run.Client(ctx, ClientOptions{Name: name, Members: rotate(rng.IntN(3)),
			StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
		if err != nil {
			return err
		}
		tr, err := startTracker(ctx, run, c, name, ServiceName)
		if tr != nil {
			ss.trackers = append(ss.trackers, tr)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// startTracker starts a tracker of service on c (see newTracker) and
// waits until it is synced. The tracker it returns, if any, even with an
// error, is to be closed (see closeTrackers).
func startTracker(ctx context.Context, run *Run, c *etcdkit.Client, name, service string) (*tracker, error) {
	tr, err := newTracker(ctx, run, c, name, service)
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(SettleTimeout)
	defer timer.Stop()
	select {
	case <-tr.t.Synced():
		return tr, nil
	case <-timer.C:
		return tr, fmt.Errorf("tracker %s not synced after %v (state %v)", name, SettleTimeout, tr.t.State())
	case <-ctx.Done():
		return tr, ctx.Err()
	}
}

// newTracker starts a tracker of service on c and records its views; it
// returns at once, the tracker syncing on its own. c is not the tracker's
// to close.
func newTracker(ctx context.Context, run *Run, c *etcdkit.Client, name, service string) (*tracker, error) {
	var t *etcdkit.Tracker[string]
	if err := run.StartStep(ctx, "track "+name, func() (err error) {
		t, err = etcdkit.NewService(c, service, etcdkit.JSON[string]()).Track(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	tr := &tracker{rec: &TrackerRecord{Name: name, Prefix: servicePrefix(service)}, c: c, t: t, done: make(chan struct{})}
	run.Rec.Tracker(tr.rec)
	go tr.read(run.Rec)
	return tr, nil
}

// read records every view the tracker delivers.
func (tr *tracker) read(rec *Recorder) {
	defer close(tr.done)
	for view := range tr.t.Updates() {
		rec.update(func(*History) {
			tr.rec.Views = append(tr.rec.Views, TrackerView{At: rec.Now(), Instances: viewOf(view)})
		})
	}
}

// viewOf turns instances into the form the checker compares: ID to
// "addr meta".
func viewOf(insts []etcdkit.Instance[string]) map[string]string {
	v := make(map[string]string, len(insts))
	for _, in := range insts {
		v[in.ID] = in.Addr + " " + in.Meta
	}
	return v
}

// Quiesce stops the metadata updates.
func (ss *Services) Quiesce(*Run) {
	if ss.cancel != nil {
		ss.cancel()
	}
}

// Settle waits until every instance is published again with its latest
// metadata under its current lease, records its outages, then withdraws it.
func (ss *Services) Settle(ctx context.Context, run *Run) error {
	for _, in := range ss.instances {
		want := in.metas.get()
		got, ok := awaitKey(ctx, run, run.Namespace+"/"+in.rec.Key, in.reg.Done(),
			func() int64 { return int64(in.reg.Lease()) }, func(v []byte) bool {
				addr, meta, err := decodeRecord(string(v))
				return err == nil && addr == in.addr && slices.Contains(want, meta)
			})
		if !ok {
			in.rec.Lost = fmt.Sprintf("after the heal its key %s is %s, want addr %s and meta one of %q under lease %x (state %v, err %v)",
				in.rec.Key, got, in.addr, want, int64(in.reg.Lease()), in.reg.State(), in.reg.Err())
		} else {
			run.Rec.Note("svc", "%s published: %s", in.rec.Owner, got)
		}
		in.rec.Closed = run.Rec.Now()
		in.rec.Outages = run.Outages(in.member, in.rec.Created, in.rec.Closed)
		if err := in.reg.Close(); err != nil {
			run.Rec.Note("svc", "%s close: %v", in.rec.Owner, err)
		}
	}
	ss.wg.Wait()
	return nil
}

// Converge waits until every tracker's view is the service's state at the
// settled revision (every instance withdrawn by then), and records it.
func (ss *Services) Converge(ctx context.Context, run *Run) {
	convergeTrackers(ctx, run, ss.trackers, ServiceName, "svc")
}

// convergeTrackers waits until every tracker of service has the service's
// state at the settled revision as its view, and records its final view.
func convergeTrackers(ctx context.Context, run *Run, trackers []*tracker, service, who string) {
	prefix := servicePrefix(service)
	want, err := serviceState(stateAt(scoped(run.Changes(), prefix, true), run.Rec.History().SettledRev), prefix)
	if err != nil {
		run.Rec.Note(who, "final state: %v", err)
	}
	for _, tr := range trackers {
		ok := waitFor(ctx, func() bool { return maps.Equal(viewOf(tr.t.Instances()), want) }, tr.t.Done())
		run.Rec.update(func(*History) {
			tr.rec.Final = viewOf(tr.t.Instances())
			if !ok {
				tr.rec.Stuck = fmt.Sprintf("the tracker's state is %v, stale %v, err %v", tr.t.State(), tr.t.Stale(), tr.t.Err())
			}
		})
	}
}

// closeTrackers closes the trackers and waits for their readers.
func closeTrackers(trackers []*tracker) {
	for _, tr := range trackers {
		_ = tr.t.Close()
		<-tr.done
	}
}

// Close withdraws the instances, closes the trackers and the clients.
func (ss *Services) Close() {
	ss.once.Do(func() {
		ss.Quiesce(ss.run)
		for _, in := range ss.instances {
			_ = in.reg.Close()
		}
		ss.wg.Wait()
		closeTrackers(ss.trackers)
		for _, in := range ss.instances {
			_ = in.c.Close()
		}
		for _, tr := range ss.trackers {
			_ = tr.c.Close()
		}
	})
}

// decodeRecord reads the address and the metadata (a JSON string) of a
// stored instance.
func decodeRecord(v string) (addr, meta string, err error) {
	var r struct {
		Addr string          `json:"addr"`
		Meta json.RawMessage `json:"meta"`
	}
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return "", "", err
	}
	if len(r.Meta) > 0 {
		if err := json.Unmarshal(r.Meta, &meta); err != nil {
			return "", "", err
		}
	}
	return r.Addr, meta, nil
}

// serviceState turns the state of a service's keys into a view: ID to
// "addr meta".
func serviceState(st state, prefix string) (map[string]string, error) {
	v := make(map[string]string, len(st))
	for key, kv := range st {
		addr, meta, err := decodeRecord(kv.Value)
		if err != nil {
			return v, fmt.Errorf("instance %s: %w", key, err)
		}
		v[key[len(prefix):]] = addr + " " + meta
	}
	return v, nil
}
