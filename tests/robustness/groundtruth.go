package robustness

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
)

// readTimeout bounds one read of the cluster's real history.
const readTimeout = 20 * time.Second

// currentRev returns the cluster's revision by a linearizable read through
// cli.
func currentRev(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, "robustness/rev", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// readChanges reads, with a historical watch on cli, every change in
// (from, to] to the keys under namespace ns. The caller makes sure that
// the member behind cli has applied revision to, and that from+1 is not
// compacted.
func readChanges(ctx context.Context, cli *clientv3.Client, ns string, from, to int64) ([]Change, error) {
	if to <= from {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), readTimeout)
	defer cancel()
	prefix := ns + "/"
	wch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from+1), clientv3.WithCreatedNotify())
	var out []Change
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				return nil, fmt.Errorf("read history (%d, %d]: watch closed: %w", from, to, ctx.Err())
			}
			if err := resp.Err(); err != nil {
				return nil, fmt.Errorf("read history (%d, %d]: %w", from, to, err)
			}
			if resp.Created {
				if err := cli.RequestProgress(ctx); err != nil {
					return nil, fmt.Errorf("read history (%d, %d]: request progress: %w", from, to, err)
				}
				continue
			}
			done := resp.IsProgressNotify() && resp.Header.Revision >= to
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision > to {
					done = true
					break
				}
				c := Change{Rev: ev.Kv.ModRevision, Key: strings.TrimPrefix(string(ev.Kv.Key), prefix)}
				if ev.Type == mvccpb.DELETE {
					c.Type = etcdkit.Delete
				} else {
					c.Type, c.Value = etcdkit.Put, string(ev.Kv.Value)
					c.CreateRev, c.Version, c.Lease = ev.Kv.CreateRevision, ev.Kv.Version, ev.Kv.Lease
				}
				out = append(out, c)
				if c.Rev == to {
					// The events of one revision arrive in one response.
					done = true
				}
			}
			if done {
				return out, nil
			}
		case <-tick.C:
			// A progress notification says every event up to its revision
			// has been sent; it covers the case where nothing changed at to.
			if err := cli.RequestProgress(ctx); err != nil {
				return nil, fmt.Errorf("read history (%d, %d]: request progress: %w", from, to, err)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("read history (%d, %d]: %w", from, to, ctx.Err())
		}
	}
}
