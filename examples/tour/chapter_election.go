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
	register(50, "Leader election: a cut-off leader steps down before anyone else can win, and its late writes are refused", electionChapter)
}

// electionWait bounds each wait for a leader, a loss or an observed change.
const electionWait = 30 * time.Second

func electionChapter(ctx context.Context, tr *tour) error {
	const ttl = 2 * time.Second
	// Each candidate gets a client whose only endpoint is one member's
	// proxy, so that cutting that proxy cuts off that candidate alone.
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
	watcher, err := tr.directClient(ctx)
	if err != nil {
		return err
	}
	const name = "election/scheduler"
	e1 := etcdkit.NewElection(c1, name, ttl)
	e2 := etcdkit.NewElection(c2, name, ttl)

	observed := etcdkit.NewElection(watcher, name, ttl).Observe(ctx)
	defer observed.Close()
	li, err := electionNext(ctx, observed)
	if err != nil {
		return err
	}
	tr.say("A third client Observes the election; its first value is the current state: %v.", li)

	l1, err := e1.Campaign(ctx, "worker-1")
	if err != nil {
		return err
	}
	defer l1.Close()
	if li, err = electionNext(ctx, observed); err != nil {
		return err
	}
	tr.say("worker-1 campaigns with a %v lease and leads at once; the observer sees %v.", ttl, li)
	tr.say("Its token, %d, is the create revision of its key: the next leader's will be higher.", l1.Token())

	// Campaign's ctx bounds only the wait: if the chapter fails before
	// worker-2 wins, its candidacy ends with the chapter.
	cctx, stopCampaign := context.WithCancel(ctx)
	defer stopCampaign()
	won := make(chan electionWin, 1)
	go func() {
		l, err := e2.Campaign(cctx, "worker-2")
		won <- electionWin{l, err, time.Now()}
	}()
	tr.say("worker-2 campaigns too and waits in line behind worker-1's key.")

	plan := etcdkit.NewKey(c1, "election/plan", etcdkit.String())
	if _, err := etcdkit.GuardedPut(ctx, l1, plan, "nightly batch, by worker-1"); err != nil {
		return err
	}
	tr.say("worker-1 writes the plan with GuardedPut: one transaction that applies only while its key has its token.")

	var cut time.Time
	if tr.faults() {
		tr.say("Fault: blackholing the proxy of worker-1's member. Its link goes silent: keepalives, writes, all unanswered.")
		cut = time.Now()
		p := tr.cluster.Members()[0].Proxy()
		p.Blackhole(proxy.Both)
		defer p.Unblackhole()
	} else {
		tr.say("Against a real cluster the tour cuts no link: worker-1 resigns instead, which hands over at once.")
		cut = time.Now()
		if err := l1.Resign(ctx); err != nil {
			return err
		}
	}

	select {
	case <-l1.Context().Done():
	case <-time.After(electionWait):
		return fmt.Errorf("worker-1 still leads %v after the cut", electionWait)
	}
	stepped := time.Now()
	if tr.faults() {
		tr.say("%v later worker-1's Leadership.Context is cancelled: %v.", stepped.Sub(cut).Round(10*time.Millisecond), context.Cause(l1.Context()))
	} else {
		tr.say("Resign cancels worker-1's Leadership.Context first (%v), then revokes its lease.", context.Cause(l1.Context()))
	}

	var w electionWin
	select {
	case w = <-won:
	case <-time.After(electionWait):
		return fmt.Errorf("worker-2 did not take over within %v", electionWait)
	}
	if w.err != nil {
		return w.err
	}
	defer w.l.Close()
	if tr.faults() {
		tr.say("%v after the cut the server expires worker-1's lease and worker-2 wins (token %d): worker-1 had stopped %v earlier.",
			w.at.Sub(cut).Round(10*time.Millisecond), w.l.Token(), w.at.Sub(stepped).Round(10*time.Millisecond))
		tr.say("(A raw concurrency.Election leader learns it only when its session's TTL countdown runs out, often after.)")
	} else {
		tr.say("worker-2 wins %v after the resignation (token %d).", w.at.Sub(cut).Round(time.Millisecond), w.l.Token())
	}
	for li.Token != w.l.Token() {
		if li, err = electionNext(ctx, observed); err != nil {
			return err
		}
	}
	tr.say("The observer sees %v.", li)

	_, err = etcdkit.GuardedPut(ctx, l1, plan, "stale plan, by worker-1")
	if !errors.Is(err, etcdkit.ErrNotLeader) {
		return fmt.Errorf("worker-1's late write: got %v, want ErrNotLeader", err)
	}
	tr.say("worker-1's late GuardedPut is refused without a request: %v", err)
	if _, err := etcdkit.GuardedPut(ctx, w.l, etcdkit.NewKey(c2, "election/plan", etcdkit.String()), "nightly batch, by worker-2"); err != nil {
		return err
	}
	tr.say("worker-2's GuardedPut applies. Even a write of worker-1's that the network delivered late would fail its")
	tr.say("condition in the cluster: worker-1's key is gone.")

	if tr.faults() {
		tr.cluster.Members()[0].Proxy().Unblackhole()
		select {
		case <-l1.Done():
		case <-time.After(electionWait):
			return fmt.Errorf("worker-1's leadership was not cleaned up within %v", electionWait)
		}
		li, err := e1.Leader(ctx)
		if err != nil {
			return err
		}
		tr.say("Heal: worker-1's link works again. It does not lead again; asked, it names the leader: %v.", li)
	}
	closed := time.Now()
	if err := w.l.Close(); err != nil {
		return err
	}
	if li, err = electionNext(ctx, observed); err != nil {
		return err
	}
	tr.say("worker-2 Closes its Leadership: the observer sees %v %v later, not a TTL later.", li, time.Since(closed).Round(time.Millisecond))
	return nil
}

type electionWin struct {
	l   *etcdkit.Leadership
	err error
	at  time.Time
}

// electionNext returns the next value of an Observation.
func electionNext(ctx context.Context, o *etcdkit.Observation) (etcdkit.LeaderInfo, error) {
	select {
	case li, ok := <-o.Updates():
		if !ok {
			return li, fmt.Errorf("observation ended: %w", o.Err())
		}
		return li, nil
	case <-time.After(electionWait):
		return etcdkit.LeaderInfo{}, fmt.Errorf("no change observed within %v", electionWait)
	case <-ctx.Done():
		return etcdkit.LeaderInfo{}, ctx.Err()
	}
}
