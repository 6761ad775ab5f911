package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// failingCodec refuses to encode negative numbers.
type failingCodec struct{}

func (failingCodec) Encode(v int) ([]byte, error) {
	if v < 0 {
		return nil, errors.New("negative")
	}
	return fmt.Appendf(nil, "%d", v), nil
}

func (failingCodec) Decode(b []byte) (int, error) {
	var v int
	_, err := fmt.Sscanf(string(b), "%d", &v)
	return v, err
}

// Writers race to increment a counter with If(IfRevision)/Then(put)/
// Else(put their count of losses): every commit either wins or reports the
// comparison that failed, and the final values add up exactly.
func TestTxnIfThenElseAgainstConcurrentWriters(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "tx")
	counter := etcdkit.NewKey(c, "counter", etcdkit.JSON[int]())
	const writers, rounds = 4, 15
	wins := make([]int, writers)
	losses := make([]int, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		lostKey := etcdkit.NewKey(c, fmt.Sprint("lost/", w), etcdkit.JSON[int]())
		wg.Go(func() {
			ctx := testContext(t, elWait)
			for range rounds {
				cur, err := counter.Get(ctx)
				if errors.Is(err, etcdkit.ErrNotFound) {
					cur = etcdkit.Value[int]{}
				} else if err != nil {
					errs <- err
					return
				}
				res, err := etcdkit.NewTxn(c).
					If(counter.IfRevision(cur.Revision)).
					Then(counter.OpPut(cur.Data + 1)).
					Else(lostKey.OpPut(losses[w] + 1)).
					Commit(ctx)
				if err == nil {
					wins[w]++
					continue
				}
				cf, ok := etcdkit.AsConflict(err)
				if !ok || !errors.Is(err, etcdkit.ErrConflict) || res.Succeeded || res.Revision == 0 ||
					cf.Key != "counter" || cf.Expected != cur.Revision || cf.ModRevision <= cur.Revision {
					errs <- fmt.Errorf("want a conflict on counter expecting %d, got %+v, %+v, %w", cur.Revision, res, cf, err)
					return
				}
				losses[w]++
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	total := 0
	for w := range writers {
		total += wins[w]
		if losses[w] > 0 {
			v, err := etcdkit.NewKey(c, fmt.Sprint("lost/", w), etcdkit.JSON[int]()).Get(testContext(t, elWait))
			require.NoError(t, err)
			assert.Equal(t, losses[w], v.Data, "writer %d's Else branch", w)
		}
	}
	v, err := counter.Get(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, total, v.Data)
	t.Logf("wins %v, losses %v", wins, losses)
}

func TestTxnConflictNamesTheComparison(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "tx")
	ctx := testContext(t, elWait)
	a := etcdkit.NewKey(c, "a", etcdkit.String())
	b := etcdkit.NewKey(c, "b", etcdkit.JSON[int]())
	revA, err := a.Put(ctx, "x")
	require.NoError(t, err)
	revB, err := b.Put(ctx, 7)
	require.NoError(t, err)

	res, err := etcdkit.NewTxn(c).If(a.IfRevision(revA), b.IfAbsent()).Then(a.OpPut("y")).Commit(ctx)
	require.ErrorIs(t, err, etcdkit.ErrExists)
	assert.False(t, res.Succeeded)
	assert.ErrorContains(t, err, `condition 2 of 2 ("b" is absent) failed`)
	var ce *etcdkit.ConflictError[int]
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "b", ce.Key)
	assert.Equal(t, 7, ce.Current.Data)
	assert.Equal(t, revB, ce.Current.Revision)

	res, err = etcdkit.NewTxn(c).If(a.IfRevision(revA-1), b.IfRevision(revB)).Then(a.OpPut("y")).Else(b.OpPut(8)).Commit(ctx)
	require.ErrorIs(t, err, etcdkit.ErrConflict)
	assert.ErrorContains(t, err, "condition 1 of 2")
	cf, ok := etcdkit.AsConflict(err)
	require.True(t, ok)
	assert.Equal(t, etcdkit.Conflict{Key: "a", Expected: revA - 1, Exists: true, ModRevision: revA, CreateRevision: revA,
		Version: 1, Revision: res.Revision - 1}, cf, "as the key stood before the Else branch applied")
	vb, err := b.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, 8, vb.Data, "the Else branch applied")
	assert.Equal(t, res.Revision, vb.Revision)

	res, err = etcdkit.NewTxn(c).If(a.IfRevision(revA), b.IfRevision(vb.Revision)).Then(a.OpPut("y"), b.OpDelete()).Commit(ctx)
	require.NoError(t, err)
	assert.True(t, res.Succeeded)
	_, err = b.Get(ctx)
	assert.ErrorIs(t, err, etcdkit.ErrNotFound)
	va, err := a.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, etcdkit.Value[string]{Data: "y", Revision: res.Revision, CreateRevision: revA, Version: 2}, va)
}

