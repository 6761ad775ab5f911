package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
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

// TestWithRequireLeader checks that the shared metadata asks for a leader
// as clientv3.WithRequireLeader does, and that a caller's own outgoing
// metadata is kept beside it.
func TestWithRequireLeader(t *testing.T) {
	if requireLeader.key == nil {
		t.Fatal("the key of gRPC's outgoing metadata was not learned: every request pays for its own metadata")
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want metadata.MD
	}{
		{"no metadata", context.Background(),
			metadata.Pairs(rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)},
		{"the caller's metadata", metadata.AppendToOutgoingContext(context.Background(), "x", "y"),
			metadata.Pairs("x", "y", rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := metadata.FromOutgoingContext(withRequireLeader(tc.ctx))
			if !ok || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got metadata %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRequireLeaderCall checks that the requests invoke sends ask for a
// leader with the very header clientv3.WithRequireLeader sets: their call
// options hold the per-call credential, and it returns that header.
func TestRequireLeaderCall(t *testing.T) {
	want, _ := metadata.FromOutgoingContext(clientv3.WithRequireLeader(context.Background()))
	var creds credentials.PerRPCCredentials
	for _, o := range kvCallOptions() {
		if o, ok := o.(grpc.PerRPCCredsCallOption); ok {
			creds = o.Creds
		}
	}
	if creds == nil {
		t.Fatalf("got call options %v, want one that carries the require-leader flag", kvCallOptions())
	}
	hdr, err := creds.GetRequestMetadata(context.Background(), "https://example/etcdserverpb.KV")
	if err != nil {
		t.Fatal(err)
	}
	got := metadata.New(hdr)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got header %v, want %v", got, want)
	}
	if creds.RequireTransportSecurity() {
		t.Fatal("got a flag that needs TLS, want it sent on plain connections too")
	}
}
