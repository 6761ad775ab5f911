package etcdkit

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxTxnOps is etcd's default limit on the comparisons, and on the
// operations of each branch, of one transaction (its --max-txn-ops).
const maxTxnOps = 128

// Cond is a comparison on one key, made by Key.IfRevision or Key.IfAbsent,
// for Txn.If. The zero Cond is invalid: Commit refuses it.
type Cond struct {
	c    *Client
	name string
	path string
	cmp  clientv3.Cmp
	// holds evaluates the comparison on the key as read at the same
	// revision (nil: absent), to say which comparison failed.
	holds func(kv *mvccpb.KeyValue) bool
	// conflict makes the typed error of a failed comparison.
	conflict func(kv *mvccpb.KeyValue, rev int64) error
	desc     string
	err      error
}

// Op is a write to one key, made by Key.OpPut or Key.OpDelete, for
// Txn.Then, Txn.Else and Tx.Write. The value is encoded when the Op is made;
// an encoding error, or a value over Config.MaxValueSize, is kept and
// returned by Commit. The zero Op is invalid: Commit refuses it.
type Op struct {
	c    *Client
	name string
	path string
	del  bool
	data []byte
	err  error
}

// IfRevision is the comparison "the key's mod revision is rev": it holds
// when nobody wrote the key since the write that returned rev (0: the key
// is absent). When it fails, Commit's error is a *ConflictError[T] matching
// ErrConflict that carries the key's current value.
func (k *Key[T]) IfRevision(rev int64) Cond {
	cd := Cond{c: k.c, name: k.name, path: k.path, err: k.err,
		desc: fmt.Sprintf("%q has mod revision %d", k.name, rev),
		holds: func(kv *mvccpb.KeyValue) bool {
			return (kv == nil && rev == 0) || (kv != nil && kv.ModRevision == rev)
		},
		conflict: func(kv *mvccpb.KeyValue, at int64) error {
			return k.conflict(ErrConflict, rev, casResult{rev: at, cur: kv})
		},
	}
	cd.cmp = clientv3.Compare(clientv3.ModRevision(k.path), "=", rev)
	return cd
}

// IfAbsent is the comparison "the key does not exist". When it fails,
// Commit's error is a *ConflictError[T] matching ErrExists that carries the
// key's current value.
func (k *Key[T]) IfAbsent() Cond {
	cd := Cond{c: k.c, name: k.name, path: k.path, err: k.err,
		desc:  fmt.Sprintf("%q is absent", k.name),
		holds: func(kv *mvccpb.KeyValue) bool { return kv == nil },
		conflict: func(kv *mvccpb.KeyValue, at int64) error {
			return k.conflict(ErrExists, 0, casResult{rev: at, cur: kv})
		},
	}
	cd.cmp = clientv3.Compare(clientv3.CreateRevision(k.path), "=", 0)
	return cd
}

// OpPut is the write "store v at the key".
func (k *Key[T]) OpPut(v T) Op {
	data, err := k.encode(v)
	return Op{c: k.c, name: k.name, path: k.path, data: data, err: err}
}

// OpDelete is the write "delete the key"; deleting an absent key is not an
// error.
func (k *Key[T]) OpDelete() Op {
	return Op{c: k.c, name: k.name, path: k.path, del: true, err: k.err}
}

func (o Op) raw() clientv3.Op {
	if o.del {
		return clientv3.OpDelete(o.path)
	}
	return clientv3.OpPut(o.path, string(o.data))
}

// Txn is a transaction over typed keys: if every comparison given to If
// holds, the writes given to Then apply, else those given to Else, in one
// atomic step. Make one with NewTxn, or GuardedTxn to make it apply only
// while a Fence holds. Build it, then Commit it once; it is not safe for
// concurrent use while being built.
type Txn struct {
	c     *Client
	f     *Leadership
	conds []Cond
	then  []Op
	els   []Op
	err   error
}

