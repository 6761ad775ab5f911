package watch

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/internal/conn"
)

var errClosed = errors.New("closed")

// gatedHub is a hub on one member whose reads of values (a WithInitial
// subscriber's first read, a resync) can be held after the member answered
// them, so that a test can move the feed past the revision such a read
// returns before the subscriber sees it.
type gatedHub struct {
	h   *Hub
	cli *clientv3.Client

	mu   sync.Mutex
	gate chan struct{} // while set, a read of values waits on it
	held chan struct{} // receives once a read is held
}

func newGatedHub(t *testing.T) *gatedHub {
	t.Helper()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	life, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	log := zaptest.NewLogger(t)
	pool := conn.New(conn.Config{
		Endpoints: []string{srv.Endpoint()},
		Dial: func(ctx context.Context, ep string) (*clientv3.Client, error) {
			return clientv3.New(clientv3.Config{Endpoints: []string{ep}, Context: ctx, Logger: log, DialTimeout: 5 * time.Second})
		},
		DialRequest: func(ctx context.Context, ep string) (*clientv3.Client, error) {
			return clientv3.New(clientv3.Config{Endpoints: []string{ep}, Context: ctx, Logger: log})
		},
		Life:      life,
		Log:       log,
		Closed:    errClosed,
		Retryable: func(error) bool { return true },
	})
	g := &gatedHub{cli: cli, held: make(chan struct{}, 1)}
	g.h = NewHub(Config{
		Life:         life,
		Spawn:        func(f func()) bool { wg.Go(f); return true },
		Log:          log,
		StallTimeout: 2 * time.Second,
		Conns:        pool,
		Get: func(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
			resp, err := cli.Get(ctx, key, opts...)
			if err != nil || isCountOnly(opts) {
				return resp, err
			}
			g.mu.Lock()
			gate := g.gate
			g.mu.Unlock()
			if gate != nil {
				g.held <- struct{}{}
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return resp, err
		},
		PageSize: func() int64 { return 100 },
		Closed:   errClosed,
	})
	t.Cleanup(func() {
		cancel()
		pool.Close()
		wg.Wait()
	})
	return g
}

// isCountOnly reports whether opts make a count-only read (a watch from
// now reads the revision that way), which is never held.
func isCountOnly(opts []clientv3.OpOption) bool {
	op := clientv3.OpGet("k", opts...)
	return op.IsCountOnly()
}

// hold makes the next reads of values wait, after the member answered,
// until the returned release is called.
func (g *gatedHub) hold() (release func()) {
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.gate = nil
			g.mu.Unlock()
			close(gate)
		})
	}
}

// drain pops every batch s has queued now, applying them to state.
func drain(t *testing.T, s *Sub, state map[string]string, evs *[]*Event) {
	t.Helper()
	for {
		s.mu.Lock()
		n := len(s.q)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		b, err := s.Pop(context.Background())
		require.NoError(t, err)
		for _, e := range b.Events {
			*evs = append(*evs, e)
			if e.Type == Delete {
				delete(state, e.Name)
			} else {
				state[e.Name] = string(e.Value)
			}
		}
	}
}

// A WithInitial subscriber whose first read finds its prefix empty starts
// from a known state, the empty one: a key it later receives from history
// and that is deleted in revisions compacted before it reads them must be
// reported deleted by its resync. (An empty read once left the subscriber
// with no baseline at all, which a resync took for "unknown", and the
// deleted key stayed for ever.)
func TestEmptyInitialStateIsKnown(t *testing.T) {
	g := newGatedHub(t)
	ctx := t.Context()
	tgt := Target{Key: "p/", Prefix: true, Strip: len("p/")}

	// A first subscriber opens the feed and follows it.
	a := g.h.NewSub(ctx, tgt, Options{After: -1, Buffer: 1000})
	require.True(t, g.h.Join(a))
	require.True(t, a.Go())
	t.Cleanup(a.Close)
	<-a.Ready()

	// The second one's initial read answers "empty", then is held while
	// the feed moves on, so that it starts behind the feed.
	release := g.hold()
	t.Cleanup(release)
	b := g.h.NewSub(ctx, tgt, Options{After: -1, Initial: true, Buffer: 4})
	require.True(t, g.h.Join(b))
	require.True(t, b.Go())
	t.Cleanup(b.Close)
	select {
	case <-g.held:
	case <-time.After(30 * time.Second):
		t.Fatal("the initial read was not held")
	}
	put := func(k, v string) int64 {
		resp, err := g.cli.Put(ctx, "p/"+k, v)
		require.NoError(t, err)
		return resp.Header.Revision
	}
	put("k", "1")
	var last int64
	for _, k := range []string{"a1", "a2", "a3", "a4", "a5"} {
		last = put(k, "1")
	}
	require.Eventually(t, func() bool {
		a.feed.mu.Lock()
		defer a.feed.mu.Unlock()
		return a.feed.next > last
	}, 30*time.Second, 5*time.Millisecond, "the feed reaches the last put")
	release()

	// Its own catch-up delivers what fits in its buffer (k among it) and
	// pauses, its reader idle.
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.mode == subCatching && b.queued >= 4
	}, 30*time.Second, 5*time.Millisecond, "the subscriber catches up to a full buffer")
	state := map[string]string{}
	var evs []*Event

	// k goes, and the history it went in is compacted.
	del, err := g.cli.Delete(ctx, "p/k")
	require.NoError(t, err)
	_, err = g.cli.Compact(ctx, del.Header.Revision)
	require.NoError(t, err)

	// The reader drains; the catch-up resumes into the compacted history
	// and resyncs.
	end := put("end", "e")
	require.Eventually(t, func() bool {
		drain(t, b, state, &evs)
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.enq > end
	}, 30*time.Second, 5*time.Millisecond, "the subscriber reaches the last write")
	drain(t, b, state, &evs)

	want := map[string]string{}
	resp, err := g.cli.Get(ctx, "p/", clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		want[strings.TrimPrefix(string(kv.Key), "p/")] = string(kv.Value)
	}
	require.Equal(t, want, state, "the subscriber's state after its resync; events %s", eventsString(evs))
}

func eventsString(evs []*Event) string {
	var sb strings.Builder
	for _, e := range evs {
		if e.Type == Delete {
			sb.WriteString("Delete ")
		} else {
			sb.WriteString("Put ")
		}
		sb.WriteString(e.Name)
		if e.Resync {
			sb.WriteString("(resync)")
		}
		sb.WriteString(" ")
	}
	return sb.String()
}
