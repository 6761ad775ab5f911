package robustness_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestRegressionAfterRevisionAheadOfLaggingFeed: a Prefix watch made with
// AfterRevision(rev) while the client's shared feed for that prefix is cut
// off starts ahead of the feed. When the feed comes back to a compacted
// history, it resyncs by diffing against its own, older state. The watch
// must still get the Delete of a key it holds at rev but that the feed
// never saw (created after the feed was cut off, deleted before the
// resync). The robustness suite found it lost, when such a watch was hooked
// onto the feed and took the feed's diff for its own.
func TestRegressionAfterRevisionAheadOfLaggingFeed(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, StallTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	raw := srv.Client(t)
	p := etcdkit.NewPrefix(c, "p", etcdkit.String())

	first := p.Watch(ctx) // starts the shared feed
	defer first.Close()
	<-first.Synced()

	// The feed's link goes silent.
	srv.Proxy().Blackhole(proxy.Both)
	put, err := raw.Put(ctx, "p/x", "1")
	require.NoError(t, err)
	// The subscriber holds p/x at this revision, and must see it go.
	w := p.Watch(ctx, etcdkit.AfterRevision(put.Header.Revision))
	defer w.Close()
	<-w.Synced()
	del, err := raw.Delete(ctx, "p/x")
	require.NoError(t, err)
	srv.Compact(t)
	srv.Proxy().Unblackhole()
	end, err := raw.Put(ctx, "p/end", "e")
	require.NoError(t, err)

	var got []etcdkit.Event[string]
	for e := range w.Events() {
		got = append(got, e)
		if e.Name == "end" {
			break
		}
	}
	for _, e := range got {
		if e.Name == "x" && e.Type == etcdkit.Delete {
			return
		}
	}
	t.Fatalf("events after revision %d: %+v; want a Delete of x (deleted at %d) before the put of end at %d",
		put.Header.Revision, got, del.Header.Revision, end.Header.Revision)
}
