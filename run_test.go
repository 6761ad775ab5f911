package etcdkit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

const runWait = time.Minute

// coldClient returns a Client made with StartWithoutCluster on srv's proxy,
// which the test has stopped (or will stop): the member is down for it.
func coldClient(t *testing.T, srv *etcdtest.Server, ns string) *etcdkit.Client {
	t.Helper()
	c, err := etcdkit.New(testContext(t, runWait), etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: ns,
		StartWithoutCluster: true, StallTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// runResult runs f in a goroutine and returns the channel of its result.
func runResult(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func waitRun(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(runWait):
		t.Fatal("Run did not return")
		return nil
	}
}

// TestServiceRunStartsWhileEtcdIsDown: Service.Run, called while the only
// member is down, registers the instance once it comes up, with no loop in
// the caller; another tool revoking its lease or deleting its key does not
// take it out for good; ctx's end withdraws it and Run returns ctx's cause.
func TestServiceRunStartsWhileEtcdIsDown(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	srv.Proxy().Stop()
	t.Cleanup(func() { _ = srv.Proxy().Start() })
	c := coldClient(t, srv, "run")
	svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[string]())
	observer := etcdkit.NewService(testClient(t, []string{srv.Endpoint()}, "run"), "pricing", etcdkit.JSON[string]())
	tr, err := observer.Track(testContext(t, runWait))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	regs := make(chan *etcdkit.Registration[string], 8)
	inst := etcdkit.Instance[string]{ID: "p1", Addr: "127.0.0.1:8080", Meta: "v1"}
	done := runResult(func() error {
		return svc.Run(ctx, inst, 2*time.Second, func(r *etcdkit.Registration[string]) { regs <- r })
	})
	require.Empty(t, tr.Instances(), "nothing is registered while the member is down")

	require.NoError(t, srv.Proxy().Start())
	registered := func() bool { is := tr.Instances(); return len(is) == 1 && is[0].ID == "p1" }
	require.Eventually(t, registered, runWait, 5*time.Millisecond, "registered once the member is up")
	var r *etcdkit.Registration[string]
	select {
	case r = <-regs:
	case <-time.After(runWait):
		t.Fatal("registered was not called")
	}
	assert.Equal(t, inst, r.Instance())

	// Another tool revokes the lease, then deletes the key: it comes back.
	key := c.KeyPrefix() + "_etcdkit/service/pricing/p1"
	rctx := testContext(t, runWait)
	resp, err := raw.Get(rctx, key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "key %s", key)
	revoked := resp.Kvs[0].Lease
	_, err = raw.Revoke(rctx, clientv3.LeaseID(revoked))
	require.NoError(t, err)
	republished := func() bool {
		resp, err := raw.Get(rctx, key)
		return err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].Lease != revoked
	}
	require.Eventually(t, republished, runWait, 5*time.Millisecond, "published again after the revoke")
	_, err = raw.Delete(rctx, key)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		resp, err := raw.Get(rctx, key)
		return err == nil && len(resp.Kvs) == 1
	}, runWait, 5*time.Millisecond, "published again after the delete")
	require.Eventually(t, registered, runWait, 5*time.Millisecond)

	cancel()
	err = waitRun(t, done)
	require.ErrorIs(t, err, context.Canceled)
	require.Eventually(t, func() bool { return len(tr.Instances()) == 0 }, runWait, 5*time.Millisecond, "withdrawn")
}

// TestServiceRunGivesUpOnBadInput: an instance that no retry can fix
// fails Run at once.
func TestServiceRunGivesUpOnBadInput(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "run")
	svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[string]())
	err := svc.Run(testContext(t, runWait), etcdkit.Instance[string]{ID: "a/b", Addr: "127.0.0.1:1"}, 2*time.Second, nil)
	require.ErrorIs(t, err, etcdkit.ErrInvalidInstance)
	err = svc.Run(testContext(t, runWait), etcdkit.Instance[string]{ID: "a", Addr: "nowhere"}, 2*time.Second, nil)
	require.ErrorIs(t, err, etcdkit.ErrInvalidInstance)
}

