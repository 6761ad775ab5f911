package robustness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// DataPrefix is the prefix, under a schedule's namespace, of the keys the
// writers write and the subscribers watch.
const DataPrefix = "data"

// dataKey returns the name of data key i.
func dataKey(i int) string { return fmt.Sprintf("%s/k%d", DataPrefix, i) }

// Writers is the workload of writers doing Put, CompareAndSwap, Update, Get
// and Delete on a few data keys, each writer through its own client on the
// proxied endpoints. Every call is recorded with its invoke and return
// times. A write that fails other than by a conflict is unknown when its
// error matches etcdkit.ErrUnknownOutcome, and failed (it did not apply, as
// the library says) otherwise; a failed read is unknown.
//
// Before the traffic starts, the first writer puts every key once, so that
// subscribers asking for the initial state see some. When the cluster has
// healed, it puts a sentinel value in every key, in order, so that every
// subscriber's last expected event is a put.
type Writers struct {
	run     *Run
	keys    int
	writers []*writer
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

type writer struct {
	id      int
	c       *etcdkit.Client
	keys    []*etcdkit.Key[string]
	rng     *RandSource
	timeout time.Duration
	seq     int
	// known is the last mod revision the writer saw per key (0: absent).
	known []int64
}

// Name returns "writers".
func (w *Writers) Name() string { return "writers" }

// Start connects the writers, writes every key once and starts the traffic.
func (w *Writers) Start(ctx context.Context, run *Run) error {
	w.run = run
	rng := run.Rand("writers")
	n := 2 + rng.IntN(2)
	w.keys = 2 + rng.IntN(2)
	for i := range n {
		c, err := run.Client(ctx, ClientOptions{Members: rotate(i), StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
		if err != nil {
			return err
		}
		wr := &writer{id: i, c: c, rng: run.Rand(fmt.Sprintf("writer %d", i)), known: make([]int64, w.keys),
			timeout: rng.Duration(300*time.Millisecond, 1500*time.Millisecond)}
		for k := range w.keys {
			wr.keys = append(wr.keys, etcdkit.NewKey(c, dataKey(k), etcdkit.String()))
		}
		w.writers = append(w.writers, wr)
	}
	for k := range w.keys {
		// Every attempt is recorded as a call, with its outcome.
		if err := run.StartStep(ctx, "first write of "+dataKey(k), func() error {
			_, err := w.writers[0].call(ctx, run.Rec, k, OpPut, 10*time.Second)
			return err
		}); err != nil {
			return err
		}
	}
	tctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	for _, wr := range w.writers {
		w.wg.Go(func() { wr.loop(tctx, run.Rec) })
	}
	return nil
}

// rotate returns the member order starting at member i.
func rotate(i int) []int { return []int{i % 3, (i + 1) % 3, (i + 2) % 3} }

// loop makes calls until ctx ends.
func (wr *writer) loop(ctx context.Context, rec *Recorder) {
	for ctx.Err() == nil {
		key := wr.rng.IntN(len(wr.keys))
		var kind OpKind
		switch p := wr.rng.IntN(100); {
		case p < 30:
			kind = OpPut
		case p < 55:
			kind = OpCAS
		case p < 75:
			kind = OpUpdate
		case p < 95:
			kind = OpGet
		default:
			kind = OpDelete
		}
		wr.call(ctx, rec, key, kind, wr.timeout)
		// The pace of the traffic, part of the workload's definition.
		time.Sleep(wr.rng.Duration(3*time.Millisecond, 25*time.Millisecond))
	}
}

// call makes one call, records it and returns the record and the call's
// error.
func (wr *writer) call(ctx context.Context, rec *Recorder, key int, kind OpKind, timeout time.Duration) (Op, error) {
	k := wr.keys[key]
	wr.seq++
	op := Op{Client: wr.id, Key: k.Name(), Kind: kind}
	if kind != OpGet && kind != OpDelete {
		op.Value = fmt.Sprintf("w%d.%d", wr.id, wr.seq)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	op.Invoke = rec.Now()
	var err error
	switch kind {
	case OpPut:
		op.Rev, err = k.Put(ctx, op.Value)
	case OpCAS:
		op.Expected = wr.known[key]
		switch p := wr.rng.IntN(10); {
		case p == 0 && op.Expected > 0:
			op.Expected-- // surely stale
		case p == 1:
			op.Expected = 0 // create
		}
		op.Rev, err = k.CompareAndSwap(ctx, op.Value, op.Expected)
	case OpUpdate:
		var v etcdkit.Value[string]
		v, err = k.Update(ctx, func(cur string, exists bool) (string, error) {
			return UpdateValue(op.Value, cur, exists), nil
		})
		op.Result, op.Rev = v.Data, v.Revision
	case OpGet:
		var v etcdkit.Value[string]
		v, err = k.Get(ctx)
		op.Found, op.Result, op.Rev = err == nil, v.Data, v.Revision
		if errors.Is(err, etcdkit.ErrNotFound) {
			err = nil
		}
	case OpDelete:
		err = k.Delete(ctx)
	}
	op.Return = rec.Now()
	var ce *etcdkit.ConflictError[string]
	switch {
	case err == nil:
		op.Outcome = OK
		switch {
		case kind == OpDelete:
			wr.known[key] = 0
		case kind == OpGet && !op.Found:
			wr.known[key] = 0
		default:
			wr.known[key] = op.Rev
		}
	case kind == OpCAS && errors.As(err, &ce):
		op.Outcome, op.Found, op.Rev = Conflict, ce.Exists, ce.Current.Revision
		op.Result = ce.Current.Data
		wr.known[key] = ce.Current.Revision
		if !ce.Exists {
			op.Rev, wr.known[key] = 0, 0
		}
	case kind == OpUpdate && errors.As(err, &ce):
		op.Outcome, op.Err = Failed, err.Error()
	case kind != OpGet && !errors.Is(err, etcdkit.ErrUnknownOutcome):
		// The library says the write did not apply: the checker holds it
		// to that.
		op.Outcome, op.Err = Failed, err.Error()
		op.Rev, op.Found, op.Result = 0, false, ""
	default:
		op.Outcome, op.Err = Unknown, err.Error()
		op.Rev, op.Found, op.Result = 0, false, ""
	}
	rec.Op(op)
	return op, err
}

// Quiesce stops the traffic; calls in flight end as unknown.
func (w *Writers) Quiesce(*Run) {
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
}

// Settle writes a sentinel value in every key, retrying until it applies.
func (w *Writers) Settle(ctx context.Context, run *Run) error {
	wr := w.writers[0]
	for k := range w.keys {
		for {
			op, _ := wr.call(ctx, run.Rec, k, OpPut, 2*time.Second)
			if op.Outcome == OK {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("sentinel write of %s: %s", dataKey(k), op.Err)
			}
		}
	}
	return nil
}

// Converge does nothing: writers observe nothing after their calls.
func (w *Writers) Converge(context.Context, *Run) {}

// Close stops the traffic and closes the clients.
func (w *Writers) Close() {
	w.once.Do(func() {
		w.Quiesce(w.run)
		for _, wr := range w.writers {
			_ = wr.c.Close()
		}
	})
}