// TxnResult is what a committed transaction did.
type TxnResult struct {
	// Succeeded reports whether the comparisons held (Then applied) or not
	// (Else applied).
	Succeeded bool
	// Revision is the cluster revision of the transaction.
	Revision int64
}

// NewTxn returns an empty transaction on c's keys.
func NewTxn(c *Client) *Txn {
	t := &Txn{c: c}
	if c == nil {
		t.err = errors.New("etcdkit: NewTxn: nil client")
	}
	return t
}

// GuardedTxn returns an empty transaction on the keys of f's Client that
// applies, Then or Else, only while f holds, as GuardedPut writes. When f
// no longer holds, Commit fails as Leadership.Txn does and applies nothing.
func GuardedTxn(f Fence) *Txn {
	l, err := fenceOf(f)
	if err != nil {
		return &Txn{err: err}
	}
	return &Txn{c: l.e.c, f: l}
}

// If adds comparisons; Then applies only if all of them hold.
func (t *Txn) If(conds ...Cond) *Txn {
	t.conds = append(t.conds, conds...)
	return t
}

// Then adds the writes that apply when every comparison holds.
func (t *Txn) Then(ops ...Op) *Txn {
	t.then = append(t.then, ops...)
	return t
}

// Else adds the writes that apply when a comparison fails.
func (t *Txn) Else(ops ...Op) *Txn {
	t.els = append(t.els, ops...)
	return t
}

// Commit sends the transaction and reports what it did. When a comparison
// failed, the Else writes applied (TxnResult.Succeeded is false) and the
// error says which comparison failed first, in the order given to If, as
// the key stood at the transaction's revision: it wraps the *ConflictError[T]
// of that key's type (see AsConflict), matching ErrConflict or ErrExists.
//
// Before sending anything, Commit fails on an invalid key, a value that did
// not encode (the codec's error, naming the key), a key of another Client,
// and with ErrTooLarge on a transaction over etcd's limits: more than 128
// comparisons or writes in a branch, or keys and values adding up to more
// than Config.MaxValueSize. ctx bounds the call, with Config.RequestTimeout
// when it has no deadline; an error other than a conflict leaves the
// outcome unknown, unless it says nothing was sent. A guarded transaction
// fails as Leadership.Txn does once its Fence no longer holds.
func (t *Txn) Commit(ctx context.Context) (TxnResult, error) {
	if err := t.check(); err != nil {
		return TxnResult{}, err
	}
	cmps := make([]clientv3.Cmp, len(t.conds))
	for i, cd := range t.conds {
		cmps[i] = cd.cmp
	}
	// The Else branch first reads every compared key, before its own writes
	// change them, so that a failure can say which comparison failed with
	// the key as it stood.
	els := make([]clientv3.Op, 0, len(t.els)+len(t.conds))
	for _, cd := range t.conds {
		els = append(els, clientv3.OpGet(cd.path))
	}
	for _, o := range t.els {
		els = append(els, o.raw())
	}
	then := make([]clientv3.Op, len(t.then))
	for i, o := range t.then {
		then[i] = o.raw()
	}

	var (
		ok    bool
		resps []*pb.ResponseOp
		rev   int64
	)
	if t.f != nil {
		resp, err := t.f.txn(ctx, "guarded txn", []clientv3.Op{clientv3.OpTxn(cmps, then, els)})
		if err != nil {
			return TxnResult{}, err
		}
		inner := resp.Responses[0].GetResponseTxn()
		ok, resps, rev = inner.Succeeded, inner.Responses, resp.Header.Revision
	} else {
		rctx, cancel, err := t.c.opContext(ctx)
		if err != nil {
			return TxnResult{}, errorf("txn: %w", err)
		}
		defer cancel()
		resp, err := t.c.txn(rctx, cmps, then, els)
		if err != nil {
			return TxnResult{}, errorf("txn: %w", t.c.cause(mapServerError(err)))
		}
		ok, resps, rev = resp.Succeeded, resp.Responses, resp.Header.Revision
	}
	res := TxnResult{Succeeded: ok, Revision: rev}
	if ok {
		return res, nil
	}
	// The comparisons saw the state before the transaction: one revision
	// before it when the Else branch wrote.
	at := rev
	for _, r := range resps[len(t.conds):] {
		if r.GetResponsePut() != nil || r.GetResponseDeleteRange().GetDeleted() > 0 {
			at = rev - 1
		}
	}
	reads := resps[:len(t.conds)]
	for i, cd := range t.conds {
		var kv *mvccpb.KeyValue
		if kvs := reads[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
			kv = kvs[0]
		}
		if !cd.holds(kv) {
			return res, errorf("txn: condition %d of %d (%s) failed at revision %d: %w", i+1, len(t.conds), cd.desc, at, cd.conflict(kv, at))
		}
	}
	// Unreachable unless the server and this code disagree on a comparison.
	return res, fmt.Errorf("%w: txn: a condition failed at revision %d", ErrConflict, rev)
}

