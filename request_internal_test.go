package etcdkit

import (
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// A write whose attempt failed may be reported as not applied only when the
// member's error says what the request failed on. "server stopped" comes
// from a member that shut down while waiting for the outcome of a proposal
// it may have made: the robustness suite found such writes applied while
// they were reported failed (seed 1097432507859: put "w0.24" failed with
// "etcdserver: server stopped", then a read returned it).
func TestAnsweredOnlyWhenNothingIsOpen(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrStopped, false},
		{rpctypes.ErrTimeout, false},
		{rpctypes.ErrTimeoutDueToLeaderFail, false},
		{rpctypes.ErrTimeoutDueToConnectionLost, false},
		{rpctypes.ErrLeaderChanged, false},
		{rpctypes.ErrUnhealthy, false},
		{rpctypes.ErrTimeoutWaitAppliedIndex, false},
		{errors.New("transport is closing"), false},
		{rpctypes.ErrCompacted, true},
		{rpctypes.ErrPermissionDenied, true},
		{rpctypes.ErrRequestTooLarge, true},
		{rpctypes.ErrNoSpace, true},
		{rpctypes.ErrLeaseNotFound, true},
		{rpctypes.ErrDuplicateKey, true},
		{rpctypes.ErrNotCapable, true},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			if got := answered(fmt.Errorf("wrapped: %w", tc.err)); got != tc.want {
				t.Errorf("answered(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
