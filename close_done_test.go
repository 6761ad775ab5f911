package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// closeDoneRounds is how many handles of each kind the Close/Done tests
// make: a race between the return of Close and the close of Done shows in
// a few rounds out of thirty.
const closeDoneRounds = 30

// handle is the Close/Done/Err shape every long-running handle has.
type handle interface {
	Close() error
	Done() <-chan struct{}
	Err() error
}

// handleKind makes one handle of a kind on c; ctx is the ctx its
// constructor takes. ctxBound says whether ctx bounds the handle's life
// (it bounds only the wait of Campaign, Lock and Acquire, and a
// HealthMonitor takes none).
type handleKind struct {
	name     string
	ctxBound bool
	make     func(t *testing.T, ctx context.Context, c *etcdkit.Client, round int) handle
}

// handleKinds lists every handle type with Close, Done and Err.
func handleKinds() []handleKind {
	const ttl = 2 * time.Second
	key := func(c *etcdkit.Client) *etcdkit.Key[string] { return etcdkit.NewKey(c, "cd/key", etcdkit.String()) }
	prefix := func(c *etcdkit.Client) *etcdkit.Prefix[string] {
		return etcdkit.NewPrefix(c, "cd/prefix", etcdkit.String())
	}
	cache := func(t *testing.T, ctx context.Context, c *etcdkit.Client) *etcdkit.Cache[string] {
		ca, err := prefix(c).Cache(ctx)
		require.NoError(t, err)
		return ca
	}
	ok := func(t *testing.T, h handle, err error) handle {
		require.NoError(t, err)
		return h
	}
	return []handleKind{
		{"Live", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			return etcdkit.NewLive(ctx, key(c))
		}},
		{"LiveMap", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			return etcdkit.NewLiveMap(ctx, prefix(c))
		}},
		{"Key.Watch", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			return key(c).Watch(ctx)
		}},
		{"Prefix.Watch", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			return prefix(c).Watch(ctx, etcdkit.WithInitial())
		}},
		{"Cache", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			return cache(t, ctx, c)
		}},
		{"Cache.Subscribe", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			// The subscription's life is the cache's: ctx bounds the cache.
			ca := cache(t, ctx, c)
			t.Cleanup(func() { _ = ca.Close() })
			return ca.Subscribe()
		}},
		{"Observation", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			return etcdkit.NewElection(c, "cd/observed", ttl).Observe(ctx)
		}},
		{"Session", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			s, err := c.NewSession(ctx, ttl)
			return ok(t, s, err)
		}},
		{"Ephemeral", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, round int) handle {
			e, err := etcdkit.NewEphemeral(ctx, etcdkit.NewKey(c, fmt.Sprintf("cd/eph/%d", round), etcdkit.String()), "v", ttl)
			return ok(t, e, err)
		}},
		{"Registration", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, round int) handle {
			svc := etcdkit.NewService(c, "cd/svc", etcdkit.String())
			r, err := svc.Register(ctx, etcdkit.Instance[string]{ID: fmt.Sprintf("i%d", round), Addr: "127.0.0.1:1"}, ttl)
			return ok(t, r, err)
		}},
		{"Tracker", true, func(t *testing.T, ctx context.Context, c *etcdkit.Client, _ int) handle {
			tr, err := etcdkit.NewService(c, "cd/svc", etcdkit.String()).Track(ctx)
			return ok(t, tr, err)
		}},
		{"Leadership", false, func(t *testing.T, ctx context.Context, c *etcdkit.Client, round int) handle {
			l, err := etcdkit.NewElection(c, fmt.Sprintf("cd/election/%d", round), ttl).Campaign(ctx, "a")
			return ok(t, l, err)
		}},
		{"Lock", false, func(t *testing.T, ctx context.Context, c *etcdkit.Client, round int) handle {
			l, err := etcdkit.NewMutex(c, fmt.Sprintf("cd/mutex/%d", round), ttl).Lock(ctx)
			return ok(t, l, err)
		}},
		{"Permit", false, func(t *testing.T, ctx context.Context, c *etcdkit.Client, round int) handle {
			p, err := etcdkit.NewSemaphore(c, fmt.Sprintf("cd/semaphore/%d", round), 2, ttl).Acquire(ctx)
			return ok(t, p, err)
		}},
		{"HealthMonitor", false, func(t *testing.T, _ context.Context, c *etcdkit.Client, _ int) handle {
			return etcdkit.NewHealthMonitor(c)
		}},
	}
}

// requireEnded checks, without waiting, that h has ended with an error
// matching one of want.
func requireEnded(t *testing.T, h handle, round int, want ...error) {
	t.Helper()
	select {
	case <-h.Done():
	default:
		t.Fatalf("round %d: Done is open right after the handle was closed, want it closed", round)
	}
	err := h.Err()
	for _, w := range want {
		if errors.Is(err, w) {
			return
		}
	}
	t.Fatalf("round %d: got Err %v, want an error matching one of %v", round, err, want)
}

// TestCloseEndsHandle checks the rule of every handle: once Close returns,
// Done is closed and Err says why, whichever goroutine ended the handle
// (Close itself, or the handle's ctx ending before or during Close).
func TestCloseEndsHandle(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "closedone")
	for _, k := range handleKinds() {
		t.Run(k.name, func(t *testing.T) {
			t.Run("Close", func(t *testing.T) {
				for round := range closeDoneRounds {
					h := k.make(t, testContext(t, time.Minute), c, round)
					require.NoError(t, h.Close())
					requireEnded(t, h, round, etcdkit.ErrClosed)
				}
			})
			if !k.ctxBound {
				return
			}
			t.Run("ctx ended, then Close", func(t *testing.T) {
				for round := range closeDoneRounds {
					ctx, cancel := context.WithCancel(context.Background())
					h := k.make(t, ctx, c, round)
					cancel()
					require.NoError(t, h.Close())
					requireEnded(t, h, round, context.Canceled)
				}
			})
			t.Run("ctx ends during Close", func(t *testing.T) {
				for round := range closeDoneRounds {
					ctx, cancel := context.WithCancel(context.Background())
					h := k.make(t, ctx, c, round)
					cancelled := make(chan struct{})
					go func() { defer close(cancelled); cancel() }()
					require.NoError(t, h.Close())
					requireEnded(t, h, round, etcdkit.ErrClosed, context.Canceled)
					<-cancelled
				}
			})
		})
	}
}

// TestClientCloseEndsHandles checks that once Client.Close returns, every
// handle made from the client has ended with ErrClosed.
func TestClientCloseEndsHandles(t *testing.T) {
	srv := etcdtest.Start(t)
	kinds := handleKinds()
	for round := range closeDoneRounds {
		c, err := etcdkit.New(testContext(t, 20*time.Second), etcdkit.Config{Endpoints: []string{srv.Endpoint()},
			Namespace: "clientclose"})
		require.NoError(t, err)
		hs := make([]handle, len(kinds))
		for i, k := range kinds {
			hs[i] = k.make(t, testContext(t, time.Minute), c, round)
		}
		require.NoError(t, c.Close())
		for i, h := range hs {
			t.Run(kinds[i].name, func(t *testing.T) { requireEnded(t, h, round, etcdkit.ErrClosed) })
		}
	}
}
