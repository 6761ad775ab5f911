package main

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/proxy"
)

func init() {
	register(20, "Watching typed configuration: every change once, through a silent link and a compaction", watchChapter)
}

// watchWait bounds each wait for an event or a state in the chapter.
const watchWait = 30 * time.Second

func watchChapter(ctx context.Context, tr *tour) error {
	c, err := tr.client(ctx)
	if err != nil {
		return err
	}
	other, err := tr.directClient(ctx)
	if err != nil {
		return err
	}
	limits := etcdkit.NewKey(c, "watch/limits", etcdkit.JSON[Limits]())
	theirs := etcdkit.NewKey(other, "watch/limits", etcdkit.JSON[Limits]())
	if _, err := theirs.Put(ctx, Limits{MaxConns: 100, Mode: "lenient"}); err != nil {
		return err
	}

	w := limits.Watch(ctx, etcdkit.WithInitial())
	defer w.Close()
	e, err := nextEvent(ctx, w)
	if err != nil {
		return err
	}
	tr.say("Watch with WithInitial delivers the current value first: %+v (revision %d, Initial=%v), then every change after it.",
		e.Value, e.Revision, e.Initial)

	if !tr.faults() {
		rev, err := theirs.Put(ctx, Limits{MaxConns: 200, Mode: "lenient"})
		if err != nil {
			return err
		}
		if e, err = nextEvent(ctx, w); err != nil {
			return err
		}
		tr.say("Another client writes at revision %d; the watch delivers %+v at revision %d.", rev, e.Value, e.Revision)
		tr.say("Against a real cluster the tour cuts no link. When one goes silent, the watch notices within a few seconds")
		tr.say("(not gRPC's 10s keepalive floor), moves to another member and resumes after the last revision it delivered;")
		tr.say("if that history was compacted meanwhile it re-reads and sends Resync events, deletions included.")
		return nil
	}
	proxies := func(f func(p *proxy.Proxy)) {
		for _, m := range tr.cluster.Members() {
			f(m.Proxy())
		}
	}

	// A silent link: every byte to and from the cluster is dropped, no
	// connection is closed. A raw etcd watch would just go quiet.
	if err := waitState(ctx, w.State, etcdkit.WatchConnected); err != nil {
		return err
	}
	tr.say("Fault: blackholing every member's proxy. The watch's link goes silent: no error, no close, nothing.")
	cut := time.Now()
	proxies(func(p *proxy.Proxy) { p.Blackhole(proxy.Both) })
	if err := waitState(ctx, w.State, etcdkit.WatchSuspended); err != nil {
		return err
	}
	tr.say("The watch noticed in %v (it asked for a progress notification that never came) and is %v.",
		time.Since(cut).Round(100*time.Millisecond), w.State())
	rev, err := theirs.Put(ctx, Limits{MaxConns: 250, Mode: "strict"})
	if err != nil {
		return err
	}
	tr.say("Meanwhile another client, whose link is fine, writes {MaxConns:250 Mode:strict} at revision %d.", rev)
	proxies(func(p *proxy.Proxy) { p.Unblackhole() })
	healed := time.Now()
	if e, err = nextEvent(ctx, w); err != nil {
		return err
	}
	tr.say("Heal. %v later the change arrives: %+v at revision %d.", time.Since(healed).Round(time.Millisecond), e.Value, e.Revision)
	if e, err = nextEventWithin(w, time.Second); err == nil {
		return fmt.Errorf("a second event arrived: %+v", e)
	}
	tr.say("And only once: nothing else arrives, though the watch re-connected under the hood.")

	// A compaction while cut off: the revisions the watch needs are gone.
	flags := etcdkit.NewPrefix(c, "watch/flags", etcdkit.String())
	theirFlags := etcdkit.NewPrefix(other, "watch/flags", etcdkit.String())
	for _, name := range []string{"dark-mode", "beta", "legacy"} {
		if _, err := theirFlags.Key(name).Put(ctx, "on"); err != nil {
			return err
		}
	}
	fw := flags.Watch(ctx, etcdkit.WithInitial())
	defer fw.Close()
	for range 3 {
		if _, err := nextEvent(ctx, fw); err != nil {
			return err
		}
	}
	if err := waitState(ctx, fw.State, etcdkit.WatchConnected); err != nil {
		return err
	}
	tr.say("A second watch follows the prefix watch/flags, which holds dark-mode, beta and legacy.")
	tr.say("Fault: stopping every member's proxy (connections closed, dials refused) while the flags change and the history is compacted.")
	proxies(func(p *proxy.Proxy) { p.Stop() })
	if err := waitState(ctx, fw.State, etcdkit.WatchSuspended); err != nil {
		return err
	}
	if _, err := theirFlags.Key("beta").Put(ctx, "off"); err != nil {
		return err
	}
	if _, err := theirFlags.Key("beta").Put(ctx, "on for 10%"); err != nil {
		return err
	}
	if err := theirFlags.Key("legacy").Delete(ctx); err != nil {
		return err
	}
	rev, err = theirFlags.Key("search-v2").Put(ctx, "on")
	if err != nil {
		return err
	}
	if _, err := other.Raw().Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return err
	}
	tr.say("Compacted at revision %d: a raw etcd watch would now fail with \"required revision has been compacted\".", rev)
	for _, m := range tr.cluster.Members() {
		if err := m.Proxy().Start(); err != nil {
			return err
		}
	}
	tr.say("Heal. The watch re-reads the prefix and sends what changed, flagged Resync:")
	for range 3 {
		e, err := nextEvent(ctx, fw)
		if err != nil {
			return err
		}
		if e.Type == etcdkit.Delete {
			tr.say("  %v %s (Resync=%v, gone by revision %d)", e.Type, e.Name, e.Resync, e.Revision)
		} else {
			tr.say("  %v %s = %q (Resync=%v, revision %d)", e.Type, e.Name, e.Value, e.Resync, e.Revision)
		}
	}
	tr.say("dark-mode did not change, so it is not repeated; beta's intermediate \"off\" is gone from history, its current value is not.")
	return nil
}

// nextEvent returns the watch's next event.
func nextEvent[T any](ctx context.Context, w *etcdkit.Watch[T]) (etcdkit.Event[T], error) {
	select {
	case e, ok := <-w.Events():
		if !ok {
			return e, fmt.Errorf("watch ended: %w", w.Err())
		}
		return e, e.Err
	case <-time.After(watchWait):
		return etcdkit.Event[T]{}, fmt.Errorf("no event within %v", watchWait)
	case <-ctx.Done():
		return etcdkit.Event[T]{}, ctx.Err()
	}
}

// nextEventWithin returns the next event if one arrives within d.
func nextEventWithin[T any](w *etcdkit.Watch[T], d time.Duration) (etcdkit.Event[T], error) {
	select {
	case e, ok := <-w.Events():
		if !ok {
			return e, fmt.Errorf("watch ended: %w", w.Err())
		}
		return e, nil
	case <-time.After(d):
		return etcdkit.Event[T]{}, fmt.Errorf("no event within %v", d)
	}
}

// waitState waits until state reports want.
func waitState(ctx context.Context, state func() etcdkit.WatchState, want etcdkit.WatchState) error {
	deadline := time.Now().Add(watchWait)
	for state() != want {
		if time.Now().After(deadline) {
			return fmt.Errorf("watch state %v, want %v after %v", state(), want, watchWait)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
