package main

import (
	"context"
	"fmt"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/proxy"
)

func init() {
	register(30, "Ephemeral keys: an announcement that vanishes with its owner's link and comes back with it", leaseChapter)
}

// leaseWait bounds each wait for an event or a state in the chapter.
const leaseWait = 30 * time.Second

// Announcement is what a service instance publishes about itself.
type Announcement struct {
	Addr    string `json:"addr"`
	Version string `json:"version"`
}

func leaseChapter(ctx context.Context, tr *tour) error {
	const ttl = 3 * time.Second
	owner, err := tr.client(ctx)
	if err != nil {
		return err
	}
	other, err := tr.directClient(ctx)
	if err != nil {
		return err
	}
	mine := etcdkit.NewKey(owner, "lease/services/api-1", etcdkit.JSON[Announcement]())
	theirs := etcdkit.NewKey(other, "lease/services/api-1", etcdkit.JSON[Announcement]())

	e, err := etcdkit.NewEphemeral(ctx, mine, Announcement{Addr: "10.0.0.7:8080", Version: "v1"}, ttl)
	if err != nil {
		return err
	}
	defer e.Close()
	tr.say("Instance api-1 announces itself with NewEphemeral: its address under a %v lease of its own,", ttl)
	tr.say("refreshed every third of the TTL on one member's connection, each refresh bounded by a stall timeout.")

	w := theirs.Watch(ctx, etcdkit.WithInitial())
	defer w.Close()
	ev, err := leaseEvent(ctx, w)
	if err != nil {
		return err
	}
	tr.say("Another client, whose link is never cut, watches the key: %v %+v under lease %x.", ev.Type, ev.Value, ev.Lease)

	if err := theirs.Delete(ctx); err != nil {
		return err
	}
	if ev, err = leaseEvent(ctx, w); err != nil {
		return err
	}
	tr.say("It deletes the key (an operator cleaning up, a script gone wrong): the watcher sees %v.", ev.Type)
	if ev, err = leaseEvent(ctx, w); err != nil {
		return err
	}
	if _, err := leaseState(ctx, e.States(), etcdkit.SessionRestored); err != nil {
		return err
	}
	tr.say("The owner puts it straight back (%v %+v) and reports SessionRestored; a raw client's key would stay gone.", ev.Type, ev.Value)

	if !tr.faults() {
		tr.say("Against a real cluster the tour cuts no link. When the owner's link goes silent, the Ephemeral reports SessionSuspended")
		tr.say("within a keepalive interval, then SessionLost a margin before the server can expire the lease, so the owner knows")
		tr.say("first; when the link returns it takes a new lease, puts the key back and reports SessionRecovered.")
		return leaseClose(ctx, tr, e, w)
	}

	proxies := func(f func(p *proxy.Proxy)) {
		for _, m := range tr.cluster.Members() {
			f(m.Proxy())
		}
	}
	tr.say("Fault: blackholing every member's proxy. The owner's link goes silent: no error, no close, bytes just vanish.")
	cut := time.Now()
	proxies(func(p *proxy.Proxy) { p.Blackhole(proxy.Both) })
	suspended, err := leaseState(ctx, e.States(), etcdkit.SessionSuspended)
	if err != nil {
		return err
	}
	tr.say("%v later the owner is Suspended: a keepalive went unanswered, but the lease may still live. Remaining says",
		suspended.Sub(cut).Round(10*time.Millisecond))
	tr.say("the owner may rely on it for %v more; it retries on another member meanwhile.", e.Remaining().Round(10*time.Millisecond))
	lost, err := leaseState(ctx, e.States(), etcdkit.SessionLost)
	if err != nil {
		return err
	}
	tr.say("%v after the cut it is Lost: no keepalive got through for the TTL minus a safety margin, so the owner must",
		lost.Sub(cut).Round(10*time.Millisecond))
	tr.say("assume its key is gone, and stops advertising itself.")
	if ev, err = leaseEvent(ctx, w); err != nil {
		return err
	}
	vanished := time.Now()
	tr.say("%v after the cut the server expires the lease and the watcher sees %v: the owner knew %v earlier.",
		vanished.Sub(cut).Round(10*time.Millisecond), ev.Type, vanished.Sub(lost).Round(10*time.Millisecond))
	tr.say("(A raw concurrency.Session learns it only when its own TTL countdown runs out, often after the key is gone.)")

	tr.say("Heal: the proxies forward again.")
	proxies(func(p *proxy.Proxy) { p.Unblackhole() })
	healed := time.Now()
	if ev, err = leaseEvent(ctx, w); err != nil {
		return err
	}
	back := time.Now()
	if _, err := leaseState(ctx, e.States(), etcdkit.SessionRecovered); err != nil {
		return err
	}
	tr.say("%v later the key is back (%v %+v, new lease %x) and the owner reports SessionRecovered.",
		back.Sub(healed).Round(10*time.Millisecond), ev.Type, ev.Value, ev.Lease)
	return leaseClose(ctx, tr, e, w)
}

// leaseClose shows Update and Close, whose effects the watcher sees.
func leaseClose(ctx context.Context, tr *tour, e *etcdkit.Ephemeral[Announcement], w *etcdkit.Watch[Announcement]) error {
	if err := e.Update(ctx, Announcement{Addr: "10.0.0.7:8080", Version: "v2"}); err != nil {
		return err
	}
	ev, err := leaseEvent(ctx, w)
	if err != nil {
		return err
	}
	tr.say("Update changes the value and keeps the lease: %v %+v under lease %x.", ev.Type, ev.Value, ev.Lease)
	closed := time.Now()
	if err := e.Close(); err != nil {
		return err
	}
	if ev, err = leaseEvent(ctx, w); err != nil {
		return err
	}
	tr.say("Close revokes the lease, which deletes the key in the same step: the watcher sees %v %v later, not a TTL later.",
		ev.Type, time.Since(closed).Round(time.Millisecond))
	return nil
}

// leaseEvent returns the watch's next event.
func leaseEvent[T any](ctx context.Context, w *etcdkit.Watch[T]) (etcdkit.Event[T], error) {
	select {
	case e, ok := <-w.Events():
		if !ok {
			return e, fmt.Errorf("watch ended: %w", w.Err())
		}
		return e, e.Err
	case <-time.After(leaseWait):
		return etcdkit.Event[T]{}, fmt.Errorf("no event within %v", leaseWait)
	case <-ctx.Done():
		return etcdkit.Event[T]{}, ctx.Err()
	}
}

// leaseState reads states until want arrives and returns when it did.
func leaseState(ctx context.Context, states <-chan etcdkit.SessionState, want etcdkit.SessionState) (time.Time, error) {
	timeout := time.After(leaseWait)
	for {
		select {
		case st, ok := <-states:
			if !ok {
				return time.Time{}, fmt.Errorf("ephemeral ended before %v", want)
			}
			if st == want {
				return time.Now(), nil
			}
		case <-timeout:
			return time.Time{}, fmt.Errorf("no %v state within %v", want, leaseWait)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}