// Bad transactions fail before anything is sent, never with a panic.
func TestTxnRefusedBeforeSending(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "tx")
	other := testClient(t, []string{srv.Endpoint()}, "tx")
	ctx := testContext(t, elWait)
	k := etcdkit.NewKey(c, "k", failingCodec{})
	big := etcdkit.NewKey(c, "big", etcdkit.String())
	bad := etcdkit.NewKey(c, "../x", etcdkit.String())
	many := make([]etcdkit.Op, 129)
	for i := range many {
		many[i] = etcdkit.NewKey(c, fmt.Sprint("m/", i), etcdkit.String()).OpDelete()
	}
	half := strings.Repeat("x", etcdkit.DefaultMaxValueSize/2+1)
	for _, tc := range []struct {
		name string
		txn  *etcdkit.Txn
		want error
		text string
	}{
		{"encode error", etcdkit.NewTxn(c).Then(k.OpPut(-1)), nil, `encode "k": negative`},
		{"too large value", etcdkit.NewTxn(c).Then(big.OpPut(strings.Repeat("x", etcdkit.DefaultMaxValueSize+1))), etcdkit.ErrTooLarge, ""},
		{"too large in sum", etcdkit.NewTxn(c).Then(big.OpPut(half)).Else(k.OpPut(0), big.OpPut(half)), etcdkit.ErrTooLarge, "add up to"},
		{"too many ops", etcdkit.NewTxn(c).Then(many...), etcdkit.ErrTooLarge, "etcd's limit is 128"},
		{"invalid key", etcdkit.NewTxn(c).If(bad.IfAbsent()), etcdkit.ErrInvalidName, ""},
		{"zero op", etcdkit.NewTxn(c).Then(etcdkit.Op{}), nil, "zero Op"},
		{"zero cond", etcdkit.NewTxn(c).If(etcdkit.Cond{}), nil, "zero Cond"},
		{"other client", etcdkit.NewTxn(other).Then(k.OpPut(1)), nil, "another Client"},
		{"nil client", etcdkit.NewTxn(nil), nil, "nil client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.txn.Commit(ctx)
			require.Error(t, err)
			if tc.want != nil {
				assert.ErrorIs(t, err, tc.want)
			}
			assert.ErrorContains(t, err, tc.text)
		})
	}
	_, err := k.Get(ctx)
	assert.ErrorIs(t, err, etcdkit.ErrNotFound, "nothing was written")
}