// check refuses what cannot be sent.
func (t *Txn) check() error {
	if t.err != nil {
		return t.err
	}
	size := 0
	for i, cd := range t.conds {
		switch {
		case cd.err != nil:
			return errorf("txn: condition %d: %w", i+1, cd.err)
		case cd.c == nil:
			return fmt.Errorf("etcdkit: txn: condition %d is the zero Cond", i+1)
		case cd.c != t.c:
			return fmt.Errorf("etcdkit: txn: condition %d: key %q belongs to another Client", i+1, cd.name)
		}
		size += len(cd.path)
	}
	for _, ops := range [][]Op{t.then, t.els} {
		for i, o := range ops {
			switch {
			case o.err != nil:
				return errorf("txn: write %d: %w", i+1, o.err)
			case o.c == nil:
				return fmt.Errorf("etcdkit: txn: write %d is the zero Op", i+1)
			case o.c != t.c:
				return fmt.Errorf("etcdkit: txn: write %d: key %q belongs to another Client", i+1, o.name)
			}
			size += len(o.path) + len(o.data)
		}
	}
	if n := max(len(t.conds)+1, len(t.then), len(t.els)+len(t.conds)); n > maxTxnOps {
		return fmt.Errorf("%w: txn: %d comparisons or writes in one branch, etcd's limit is %d", ErrTooLarge, n, maxTxnOps)
	}
	if size > t.c.cfg.MaxValueSize {
		return fmt.Errorf("%w: txn: keys and values add up to %d bytes, limit %d", ErrTooLarge, size, t.c.cfg.MaxValueSize)
	}
	return nil
}

// Tx is one attempt of UpdateKeys: the keys fn read, all at one revision,
// and the writes it asked for. It is valid only during that call of fn.
type Tx struct {
	c     *Client
	rev   int64
	reads map[string]*mvccpb.KeyValue // by path; nil: absent
	names map[string]string           // path to name
	order []string
	ops   []Op
}

