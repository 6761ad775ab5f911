package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/proxy"
)

func init() {
	register(55, "Locks with fencing: a cut-off lock holder learns it first, and its late guarded write is refused", lockChapter)
}

func lockChapter(ctx context.Context, tr *tour) error {
	const ttl = 2 * time.Second
	dial := func(member int) (*etcdkit.Client, error) {
		if !tr.faults() {
			return tr.client(ctx)
		}
		return tr.dial(ctx, []string{tr.cluster.Members()[member].ProxyEndpoint()})
	}
	c1, err := dial(0)
	if err != nil {
		return err
	}
	c2, err := dial(1)
	if err != nil {
		return err
	}
	const name = "nightly-migration"
	m1 := etcdkit.NewMutex(c1, name, ttl, etcdkit.WithHolderID("job-1"))
	m2 := etcdkit.NewMutex(c2, name, ttl, etcdkit.WithHolderID("job-2"))

	l1, err := m1.Lock(ctx)
	if err != nil {
		return err
	}
	defer l1.Close()
	tr.say("job-1 locks the mutex %q (token %d).", name, l1.Token())
	switch l, err := m2.TryLock(ctx); {
	case err == nil:
		_ = l.Close()
		return errors.New("job-2's TryLock took the lock job-1 holds")
	case !errors.Is(err, etcdkit.ErrLocked):
		return err
	default:
		tr.say("job-2's TryLock fails at once: %v", err)
	}

	step := etcdkit.NewKey(c1, "migration/step", etcdkit.JSON[int]())
	if _, err := etcdkit.GuardedTxn(l1).If(step.IfAbsent()).Then(step.OpPut(1)).Commit(ctx); err != nil {
		return err
	}
	tr.say("job-1 records step 1 in a transaction guarded by its lock: it applies only while its key holds.")

	lctx, stopLock := context.WithCancel(ctx)
	defer stopLock()
	got := make(chan error, 1)
	var l2 *etcdkit.Lock
	go func() {
		var err error
		l2, err = m2.Lock(lctx)
		got <- err
	}()
	tr.say("job-2 calls Lock and waits in line.")

	cut := time.Now()
	if tr.faults() {
		tr.say("Fault: blackholing the proxy of job-1's member, while job-1 thinks it is mid-migration.")
		p := tr.cluster.Members()[0].Proxy()
		p.Blackhole(proxy.Both)
		defer p.Unblackhole()
	} else {
		tr.say("Against a real cluster the tour cuts no link: job-1 unlocks instead.")
		if err := l1.Unlock(ctx); err != nil {
			return err
		}
	}
	select {
	case <-l1.Context().Done():
	case <-time.After(electionWait):
		return fmt.Errorf("job-1 still holds %v after the cut", electionWait)
	}
	lost := time.Now()
	tr.say("%v later job-1's Lock.Context is cancelled: %v.", lost.Sub(cut).Round(10*time.Millisecond), context.Cause(l1.Context()))
	select {
	case err := <-got:
		if err != nil {
			return err
		}
	case <-time.After(electionWait):
		return fmt.Errorf("job-2 did not acquire within %v", electionWait)
	}
	defer l2.Close()
	tr.say("job-2 acquires %v after that (token %d): job-1 was told first.", time.Since(lost).Round(10*time.Millisecond), l2.Token())

	_, err = etcdkit.GuardedTxn(l1).Then(step.OpPut(2)).Commit(ctx)
	if !errors.Is(err, etcdkit.ErrNotHeld) {
		return fmt.Errorf("job-1's late write: got %v, want ErrNotHeld", err)
	}
	tr.say("job-1's late guarded write is refused: %v", err)
	step2 := etcdkit.NewKey(c2, "migration/step", etcdkit.JSON[int]())
	if _, err := etcdkit.GuardedUpdateKeys(ctx, l2, func(ctx context.Context, tx *etcdkit.Tx) error {
		v, _, err := step2.GetIn(ctx, tx)
		tx.Write(step2.OpPut(v.Data + 1))
		return err
	}); err != nil {
		return err
	}
	v, err := step2.Get(ctx)
	if err != nil {
		return err
	}
	tr.say("job-2 moves the record on to step %d with a guarded update; nothing of job-1's landed after the cut.", v.Data)
	if tr.faults() {
		tr.cluster.Members()[0].Proxy().Unblackhole()
		if err := l1.Unlock(ctx); err != nil {
			tr.say("job-1's late Unlock reports: %v", err)
		}
		h, err := m1.Holder(ctx)
		if err != nil {
			return err
		}
		tr.say("Heal: job-1 unlocks late; it deletes only its own key, so the holder is still %q (token %d).", h.ID, h.Token)
	}
	return l2.Unlock(ctx)
}
