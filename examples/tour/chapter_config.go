package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/etcdkit/etcdkit"
)

func init() {
	register(10, "Typed configuration: put, get, create-if-absent, CAS, update, namespaces", configChapter)
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
	return nil
}
