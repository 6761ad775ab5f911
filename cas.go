package etcdkit

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// casOp is the library's one compare-and-put: in a single transaction, put
// value at key (under lease, if not 0) when the key's mod revision is expect
// (0: only if the key is absent) and every comparison in also holds;
// otherwise read the key, so that the caller learns what it holds without a
// second request, at the same revision. Everything that writes a key only
// if it is as the writer last saw it goes through it: Key.CompareAndSwap,
// Create and Update, an Ephemeral's writes and checks, a candidate's key,
// and the keys later code acquires (a Mutex's or a Semaphore's) or commits
// in typed transactions (whose fences go in also).
//
// Run it over the client's request connection with Client.casRaw (the
// caller bounds ctx, with opContext), or on the pinned stream connection
// with Client.casStreams, which moves off a member that stalls, for the
// engines that must keep a key in place through faults.
type casOp struct {
	key    string // full etcd key
	expect int64  // mod revision the key must have; 0: absent
	value  []byte
	lease  clientv3.LeaseID
	also   []clientv3.Cmp
	// check makes the transaction compare only: when the comparisons hold
	// nothing is written, which confirms the key is still as expected.
	check bool
	// peers, if not empty, is a prefix whose oldest peerLimit keys (by
	// create revision) the transaction also reads, after the put: whether
	// a holder's key is among them says whether it holds at once.
	peers     string
	peerLimit int64
	// guard, if not empty, is a key that must hold guardValue for the put
	// to apply. When it is absent the put applies all the same and writes
	// it, with no lease, in the same transaction (a nested one), so that
	// the first writer records the value every later one is held to: a
	// Semaphore's limit. Not with check.
	guard      string
	guardValue []byte
}

// casResult is what a compare-and-put found.
type casResult struct {
	// ok reports that the comparisons held (and the put, if any, applied).
	ok bool
	// rev is the transaction's revision: the write's when ok and not a check.
	rev int64
	// cur is the key as it stood when the comparisons failed; nil when it
	// was absent, or when ok.
	cur *mvccpb.KeyValue
	// peers are the oldest keys under op.peers, oldest first.
	peers []*mvccpb.KeyValue
	// guard is op.guard as it stood when the transaction did not apply;
	// nil when it was absent, or when ok.
	guard *mvccpb.KeyValue
	// attempts is how many times casStreams sent the transaction.
	attempts int
}

// commit runs op on kv, a whole client or one pinned to a member.
func (op casOp) commit(ctx context.Context, kv clientv3.KV) (casResult, error) {
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(op.key), "=", op.expect)}, op.also...)
	var then []clientv3.Op
	if !op.check {
		var opts []clientv3.OpOption
		if op.lease != 0 {
			opts = append(opts, clientv3.WithLease(op.lease))
		}
		then = append(then, clientv3.OpPut(op.key, string(op.value), opts...))
	}
	els := []clientv3.Op{clientv3.OpGet(op.key)}
	if op.peers != "" {
		peers := clientv3.OpGet(op.peers, clientv3.WithPrefix(), clientv3.WithLimit(op.peerLimit),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
		then, els = append(then, peers), append(els, peers)
	}
	if op.guard != "" {
		// A Value comparison on an absent key fails: the nested
		// transaction, run when the outer one did not apply, records the
		// guard if it is absent and the other comparisons hold, and
		// otherwise reads it.
		record := clientv3.OpTxn(append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(op.guard), "=", 0)}, cmps...),
			append([]clientv3.Op{clientv3.OpPut(op.guard, string(op.guardValue))}, then...),
			[]clientv3.Op{clientv3.OpGet(op.guard)})
		cmps = append(cmps, clientv3.Compare(clientv3.Value(op.guard), "=", string(op.guardValue)))
		els = append(els, record)
	}
	resp, err := kv.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return casResult{}, err
	}
	res := casResult{ok: resp.Succeeded, rev: resp.Header.Revision}
	rs := resp.Responses
	if !res.ok && op.guard != "" {
		nested := rs[len(rs)-1].GetResponseTxn()
		rs = rs[:len(rs)-1]
		if res.ok = nested.GetSucceeded(); res.ok {
			rs = nested.GetResponses()[1:]
		} else if kvs := nested.GetResponses()[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			res.guard = kvs[0]
		}
	}
	if !res.ok {
		if kvs := rs[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			res.cur = kvs[0]
		}
	}
	if op.peers != "" {
		res.peers = rs[len(rs)-1].GetResponseRange().GetKvs()
	}
	return res, nil
}

// casRaw runs op through the request runner (see Client.request), bounded
// by ctx: on the healthiest member, moving on as far as a write may.
func (c *Client) casRaw(ctx context.Context, op casOp) (casResult, error) {
	kind := writeRequest
	if op.check {
		kind = readRequest
	}
	var res casResult
	err := c.request(ctx, kind, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		var err error
		res, err = op.commit(ctx, cli)
		return nil, err
	})
	return res, err
}

// casStreams runs op on the pinned stream connection, retrying an attempt
// that stalls or fails transiently on the next member (see onStreams) until
// ctx ends; a value the server refuses as too large is not retried
// (ErrTooLarge). A retried put may have applied the first time: callers
// recognise their own value in cur.
func (c *Client) casStreams(ctx context.Context, op casOp) (casResult, error) {
	var res casResult
	attempts := 0
	err := c.onStreams(ctx, c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		attempts++
		var err error
		res, err = op.commit(ctx, cli)
		return mapServerError(err)
	})
	res.attempts = attempts
	return res, err
}
