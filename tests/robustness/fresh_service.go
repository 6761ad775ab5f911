package robustness

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
)

// FreshService is the service the Fresh workload tracks before its first
// instance registers.
const FreshService = "fresh-svc"

// freshService is the Fresh workload's discovery part: trackers of
// FreshService that start while it has no instance, then a driver that
// registers instances and withdraws them in bursts, so that instances come
// and go within the revisions a compaction removes; some bursts end with
// every instance withdrawn, and then another tracker starts (up to
// freshLater) on the trackers' client, as the driver goes on at once. The trackers are
// checked by the tracker rule (checkTrackers); the instances are not
// recorded as ephemeral keys (they come and go on purpose, and the
// trackers follow whatever the cluster holds).
type freshService struct {
	trackers []*tracker
	c        *etcdkit.Client // the trackers' client
	ic       *etcdkit.Client // the instances' client
	// regs are the instances' registrations by slot, nil while withdrawn;
	// only the driver touches them until it has returned.
	regs   []*etcdkit.Registration[string]
	ttl    time.Duration
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startTrackers starts the trackers, each on the same client so that the
// later ones join the feed the first one opened and read their start
// themselves, and waits until they are synced.
func (fs *freshService) startTrackers(ctx context.Context, run *Run, rng *RandSource) error {
	c, err := run.Client(ctx, ClientOptions{Name: "ft", Members: rotate(rng.IntN(3)),
		StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
	if err != nil {
		return err
	}
	fs.c = c
	for i := range 2 {
		tr, err := startTracker(ctx, run, c, fmt.Sprintf("ft%d", i), FreshService)
		if tr != nil {
			fs.trackers = append(fs.trackers, tr)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// startInstances starts the driver of the instances, on its own client.
func (fs *freshService) startInstances(ctx context.Context, run *Run, rng *RandSource) error {
	c, err := run.Client(ctx, ClientOptions{Name: "fi", StallTimeout: time.Second})
	if err != nil {
		return err
	}
	fs.ic = c
	fs.ttl = 2 * time.Second
	if rng.Chance(0.5) {
		fs.ttl = time.Second
	}
	fs.regs = make([]*etcdkit.Registration[string], 3)
	dctx, cancel := context.WithCancel(ctx)
	fs.cancel = cancel
	later := func() {
		if len(fs.trackers) >= 2+freshLater {
			return
		}
		name := fmt.Sprintf("ft%d", len(fs.trackers))
		tr, err := newTracker(ctx, run, fs.c, name, FreshService)
		if err != nil {
			run.Rec.Note("fresh", "%s: %v", name, err)
			return
		}
		fs.trackers = append(fs.trackers, tr)
	}
	fs.wg.Go(func() { fs.drive(dctx, run.Rec, rng, later) })
	return nil
}

// drive registers and withdraws instances until ctx ends: a burst of a few
// registrations and withdrawals back to back, then a pause; or, for some
// bursts, every instance withdrawn, a call of emptied, and the next burst
// at once (see Fresh.write). The
// registrations live as long as ctx: when it ends, every instance is
// withdrawn.
func (fs *freshService) drive(ctx context.Context, rec *Recorder, rng *RandSource, emptied func()) {
	svc := etcdkit.NewService(fs.ic, FreshService, etcdkit.JSON[string]())
	for gen := 1; ctx.Err() == nil; {
		for range 1 + rng.IntN(4) {
			slot := rng.IntN(len(fs.regs))
			if r := fs.regs[slot]; r != nil {
				if err := r.Close(); err != nil {
					rec.Note("fresh", "withdraw n%d: %v", slot, err)
				}
				fs.regs[slot] = nil
				continue
			}
			id := fmt.Sprintf("n%d", slot)
			r, err := svc.Register(ctx, etcdkit.Instance[string]{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", 9100+slot),
				Meta: fmt.Sprintf("%s.%d", id, gen)}, fs.ttl)
			gen++
			if err != nil {
				if ctx.Err() == nil {
					rec.Note("fresh", "register %s: %v", id, err)
				}
				continue
			}
			fs.regs[slot] = r
		}
		if rng.Chance(0.3) {
			fs.withdraw(rec)
			emptied()
			continue
		}
		// The pace of the bursts, part of the workload's definition.
		t := time.NewTimer(rng.Duration(30*time.Millisecond, 200*time.Millisecond))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// withdraw withdraws every registered instance.
func (fs *freshService) withdraw(rec *Recorder) {
	for i, r := range fs.regs {
		if r != nil {
			if err := r.Close(); err != nil && rec != nil {
				rec.Note("fresh", "withdraw n%d: %v", i, err)
			}
			fs.regs[i] = nil
		}
	}
}

// quiesce stops the driver, which withdraws every instance.
func (fs *freshService) quiesce() {
	if fs.cancel != nil {
		fs.cancel()
	}
	fs.wg.Wait()
}

// settle closes every registration and waits until the service has no
// instance left: one whose withdrawal failed goes with its lease, within
// its TTL, and must be gone before the settled revision is read.
func (fs *freshService) settle(ctx context.Context, run *Run) error {
	fs.quiesce()
	fs.withdraw(run.Rec)
	key := run.Namespace + "/" + servicePrefix(FreshService)
	var left int64
	if waitFor(ctx, func() bool {
		left = countKeys(ctx, run, key)
		return left == 0
	}, nil) {
		return nil
	}
	return fmt.Errorf("%d instances of %s still registered when the settle deadline passed (TTL %v)", left, FreshService, fs.ttl)
}

// countKeys returns the number of keys under prefix (a full etcd key),
// read through a direct client, or -1 if none could read it.
func countKeys(ctx context.Context, run *Run, prefix string) int64 {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for _, cli := range run.env.direct {
		if resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err == nil {
			return resp.Count
		}
	}
	return -1
}

// close stops the driver and closes the registrations, the trackers and
// the clients.
func (fs *freshService) close() {
	fs.quiesce()
	fs.withdraw(nil)
	closeTrackers(fs.trackers)
	for _, c := range []*etcdkit.Client{fs.c, fs.ic} {
		if c != nil {
			_ = c.Close()
		}
	}
}
