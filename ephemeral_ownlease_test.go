package etcdkit_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// A create-only Ephemeral that finds its key under a lease its own session
// held before must take the key as its own and put it back under its
// current lease. Here the key's write under the second lease applies but
// its answer is lost; before the Ephemeral can look again, the session
// loses that lease too and moves to a third. The Ephemeral once took the
// second lease for another owner's, ended with ErrExists and revoked its
// lease: a service instance gone for good because the cluster was slow
// (the robustness suite found it on a loaded machine).
func TestEphemeralCreateOnlyKnowsItsOldLease(t *testing.T) {
	const ttl = 4 * time.Second
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	// When armed, the next transaction is applied by the member but its
	// answer is replaced by an error, and the test cuts the link before the
	// Ephemeral hears of it.
	var armed atomic.Bool
	var first atomic.Int64 // the Ephemeral's first lease
	lost, cutDone := make(chan struct{}), make(chan struct{})
	loseAnswer := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil && putsUnderAnotherLease(req, first.Load()) && armed.CompareAndSwap(true, false) {
			close(lost)
			<-cutDone
			return status.Error(codes.Unavailable, "the answer was lost")
		}
		return err
	})
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "ownlease",
		Logger: lsLogger(t), StallTimeout: 300 * time.Millisecond, DialOptions: []grpc.DialOption{loseAnswer}})
	raw := srv.Client(t)
	const key = "ownlease/svc/i0"
	// Lost is declared half a TTL before the lease can expire, so that the
	// second lease still holds the key when the third is granted.
	e := lsEphemeral(t, c, "svc/i0", "v1", ttl, etcdkit.WithCreateOnly(), etcdkit.WithLostMargin(ttl/2))
	states := recordStates(t, e.States())
	first.Store(int64(e.Lease()))
	lsHolds(t, raw, e, key, "v1", lsWait)

	// The first lease is lost; the write under the second applies, its
	// answer does not arrive, and the link is cut again at once.
	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	states.waitFor(t, etcdkit.SessionLost, cut, lsWait)
	armed.Store(true)
	srv.Proxy().Unblackhole()
	select {
	case <-lost:
	case <-time.After(lsWait):
		t.Fatal("no transaction under the second lease")
	}
	cut = time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	close(cutDone)
	_, second, ok := lsGet(t, raw, key)
	require.True(t, ok)
	require.NotEqual(t, first.Load(), int64(second), "the key is under the second lease")

	// The second lease is lost too; the third finds the key under it.
	states.waitFor(t, etcdkit.SessionLost, cut, lsWait)
	srv.Proxy().Unblackhole()
	if !assert.Eventually(t, func() bool {
		v, l, ok := lsGet(t, raw, key)
		return ok && v == "v1" && l == e.Lease() && l != second && int64(l) != first.Load()
	}, lsWait, lsTick, "the key under a third lease") {
		v, l, ok := lsGet(t, raw, key)
		t.Fatalf("the key holds %q under %x (present %v); the Ephemeral's lease is %x, its Err %v", v, int64(l), ok, int64(e.Lease()), e.Err())
	}
	select {
	case <-e.Done():
		t.Fatalf("the Ephemeral ended: %v", e.Err())
	default:
	}
	assert.NoError(t, e.Err())
}

// putsUnderAnotherLease reports whether req is a transaction that puts a
// key under a lease other than lease.
func putsUnderAnotherLease(req any, lease int64) bool {
	txn, ok := req.(*pb.TxnRequest)
	if !ok {
		return false
	}
	for _, op := range append(txn.Success, txn.Failure...) {
		if put := op.GetRequestPut(); put != nil && put.Lease != 0 && put.Lease != lease {
			return true
		}
	}
	return false
}
