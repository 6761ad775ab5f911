package robustness

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/etcdkit/etcdkit"
)

// Watchers is the workload of Key and Prefix subscribers over the data
// keys: a few clients, each with a few watches (which the client's hub
// shares), starting now, after a past revision or with the initial state,
// some with tiny buffers and slow readers so that they are unhooked and
// catch up on their own. Every event received is recorded.
type Watchers struct {
	clients []*etcdkit.Client
	subs    []*watcher
	once    sync.Once
}

// watcher is one subscriber and the goroutine reading it.
type watcher struct {
	rec     *Subscriber
	w       *etcdkit.Watch[string]
	closing atomic.Bool
	done    chan struct{}
}

// Name returns "watchers".
func (ws *Watchers) Name() string { return "watchers" }

// Start makes the subscribers and returns once each is ready.
func (ws *Watchers) Start(ctx context.Context, run *Run) error {
	rng := run.Rand("watchers")
	nc := 1 + rng.IntN(2)
	for i := range nc {
		c, err := run.Client(ctx, ClientOptions{Name: fmt.Sprintf("wc%d", i), Members: rotate(rng.IntN(3) + i), StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
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
		rev, err := run.Rev(ctx)
		if err != nil {
			return err
		}
		switch rec.Start {
		case StartAfter:
			rec.After = run.Rec.History().StartRev + rng.Int64N(rev-run.Rec.History().StartRev+1)
			opts = append(opts, etcdkit.AfterRevision(rec.After))
		case StartInitial:
			rec.After = rev
			opts = append(opts, etcdkit.WithInitial())
		}
		var w *etcdkit.Watch[string]
		var toKey func(string) string
		if rng.Chance(0.4) {
			k := etcdkit.NewKey(c, dataKey(rng.IntN(2)), etcdkit.String())
			rec.Scope = k.Name()
			toKey = func(name string) string { return name }
			w = k.Watch(ctx, opts...)
		} else {
			p := etcdkit.NewPrefix(c, DataPrefix, etcdkit.String())
			rec.Scope, rec.Prefix = DataPrefix+"/", true
			toKey = func(name string) string { return DataPrefix + "/" + name }
			w = p.Watch(ctx, opts...)
		}
		kind := "key " + rec.Scope
		if rec.Prefix {
			kind = "prefix " + rec.Scope
		}
		rec.Name = fmt.Sprintf("s%d %s %v", i, kind, rec.Start)
		if small {
			rec.Name += " small-buffer"
		}
		if slow > 0 {
			rec.Name += " slow"
		}
		sw := &watcher{rec: rec, w: w, done: make(chan struct{})}
		ws.subs = append(ws.subs, sw)
		run.Rec.Subscriber(rec)
		go sw.read(run.Rec, toKey, slow)
		if rec.Start == StartNow {
			timer := time.NewTimer(SettleTimeout)
			select {
			case <-w.Ready():
				timer.Stop()
			case <-timer.C:
				return fmt.Errorf("%s: Ready not closed after %v (watch state %v)", rec.Name, SettleTimeout, w.State())
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			}
			if rec.After, err = run.Rev(ctx); err != nil {
				return err
			}
		}
	}
	return nil
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
		sw.rec.Ended = fmt.Sprint(sw.w.Err())
		sw.rec.mu.Unlock()
	}
}

// Quiesce does nothing: subscribers only read.
func (ws *Watchers) Quiesce(*Run) {}

// Settle does nothing.
func (ws *Watchers) Settle(context.Context, *Run) error { return nil }

// Converge waits until every subscriber has received the last change in
// its scope, which is a sentinel put (see Writers). Run.Changes ends at the
// settled revision when Converge is called.
func (ws *Watchers) Converge(ctx context.Context, run *Run) {
	changes := run.Changes()
	for _, sw := range ws.subs {
		hs := scoped(changes, sw.rec.Scope, sw.rec.Prefix)
		if len(hs) == 0 {
			continue
		}
		target := hs[len(hs)-1].Rev
		if waitFor(ctx, func() bool { return sw.rec.lastRev() >= target }, sw.done) {
			run.Rec.Note("watchers", "%s caught up with revision %d (%d events)", sw.rec.Name, target, len(sw.rec.Events))
		} else {
			sw.rec.mu.Lock()
			sw.rec.Stuck = fmt.Sprintf("its last event is at revision %d, the last change in scope at %d; the watch is %v",
				sw.rec.lastRevLocked(), target, sw.w.State())
			sw.rec.mu.Unlock()
		}
	}
}

// Close closes the subscribers and their clients.
func (ws *Watchers) Close() {
	ws.once.Do(func() {
		for _, sw := range ws.subs {
			sw.closing.Store(true)
			_ = sw.w.Close()
			<-sw.done
		}
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