// GetIn reads the key in tx: every key read in one attempt of UpdateKeys
// is read at the same revision, and the update applies only if none of them
// changed since. It returns the value and true, the zero Value and false if
// the key is absent, or a *DecodeError naming the key if its value does not
// decode. ctx bounds the read, with Config.RequestTimeout when it has no
// deadline.
func (k *Key[T]) GetIn(ctx context.Context, tx *Tx) (Value[T], bool, error) {
	var zero Value[T]
	switch {
	case k.err != nil:
		return zero, false, k.err
	case tx == nil:
		return zero, false, fmt.Errorf("etcdkit: GetIn %q: nil Tx", k.name)
	case k.c != tx.c:
		return zero, false, fmt.Errorf("etcdkit: GetIn %q: the key belongs to another Client", k.name)
	}
	kv, ok := tx.reads[k.path]
	if !ok {
		rctx, cancel, err := k.c.opContext(ctx)
		if err != nil {
			return zero, false, k.fail("get", err)
		}
		defer cancel()
		var opts []clientv3.OpOption
		if tx.rev != 0 {
			opts = append(opts, clientv3.WithRev(tx.rev))
		}
		resp, err := k.c.read(rctx, k.path, opts...)
		if err != nil {
			return zero, false, k.fail("get", err)
		}
		if tx.rev == 0 {
			tx.rev = resp.Header.Revision
		}
		if len(resp.Kvs) > 0 {
			kv = resp.Kvs[0]
		}
		tx.reads[k.path], tx.names[k.path] = kv, k.name
		tx.order = append(tx.order, k.path)
	}
	if kv == nil {
		return zero, false, nil
	}
	v, err := decodeKV(k.name, k.codec, kv)
	if err != nil {
		return zero, false, err
	}
	return v, true, nil
}

// Write adds writes that apply if the update commits.
func (tx *Tx) Write(ops ...Op) { tx.ops = append(tx.ops, ops...) }

// UpdateKeys is Key.Update over several keys: it calls fn, which reads
// keys with Key.GetIn and asks for writes with Tx.Write, then applies the
// writes in one transaction if none of the keys fn read changed since it
// read them. On a conflict it calls fn again with a fresh Tx, up to 256
// times, with a short random pause between attempts, or until ctx ends. If
// fn returns an error, nothing is written and UpdateKeys returns it (a
// *DecodeError from GetIn, for example, names the key). It returns the
// revision of the write. ctx bounds the whole call; each request also gets
// Config.RequestTimeout when ctx has no deadline.
func UpdateKeys(ctx context.Context, c *Client, fn func(ctx context.Context, tx *Tx) error) (int64, error) {
	if c == nil {
		return 0, errors.New("etcdkit: UpdateKeys: nil client")
	}
	return updateKeys(ctx, c, nil, fn)
}

// GuardedUpdateKeys is UpdateKeys whose writes apply only while f holds:
// it fails as Leadership.Txn does once f no longer holds, and never retries
// that.
func GuardedUpdateKeys(ctx context.Context, f Fence, fn func(ctx context.Context, tx *Tx) error) (int64, error) {
	l, err := fenceOf(f)
	if err != nil {
		return 0, err
	}
	return updateKeys(ctx, l.e.c, l, fn)
}

func updateKeys(ctx context.Context, c *Client, f *Leadership, fn func(ctx context.Context, tx *Tx) error) (int64, error) {
	if fn == nil {
		return 0, errors.New("etcdkit: UpdateKeys: nil function")
	}
	for attempt := 1; ; attempt++ {
		tx := &Tx{c: c, reads: map[string]*mvccpb.KeyValue{}, names: map[string]string{}}
		if err := fn(ctx, tx); err != nil {
			return 0, err
		}
		t := &Txn{c: c, f: f, then: tx.ops}
		for _, path := range tx.order {
			var rev int64
			if kv := tx.reads[path]; kv != nil {
				rev = kv.ModRevision
			}
			t.conds = append(t.conds, revCond(c, tx.names[path], rev))
		}
		res, err := t.Commit(ctx)
		if err == nil {
			return res.Revision, nil
		}
		if _, ok := AsConflict(err); !ok {
			return 0, err
		}
		if attempt == maxUpdateAttempts {
			return 0, errorf("UpdateKeys: gave up after %d conflicting attempts: %w", attempt, err)
		}
		if !conflictPause(ctx, attempt) {
			return 0, errorf("UpdateKeys: %w", context.Cause(ctx))
		}
	}
}

// revCond is IfRevision for a key whose type the caller does not know.
func revCond(c *Client, name string, rev int64) Cond {
	return NewKey(c, name, Bytes()).IfRevision(rev)
}