// Eight writers move units between four keys; each move reads two keys and
// writes both. The sum stays exactly what it was.
func TestUpdateKeysKeepsTheSum(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "tx")
	ctx := testContext(t, 60*time.Second)
	const accounts, writers, moves, start = 4, 8, 10, 100
	keys := make([]*etcdkit.Key[int], accounts)
	for i := range keys {
		keys[i] = etcdkit.NewKey(c, fmt.Sprint("acct/", i), etcdkit.JSON[int]())
		_, err := keys[i].Put(ctx, start)
		require.NoError(t, err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for m := range moves {
				from, to := keys[(w+m)%accounts], keys[(w+m+1+w%3)%accounts]
				_, err := etcdkit.UpdateKeys(ctx, c, func(ctx context.Context, tx *etcdkit.Tx) error {
					a, _, err := from.GetIn(ctx, tx)
					if err != nil {
						return err
					}
					b, _, err := to.GetIn(ctx, tx)
					if err != nil {
						return err
					}
					tx.Write(from.OpPut(a.Data-1-w), to.OpPut(b.Data+1+w))
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	sum := 0
	for _, k := range keys {
		v, err := k.Get(ctx)
		require.NoError(t, err)
		sum += v.Data
	}
	assert.Equal(t, accounts*start, sum)
}

func TestUpdateKeysDecodeErrorNamesTheKey(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "tx")
	ctx := testContext(t, elWait)
	good := etcdkit.NewKey(c, "good", etcdkit.JSON[int]())
	_, err := good.Put(ctx, 1)
	require.NoError(t, err)
	_, err = etcdkit.NewKey(c, "garbled", etcdkit.String()).Put(ctx, "{not json")
	require.NoError(t, err)
	garbled := etcdkit.NewKey(c, "garbled", etcdkit.JSON[int]())
	calls := 0
	_, err = etcdkit.UpdateKeys(ctx, c, func(ctx context.Context, tx *etcdkit.Tx) error {
		calls++
		if _, _, err := good.GetIn(ctx, tx); err != nil {
			return err
		}
		_, _, err := garbled.GetIn(ctx, tx)
		return err
	})
	var de *etcdkit.DecodeError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "garbled", de.Key)
	assert.Equal(t, 1, calls)
	_, err = etcdkit.UpdateKeys(ctx, c, nil)
	assert.ErrorContains(t, err, "nil function")
	_, err = etcdkit.UpdateKeys(ctx, nil, func(context.Context, *etcdkit.Tx) error { return nil })
	assert.ErrorContains(t, err, "nil client")
}

// Guarded transactions and updates apply while the lock holds, and are
// refused, applying nothing, once it was released.
func TestGuardedTxnUnderLock(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "tx")
	ctx := testContext(t, elWait)
	result := etcdkit.NewKey(c, "result", etcdkit.String())
	history := etcdkit.NewKey(c, "history/1", etcdkit.String())
	lk := mxLock(t, etcdkit.NewMutex(c, "migration", 2*time.Second))

	res, err := etcdkit.GuardedTxn(lk).If(result.IfAbsent()).Then(result.OpPut("done"), history.OpPut("v1")).Commit(ctx)
	require.NoError(t, err)
	assert.True(t, res.Succeeded)
	res, err = etcdkit.GuardedTxn(lk).If(result.IfAbsent()).Then(result.OpPut("again")).Commit(ctx)
	require.ErrorIs(t, err, etcdkit.ErrExists, "the user's condition, not the fence, failed")
	assert.NotErrorIs(t, err, etcdkit.ErrNotHeld)
	assert.False(t, res.Succeeded)

	n := etcdkit.NewKey(c, "n", etcdkit.JSON[int]())
	rev, err := etcdkit.GuardedUpdateKeys(ctx, lk, func(ctx context.Context, tx *etcdkit.Tx) error {
		v, _, err := n.GetIn(ctx, tx)
		tx.Write(n.OpPut(v.Data + 1))
		return err
	})
	require.NoError(t, err)
	v, err := n.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, etcdkit.Value[int]{Data: 1, Revision: rev, CreateRevision: rev, Version: 1}, v)

	require.NoError(t, lk.Unlock(ctx))
	_, err = etcdkit.GuardedTxn(lk).Then(result.OpPut("late")).Commit(ctx)
	require.ErrorIs(t, err, etcdkit.ErrNotHeld)
	_, err = etcdkit.GuardedUpdateKeys(ctx, lk, func(ctx context.Context, tx *etcdkit.Tx) error {
		tx.Write(n.OpPut(100))
		return nil
	})
	require.ErrorIs(t, err, etcdkit.ErrNotHeld)
	vr, err := result.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, "done", vr.Data)
	v, err = n.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, v.Data)
}