// TestMutexRun: a job under a Mutex, started while the member is down,
// runs once it is up, with the Lock to make guarded writes, and the lock
// is released after; fn's error comes back as it is; a lock lost while fn
// runs (its lease revoked by another tool) cancels fn's ctx and comes back
// as ErrNotHeld, wrapping what fn returned; a Run waiting when its ctx
// ends returns ctx's cause.
func TestMutexRun(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	srv.Proxy().Stop()
	t.Cleanup(func() { _ = srv.Proxy().Start() })
	c := coldClient(t, srv, "job")
	m := etcdkit.NewMutex(c, "nightly", 2*time.Second)
	out := etcdkit.NewKey(c, "out", etcdkit.JSON[int64]())

	done := runResult(func() error {
		return m.Run(testContext(t, 2*runWait), func(ctx context.Context, lk *etcdkit.Lock) error {
			_, err := etcdkit.GuardedPut(ctx, lk, out, lk.Token())
			return err
		})
	})
	require.NoError(t, srv.Proxy().Start())
	require.NoError(t, waitRun(t, done), "the job ran once the member was up")
	got, err := out.Get(testContext(t, runWait))
	require.NoError(t, err)
	assert.Positive(t, got.Data, "the guarded write carried the token")
	_, err = m.Holder(testContext(t, runWait))
	require.ErrorIs(t, err, etcdkit.ErrNoCandidate, "released after the job")

	boom := errors.New("boom")
	err = m.Run(testContext(t, runWait), func(context.Context, *etcdkit.Lock) error { return boom })
	require.ErrorIs(t, err, boom)
	assert.NotErrorIs(t, err, etcdkit.ErrNotHeld)

	held := make(chan *etcdkit.Lock, 1)
	done = runResult(func() error {
		return m.Run(testContext(t, runWait), func(ctx context.Context, lk *etcdkit.Lock) error {
			held <- lk
			<-ctx.Done()
			return ctx.Err()
		})
	})
	var lk *etcdkit.Lock
	select {
	case lk = <-held:
	case <-time.After(runWait):
		t.Fatal("the job did not start")
	}
	rctx := testContext(t, runWait)
	resp, err := raw.Get(rctx, lk.HoldingKey())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	_, err = raw.Revoke(rctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	require.NoError(t, err)
	err = waitRun(t, done)
	require.ErrorIs(t, err, etcdkit.ErrNotHeld)
	require.ErrorIs(t, err, context.Canceled, "fn's own error is wrapped too")

	// Waiting behind another holder when ctx ends.
	other, err := etcdkit.NewMutex(testClient(t, []string{srv.Endpoint()}, "job"), "nightly", 2*time.Second).Lock(testContext(t, runWait))
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("shutting down")
	done = runResult(func() error {
		return m.Run(ctx, func(context.Context, *etcdkit.Lock) error { t.Error("ran while another held the lock"); return nil })
	})
	cancel(stop)
	require.ErrorIs(t, waitRun(t, done), stop)
}

// TestSemaphoreRun: Semaphore.Run runs fn under a permit and gives it
// back; a limit that differs from the name's fails at once.
func TestSemaphoreRun(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "sem")
	s := etcdkit.NewSemaphore(c, "workers", 2, 2*time.Second)
	ran := false
	require.NoError(t, s.Run(testContext(t, runWait), func(ctx context.Context, p *etcdkit.Permit) error {
		ran = p.Token() > 0 && ctx.Err() == nil
		return nil
	}))
	assert.True(t, ran)
	hs, err := s.Holders(testContext(t, runWait))
	require.NoError(t, err)
	assert.Empty(t, hs, "the permit was given back")

	other := etcdkit.NewSemaphore(c, "workers", 3, 2*time.Second)
	err = other.Run(testContext(t, runWait), func(context.Context, *etcdkit.Permit) error { return nil })
	require.ErrorIs(t, err, etcdkit.ErrLimitMismatch)
}
