package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/etcdkit/etcdkit"
)

func ExampleMutex() {
	c, stop := exampleClient("jobs")
	defer stop()
	ctx := context.Background()

	m := etcdkit.NewMutex(c, "schema-migration", 2*time.Second, etcdkit.WithHolderID("instance-1"))
	lk, err := m.Lock(ctx)
	if err != nil {
		log.Fatal(err)
	}
	// Another instance cannot take it meanwhile.
	_, err = etcdkit.NewMutex(c, "schema-migration", 2*time.Second, etcdkit.WithHolderID("instance-2")).TryLock(ctx)
	var he *etcdkit.HeldError
	if errors.As(err, &he) {
		fmt.Println("TryLock:", errors.Is(err, etcdkit.ErrLocked), "held by", he.Holders[0].ID)
	}

	// The result and the history entry land together, and only while the
	// lock holds.
	result := etcdkit.NewKey(c, "migration/result", etcdkit.String())
	history := etcdkit.NewKey(c, "migration/history/1", etcdkit.String())
	res, err := etcdkit.GuardedTxn(lk).
		If(result.IfAbsent()).
		Then(result.OpPut("version 2"), history.OpPut("migrated by instance-1")).
		Commit(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("migrated:", res.Succeeded)

	if err := lk.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = etcdkit.GuardedPut(ctx, lk, result, "late")
	fmt.Println("after Unlock:", errors.Is(err, etcdkit.ErrNotHeld))
	// Output:
	// TryLock: true held by instance-1
	// migrated: true
	// after Unlock: true
}

func ExampleUpdateKeys() {
	c, stop := exampleClient("bank")
	defer stop()
	ctx := context.Background()

	alice := etcdkit.NewKey(c, "accounts/alice", etcdkit.JSON[int]())
	bob := etcdkit.NewKey(c, "accounts/bob", etcdkit.JSON[int]())
	if _, err := alice.Put(ctx, 100); err != nil {
		log.Fatal(err)
	}
	// Move 30 from alice to bob: both read at one revision, both written
	// in one transaction, retried if either changed meanwhile.
	_, err := etcdkit.UpdateKeys(ctx, c, func(ctx context.Context, tx *etcdkit.Tx) error {
		a, _, err := alice.GetIn(ctx, tx)
		if err != nil {
			return err
		}
		b, _, err := bob.GetIn(ctx, tx)
		if err != nil {
			return err
		}
		tx.Write(alice.OpPut(a.Data-30), bob.OpPut(b.Data+30))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	a, _ := alice.Get(ctx)
	b, _ := bob.Get(ctx)
	fmt.Println(a.Data, b.Data)
	// Output: 70 30
}
