package robustness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/etcdkit/etcdkit"
)

// EphemeralPrefix is the prefix, under a schedule's namespace, of the
// ephemeral keys.
const EphemeralPrefix = "eph"

// Watchers is the workload of Key and Prefix subscribers over the data
// keys (and sometimes the ephemeral keys): a few clients, each with a few
// watches (which the client's hub shares), starting now, after a past
// revision or with the initial state, some with small buffers and slow
// readers so that they are unhooked and catch up on their own. Every event
// received is recorded.
type Watchers struct {
	clients []*etcdkit.Client
	subs    subscribers
	once    sync.Once
}

// subscribers are watches whose events are being recorded.
type subscribers []*watcher

// watcher is one subscriber and the goroutine reading it.
type watcher struct {
	rec     *Subscriber
	w       *etcdkit.Watch[string]
	closing atomic.Bool
	done    chan struct{}
}

// add registers a watch and starts recording its events; toKey turns event
// names into names relative to the namespace, and slow is the reader's
// pause after each event.
func (ss *subscribers) add(run *Run, rec *Subscriber, w *etcdkit.Watch[string], toKey func(string) string, slow time.Duration) {
	sw := &watcher{rec: rec, w: w, done: make(chan struct{})}
	*ss = append(*ss, sw)
	run.Rec.Subscriber(rec)
	go sw.read(run.Rec, toKey, slow)
}

// read records every event until the watch ends.
func (sw *watcher) read(rec *Recorder, toKey func(string) string, slow time.Duration) {
	defer close(sw.done)
	for e := range sw.w.Events() {
		sw.rec.add(Delivery{At: rec.Now(), Type: e.Type, Key: toKey(e.Name), Value: e.Value, Rev: e.Revision,
			Initial: e.Initial, Resync: e.Resync})
		if slow > 0 {
			// The reader's pace, part of the workload's definition.
			time.Sleep(slow)
		}
	}
	if !sw.closing.Load() {
		sw.rec.mu.Lock()
		if err := sw.w.Err(); errors.Is(err, etcdkit.ErrCompacted) {
			sw.rec.Compacted, sw.rec.CompactedAt = err.Error(), rec.Now()
		} else {
			sw.rec.Ended = fmt.Sprintf("the watch ended by itself before the run closed it: %v", err)
		}
		sw.rec.mu.Unlock()
	}
}

// waitSynced waits until the watch's start is fixed, then records as its
// start the current revision: every change above it must be delivered.
func (sw *watcher) waitSynced(ctx context.Context, run *Run) error {
	timer := time.NewTimer(SettleTimeout)
	defer timer.Stop()
	select {
	case <-sw.w.Synced():
	case <-timer.C:
		return fmt.Errorf("%s: Synced not closed after %v (watch state %v)", sw.rec.Name, SettleTimeout, sw.w.State())
	case <-ctx.Done():
		return ctx.Err()
	}
	var rev int64
	err := run.StartStep(ctx, sw.rec.Name+": read the revision", func() (err error) {
		rev, err = run.Rev(ctx)
		return err
	})
	sw.rec.mu.Lock()
	sw.rec.After = rev
	sw.rec.mu.Unlock()
	return err
}

// converge waits until every subscriber has received the last change in
// its scope up to the settled revision, a sentinel put for the data keys
// (see Writers), and marks those that have not by the end of ctx.
func (ss subscribers) converge(ctx context.Context, run *Run, who string) {
	changes := run.Changes()
	for _, sw := range ss {
		hs := scoped(changes, sw.rec.Scope, sw.rec.Prefix)
		if len(hs) == 0 {
			continue
		}
		target := hs[len(hs)-1].Rev
		if waitFor(ctx, func() bool { return sw.rec.lastRev() >= target }, sw.done) {
			run.Rec.Note(who, "%s caught up with revision %d (%d events)", sw.rec.Name, target, len(sw.rec.Events))
			continue
		}
		sw.rec.mu.Lock()
		if sw.rec.Compacted != "" {
			// Ended explicitly; checkSubscriber judges whether it could.
			sw.rec.mu.Unlock()
			continue
		}
		sw.rec.Stuck = fmt.Sprintf("its last event is at revision %d, the last change in scope at %d; the watch is %v",
			sw.rec.lastRevLocked(), target, sw.w.State())
		sw.rec.mu.Unlock()
	}
}

