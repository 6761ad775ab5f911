package watch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// GetFunc is one read request.
type GetFunc func(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)

// Read reads t's keys at rev (0: the latest revision) in one attempt and
// returns them sorted by key with the read revision. A prefix is read in
// pages of pageSize keys, all at the revision of the first page, so that a
// large prefix never becomes one huge response; if that revision is
// compacted between two pages (only possible with rev 0) it starts over at
// a fresh one. With rev != 0 a compacted rev fails with
// rpctypes.ErrCompacted. opts apply to every request.
func Read(ctx context.Context, get GetFunc, t Target, rev, pageSize int64, opts ...clientv3.OpOption) ([]*mvccpb.KeyValue, int64, error) {
	for {
		kvs, got, err := readPages(ctx, get, t, rev, pageSize, opts)
		if errors.Is(err, rpctypes.ErrCompacted) && rev == 0 && ctx.Err() == nil {
			continue
		}
		return kvs, got, err
	}
}

func readPages(ctx context.Context, get GetFunc, t Target, rev, pageSize int64, opts []clientv3.OpOption) ([]*mvccpb.KeyValue, int64, error) {
	from := t.Key
	if t.Prefix {
		opts = append(opts[:len(opts):len(opts)], clientv3.WithRange(clientv3.GetPrefixRangeEnd(t.Key)), clientv3.WithLimit(pageSize))
	}
	var kvs []*mvccpb.KeyValue
	for {
		o := opts
		if rev != 0 {
			o = append(opts[:len(opts):len(opts)], clientv3.WithRev(rev))
		}
		resp, err := get(ctx, from, o...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !t.Prefix || !resp.More || len(resp.Kvs) == 0 {
			return kvs, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// read reads the target's keys as Read does, retrying transient failures
// with backoff until ctx ends. keysOnly leaves the values out.
func (h *Hub) read(ctx context.Context, t Target, rev int64, keysOnly bool) ([]*mvccpb.KeyValue, int64, error) {
	var opts []clientv3.OpOption
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	var kvs []*mvccpb.KeyValue
	var got int64
	err := h.retry(ctx, t, func() (err error) {
		kvs, got, err = Read(ctx, h.get, t, rev, h.cfg.PageSize(), opts...)
		return err
	})
	return kvs, got, err
}

// revision returns the cluster's current revision through a linearizable
// read, retrying as read does: every change the caller could have seen
// before the call is at or below it.
func (h *Hub) revision(ctx context.Context, t Target) (int64, error) {
	var rev int64
	err := h.retry(ctx, t, func() error {
		resp, err := h.get(ctx, t.Key, clientv3.WithCountOnly())
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev, err
}

// retry runs the read op until it succeeds, fails for good or ctx ends,
// waiting with backoff between transient failures. A compaction is for the
// caller to handle.
func (h *Hub) retry(ctx context.Context, t Target, op func() error) error {
	bo := backoff.New(minRewatchDelay, 2*time.Second)
	for {
		err := op()
		switch {
		case err == nil, errors.Is(err, rpctypes.ErrCompacted):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case h.cfg.Life.Err() != nil:
			return h.cfg.Closed
		case isTerminal(err):
			return fmt.Errorf("etcdkit: watch: read %q: %w", t.Key, err)
		}
		h.cfg.Log.Debug("watch read failed, retrying", zap.Stringer("target", t), zap.Error(err))
		if !bo.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// get is one read on the request connection. It requires a leader, so a
// member cut off from the others refuses at once and the request moves to
// another member instead of waiting for its timeout.
func (h *Hub) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return h.cfg.Get(clientv3.WithRequireLeader(ctx), key, opts...)
}
