package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit"
)

func init() {
	register(10, "Typed configuration: put, get, create-if-absent, CAS, update, namespaces, Live values", configChapter)
}

// Limits is the typed configuration value the tour stores.
type Limits struct {
	MaxConns int    `json:"max_conns"`
	Mode     string `json:"mode"`
}

func configChapter(ctx context.Context, tr *tour) error {
	c, err := tr.client(ctx)
	if err != nil {
		return err
	}
	limits := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]())

	rev, err := limits.Put(ctx, Limits{MaxConns: 100, Mode: "lenient"})
	if err != nil {
		return err
	}
	tr.say("Put config/limits = {MaxConns:100 Mode:lenient} at revision %d (stored as JSON under namespace %q).", rev, tr.ns)

	v, err := limits.Get(ctx)
	if err != nil {
		return err
	}
	tr.say("Get returns the typed value %+v with its mod revision %d and version %d.", v.Data, v.Revision, v.Version)

	_, err = limits.Create(ctx, Limits{MaxConns: 1})
	if !errors.Is(err, etcdkit.ErrExists) {
		return fmt.Errorf("create on a present key: got %v, want ErrExists", err)
	}
	tr.say("Create refuses to overwrite: %v", err)

	// Two writers read the same revision; the first CAS wins, the second
	// learns the current value from the conflict itself.
	if _, err := limits.CompareAndSwap(ctx, Limits{MaxConns: 150, Mode: "lenient"}, v.Revision); err != nil {
		return err
	}
	tr.say("Writer A swaps MaxConns to 150, expecting revision %d: done.", v.Revision)
	_, err = limits.CompareAndSwap(ctx, Limits{MaxConns: 50, Mode: "strict"}, v.Revision)
	var conflict *etcdkit.ConflictError[Limits]
	if !errors.As(err, &conflict) {
		return fmt.Errorf("stale CAS: got %v, want a conflict", err)
	}
	tr.say("Writer B, expecting the same revision, gets a conflict carrying the current value %+v at revision %d: no lost update.",
		conflict.Current.Data, conflict.Current.Revision)

	updated, err := limits.Update(ctx, func(cur Limits, exists bool) (Limits, error) {
		cur.Mode = "strict"
		return cur, nil
	})
	if err != nil {
		return err
	}
	tr.say("Update does the read-modify-write loop for you: now %+v at revision %d.", updated.Data, updated.Revision)

	_, err = c.Raw().Put(ctx, tr.ns+"/config/broken", "{not json")
	if err != nil {
		return err
	}
	_, err = etcdkit.NewKey(c, "config/broken", etcdkit.JSON[Limits]()).Get(ctx)
	var de *etcdkit.DecodeError
	if !errors.As(err, &de) {
		return fmt.Errorf("garbage value: got %v, want a DecodeError", err)
	}
	tr.say("A value another tool wrote that does not decode is an error naming the key, not a panic: %v", err)

	_, err = etcdkit.NewKey(c, "../other-team/secrets", etcdkit.String()).Get(ctx)
	tr.say("Names cannot leave the namespace: %v", err)

	svc := etcdkit.NewPrefix(c, "services", etcdkit.String())
	for _, name := range []string{"billing", "auth", "search"} {
		if _, err := svc.Key(name).Put(ctx, "v1"); err != nil {
			return err
		}
	}
	if _, err := etcdkit.NewKey(c, "services2/lookalike", etcdkit.String()).Put(ctx, "x"); err != nil {
		return err
	}
	entries, listRev, err := svc.List(ctx)
	if err != nil {
		return err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name
	}
	tr.say("Prefix services lists %v at revision %d, sorted and relative; services2/lookalike is not under it.", names, listRev)
	return liveSection(ctx, tr, c)
}

// validLimits is the service's own rule for its configuration.
func validLimits(l Limits) error {
	if l.MaxConns <= 0 {
		return fmt.Errorf("max_conns %d must be positive", l.MaxConns)
	}
	return nil
}

// liveSection shows etcdkit.Live: the value a service reads on every
// request, which keeps its last good value when a bad one is written and
// starts from its snapshot while every member is down.
func liveSection(ctx context.Context, tr *tour, c *etcdkit.Client) error {
	dir, err := os.MkdirTemp("", "etcdkit-tour-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	snapshot := filepath.Join(dir, "limits.snapshot")
	key := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]())
	opts := []etcdkit.LiveOption[Limits]{etcdkit.WithDefault(Limits{MaxConns: 10, Mode: "lenient"}),
		etcdkit.WithValidator(validLimits), etcdkit.WithSnapshot[Limits](snapshot)}

	live := etcdkit.NewLive(ctx, key, opts...)
	defer live.Close()
	select {
	case <-live.Synced():
	case <-ctx.Done():
		return ctx.Err()
	}
	tr.say("Live follows config/limits: Get returns %+v without a request, cheap enough for every request.", live.Get())

	for _, bad := range []string{"{not json", `{"max_conns":-1,"mode":"strict"}`} {
		resp, err := c.Raw().Put(ctx, c.KeyPrefix()+"config/limits", bad)
		if err != nil {
			return err
		}
		if err := waitFor(ctx, func() bool { r, _ := live.Rejected(); return r.Revision == resp.Header.Revision }); err != nil {
			return err
		}
		r, _ := live.Rejected()
		tr.say("Someone writes %s: rejected (%v); Get keeps the last good value %+v.", bad, r.Err, live.Get())
	}
	rev, err := key.Put(ctx, Limits{MaxConns: 250, Mode: "strict"})
	if err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool { return live.Current().Revision == rev }); err != nil {
		return err
	}
	tr.say("The next good write is applied: %+v at revision %d, and written to the snapshot.", live.Get(), rev)
	_ = live.Close()

	// A service starting during an outage cannot wait for the cluster: its
	// client must not either (Wrap over a clientv3 client that dials in
	// the background).
	down := tr.endpoints
	if tr.faults() {
		for _, m := range tr.cluster.Members() {
			m.Stop()
		}
		tr.say("Every member of the cluster is stopped.")
	} else {
		down = []string{"127.0.0.1:1"}
		tr.say("(Against a real cluster, the outage is played by an endpoint where nothing listens.)")
	}
	raw, err := clientv3.New(clientv3.Config{Endpoints: down, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer raw.Close()
	cold, err := etcdkit.Wrap(raw, etcdkit.Config{Namespace: tr.ns})
	if err != nil {
		return err
	}
	defer cold.Close()
	start := time.Now()
	restarted := etcdkit.NewLive(ctx, etcdkit.NewKey(cold, "config/limits", etcdkit.JSON[Limits]()), opts...)
	defer restarted.Close()
	cur := restarted.Current()
	tr.say("A service starting now gets its Live back in %v, serving %+v from its %v (revision %d), Stale=%v.",
		time.Since(start).Round(time.Microsecond), cur.Data, cur.Source, cur.Revision, restarted.Stale())
	if !tr.faults() {
		return nil
	}
	for _, m := range tr.cluster.Members() {
		if err := m.Restart(); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, func() bool { return !restarted.Stale() }); err != nil {
		return err
	}
	tr.say("The members start again: the Live confirms the value with the cluster (now from the %v) and is no longer stale.",
		restarted.Current().Source)
	return nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