// close closes every watch and waits for its reader; a watch that then
// does not say it was closed is marked.
func (ss subscribers) close() {
	for _, sw := range ss {
		sw.closing.Store(true)
		_ = sw.w.Close()
		<-sw.done
		sw.rec.mu.Lock()
		if err := sw.w.Err(); sw.rec.Ended == "" && !errors.Is(err, etcdkit.ErrClosed) {
			sw.rec.Ended = fmt.Sprintf("closed by the run, the watch's Err is %v, want etcdkit.ErrClosed", err)
		}
		sw.rec.mu.Unlock()
	}
}

// Name returns "watchers".
func (ws *Watchers) Name() string { return "watchers" }

// Start makes the subscribers and returns once each is ready.
func (ws *Watchers) Start(ctx context.Context, run *Run) error {
	rng := run.Rand("watchers")
	nc := 1 + rng.IntN(2)
	for i := range nc {
		c, err := run.Client(ctx, ClientOptions{Name: fmt.Sprintf("wc%d", i), Members: rotate(rng.IntN(3) + i),
			StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
		if err != nil {
			return err
		}
		ws.clients = append(ws.clients, c)
	}
	n := 2 + rng.IntN(4)
	for i := range n {
		c := ws.clients[rng.IntN(nc)]
		rec := &Subscriber{Start: StartMode(1 + rng.IntN(3))}
		var opts []etcdkit.WatchOption
		small := rng.Chance(0.3)
		if small {
			opts = append(opts, etcdkit.WithBufferSize(4+rng.IntN(29)))
		}
		var slow time.Duration
		if rng.Chance(0.25) {
			slow = rng.Duration(time.Millisecond, 8*time.Millisecond)
		}
		var rev int64
		if err := run.StartStep(ctx, "read the revision", func() (err error) {
			rev, err = run.Rev(ctx)
			return err
		}); err != nil {
			return err
		}
		switch rec.Start {
		case StartNow:
			rec.Before = rev
		case StartAfter:
			start := run.Rec.History().StartRev
			rec.After = start + rng.Int64N(rev-start+1)
			opts = append(opts, etcdkit.AfterRevision(rec.After))
		case StartInitial:
			rec.After = rev
			opts = append(opts, etcdkit.WithInitial())
		}
		var w *etcdkit.Watch[string]
		var toKey func(string) string
		kind := ""
		switch p := rng.IntN(10); {
		case p < 4:
			k := etcdkit.NewKey(c, dataKey(rng.IntN(2)), etcdkit.String())
			rec.Scope, kind = k.Name(), "key"
			toKey = func(name string) string { return name }
			w = k.Watch(ctx, opts...)
		default:
			name := DataPrefix
			if p == 9 {
				name = EphemeralPrefix
			}
			pr := etcdkit.NewPrefix(c, name, etcdkit.String())
			rec.Scope, rec.Prefix, kind = name+"/", true, "prefix"
			toKey = func(n string) string { return name + "/" + n }
			w = pr.Watch(ctx, opts...)
		}
		rec.Name = fmt.Sprintf("s%d %s %s %v", i, kind, rec.Scope, rec.Start)
		if small {
			rec.Name += " small-buffer"
		}
		if slow > 0 {
			rec.Name += " slow"
		}
		ws.subs.add(run, rec, w, toKey, slow)
		if rec.Start == StartNow {
			if err := ws.subs[len(ws.subs)-1].waitSynced(ctx, run); err != nil {
				return err
			}
		}
	}
	return nil
}

// Quiesce does nothing: subscribers only read.
func (ws *Watchers) Quiesce(*Run) {}

// Settle does nothing.
func (ws *Watchers) Settle(context.Context, *Run) error { return nil }

// Converge waits until every subscriber has caught up with the settled
// revision.
func (ws *Watchers) Converge(ctx context.Context, run *Run) { ws.subs.converge(ctx, run, "watchers") }

// Close closes the subscribers and their clients.
func (ws *Watchers) Close() {
	ws.once.Do(func() {
		ws.subs.close()
		for _, c := range ws.clients {
			_ = c.Close()
		}
	})
}

// waitFor polls cond until it holds, ctx ends or stop is closed, and
// reports whether it held.
func waitFor(ctx context.Context, cond func() bool, stop <-chan struct{}) bool {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-t.C:
		case <-stop:
			return cond()
		case <-ctx.Done():
			return cond()
		}
	}
}
