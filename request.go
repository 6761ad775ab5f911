package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/etcdkit/internal/backoff"
	"github.com/etcdkit/etcdkit/internal/conn"
)

// requestKind says what the runner may do with a request that failed: a
// read may be sent again anywhere, a write only if it provably did not
// apply.
type requestKind bool

const (
	readRequest  requestKind = false
	writeRequest requestKind = true
)

// requestOp sends one request on cli, bounded by ctx, and returns the
// header of its response.
type requestOp func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error)

// request runs op through the request runner: on the healthiest member
// first (conn.Pool.Order: the stream connection's member while it answers),
// each attempt bounded by StallTimeout and sent WithRequireLeader, so that a
// member without a leader refuses it before proposing it to raft. An attempt
// that was refused that way, or never sent because the member's connection
// was not up, moves on to the next member; so does any failed read. A write
// that was sent and got no answer, or a failure that does not prove it was
// not applied, ends the request with ErrUnknownOutcome. Every outcome feeds
// the shared view of the members' health. ctx, already bounded by
// opContext, bounds the whole request. The error names each member tried
// and why it failed.
//
// op sends its request through clientv3's API: each attempt passes it a ctx
// whose outgoing metadata carries the require-leader flag
// (withRequireLeader).
func (c *Client) request(ctx context.Context, kind requestKind, op requestOp) error {
	return c.run(ctx, kind, op, flagInContext)
}

// requestKV is request for an op that sends its request with c.invoke,
// whose call options carry the require-leader flag (requireLeaderCall): the
// ctx an attempt passes op does not.
func (c *Client) requestKV(ctx context.Context, kind requestKind, op requestOp) error {
	return c.run(ctx, kind, op, flagInCall)
}

// leaderFlag says how the requests of an op carry etcd's require-leader
// flag.
type leaderFlag bool

const (
	// flagInContext: in the outgoing metadata of the ctx the attempt passes
	// op, for requests sent through clientv3's API.
	flagInContext leaderFlag = false
	// flagInCall: in the call options of c.invoke, which op sends with.
	flagInCall leaderFlag = true
)

// run is request and requestKV.
func (c *Client) run(ctx context.Context, kind requestKind, op requestOp, flag leaderFlag) error {
	var retry *backoff.Backoff // made on the first round that fails
	start := time.Now()
	var room [8]int // the endpoints, without an allocation for up to 8
	// The last failure of each member tried, in the order they were first
	// tried, so that a round cut short by ctx still names every member, and
	// why it failed when it was last reached.
	var failed []int
	var failures map[int]string
	for {
		for _, i := range c.targets(room[:0]) {
			err := c.attempt(ctx, kind, i, op, flag)
			if err == nil {
				return nil
			}
			var f *attemptError
			if !errors.As(err, &f) {
				return err
			}
			if failures == nil {
				failures = make(map[int]string)
			}
			if _, ok := failures[i]; !ok {
				failed = append(failed, i)
				failures[i] = f.Error()
			} else if !f.cut {
				failures[i] = f.Error()
			}
			if ctx.Err() != nil {
				break
			}
		}
		if retry == nil {
			retry = backoff.New(50*time.Millisecond, 500*time.Millisecond)
		}
		if ctx.Err() != nil || !retry.Wait(ctx) {
			msgs := make([]string, len(failed))
			for k, i := range failed {
				msgs[k] = failures[i]
			}
			return errorf("no member answered within %v: %s: %w", time.Since(start).Round(time.Millisecond),
				strings.Join(msgs, "; "), context.Cause(ctx))
		}
	}
}

// attemptError is an attempt that failed in a way that allows trying the
// next member: the member did not get the request, refused it before
// proposing it, or the request is a read.
type attemptError struct {
	member conn.State
	cause  string
	err    error
	// cut: the caller's context, not the member, ended the attempt before
	// anything was sent, which says nothing new about the member.
	cut bool
}

func (e *attemptError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("%v %s", e.member, e.cause)
	}
	return fmt.Sprintf("%v %s: %v", e.member, e.cause, unprefixed{e.err})
}

func (e *attemptError) Unwrap() error { return e.err }

// wrapped is the one target of a Client made by Wrap: the caller's raw
// client, which balances over its endpoints itself.
const wrapped = -1

// targets appends to dst the endpoints a request tries, in order:
// conn.Pool.Order, or the raw client of a Client made by Wrap, whose
// requests stay on it.
func (c *Client) targets(dst []int) []int {
	if !c.owned {
		return append(dst, wrapped)
	}
	return c.streams.AppendOrder(dst)
}

// target is one member a request tries: an endpoint of the pool, or the
// wrapped raw client, whose standing the pool does not hold.
type target struct {
	c *Client
	i int
}

func (t target) conn(ctx context.Context) (*clientv3.Client, error) {
	if t.i == wrapped {
		return t.c.raw, nil
	}
	return t.c.streams.Request(ctx, t.i)
}

func (t target) state() conn.State {
	if t.i == wrapped {
		return conn.State{Endpoint: strings.Join(t.c.raw.Endpoints(), ",")}
	}
	return t.c.streams.State(t.i)
}

func (t target) sick(cause error) {
	if t.i != wrapped {
		t.c.streams.Sick(t.i, cause)
	}
}

func (t target) succeeded(id uint64, sent time.Time) {
	if t.i != wrapped {
		t.c.streams.Succeeded(t.i, id, sent)
	}
}

// attempt sends op to the member behind endpoint i. It returns nil, an
// *attemptError when the next member may be tried, or the error that ends
// the request.
func (c *Client) attempt(ctx context.Context, kind requestKind, i int, op requestOp, flag leaderFlag) error {
	t := target{c, i}
	actx, cancel := c.attemptContext(ctx)
	defer cancel()
	cli, err := t.conn(actx)
	if err != nil {
		switch {
		case errors.Is(err, ErrClosed):
			return ErrClosed
		case ctx.Err() != nil:
			// The caller's deadline, not the member, cut the dial short.
			return &attemptError{member: t.state(), cause: "was still being dialled", err: ctx.Err(), cut: true}
		case answered(err):
			// The member answered, and refused the login (wrong
			// credentials): every member would.
			return errorf("%v refused the login: %w", t.state(), err)
		}
		t.sick(err)
		return &attemptError{member: t.state(), cause: "could not be dialled", err: err}
	}
	if cause := awaitSynced(actx, cli); cause != "" {
		if ctx.Err() != nil {
			// The caller's deadline, not the member, cut the wait short.
			return &attemptError{member: t.state(), cause: "was still connecting", err: ctx.Err(), cut: true}
		}
		t.sick(errors.New(cause))
		return &attemptError{member: t.state(), cause: cause}
	}
	if i != wrapped && t.state().MemberID == 0 {
		identify(actx, c.streams, i, cli)
		if ctx.Err() == nil && actx.Err() != nil {
			// Silent before anything was sent: a write may move on.
			cause := fmt.Sprintf("did not answer within %v", c.cfg.StallTimeout)
			t.sick(errors.New(cause))
			return &attemptError{member: t.state(), cause: cause}
		}
	}
	sent := time.Now()
	sctx := actx
	if flag == flagInContext {
		sctx = withRequireLeader(actx)
	}
	hdr, err := op(sctx, cli)
	if err == nil {
		t.succeeded(hdr.GetMemberId(), sent)
		return nil
	}
	member := t.state()
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader):
		// Refused by the server's interceptor before the request reached
		// raft: a write did not apply.
		t.sick(errors.New("has no leader"))
		return &attemptError{member: t.state(), cause: "has no leader"}
	case ctx.Err() != nil:
		return c.unknown(kind, member, "was cut short by the caller's context", err)
	case refusedBeforeSending(err):
		// gRPC's own size limit: the member never saw the request, which
		// says nothing of its health.
		return err
	case answered(err):
		// The member refused the request (a compaction, a size limit, an
		// auth error...): it is healthy, and the error is the caller's.
		t.succeeded(member.MemberID, sent)
		return err
	}
	cause := "failed"
	if actx.Err() != nil {
		cause = fmt.Sprintf("did not answer within %v", c.cfg.StallTimeout)
	}
	t.sick(fmt.Errorf("%s: %w", cause, err))
	if kind == writeRequest {
		return c.unknown(kind, t.state(), cause, err)
	}
	return &attemptError{member: t.state(), cause: cause, err: err}
}

// attemptContext bounds an attempt by StallTimeout. A ctx whose deadline
// comes first bounds it already: the attempt then runs on ctx itself, as
// cancelling it would not end the attempt sooner. (context.WithTimeout
// would make a cancellable child of ctx all the same: five allocations, the
// map in which gRPC's context for the call registers included.)
func (c *Client) attemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= c.cfg.StallTimeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.StallTimeout)
}

// withRequireLeader is clientv3.WithRequireLeader without its cost per
// request (a metadata map, its slice and the context holding them, then
// gRPC's copies of them): the metadata is made once and shared, read-only,
// by every request. A ctx that carries outgoing metadata of its own gets
// clientv3.WithRequireLeader, which merges the two.
func withRequireLeader(ctx context.Context) context.Context {
	if requireLeader.key == nil || ctx.Value(requireLeader.key) != nil {
		return clientv3.WithRequireLeader(ctx)
	}
	return context.WithValue(ctx, requireLeader.key, requireLeader.md)
}

// requireLeader is the context key under which gRPC keeps a call's outgoing
// metadata (its type is gRPC's own), and the value that asks the member to
// refuse the request if it has no leader. The key is learned by asking
// gRPC for the metadata of a context that records the key it is asked for;
// if that ever fails, key is nil and withRequireLeader uses clientv3's.
var requireLeader = func() (rl struct{ key, md any }) {
	probe := &keyProbe{Context: context.Background()}
	metadata.FromOutgoingContext(probe)
	if len(probe.keys) != 1 || !reflect.TypeOf(probe.keys[0]).Comparable() {
		return rl
	}
	rl.key = probe.keys[0]
	if rl.md = clientv3.WithRequireLeader(context.Background()).Value(rl.key); rl.md == nil {
		rl.key = nil
	}
	return rl
}()

// keyProbe is a context that records the keys of the values asked of it.
type keyProbe struct {
	context.Context
	keys []any
}

func (p *keyProbe) Value(key any) any {
	p.keys = append(p.keys, key)
	return nil
}

// identify learns which member endpoint i reaches, and the members' names,
// so that errors can name it even if it never serves a request: any member
// answers a serializable member list, leader or not. A failure is left to
// the request that follows.
func identify(ctx context.Context, pool *conn.Pool, i int, cli *clientv3.Client) {
	resp, err := cli.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return
	}
	names := make(map[uint64]string, len(resp.Members))
	for _, m := range resp.Members {
		names[m.ID] = m.Name
	}
	pool.SetNames(names)
	pool.Identify(i, resp.Header.GetMemberId())
}

// unknown is the error of a request sent to a member that did not say
// whether it applied. A read's outcome does not matter: it only fails.
func (c *Client) unknown(kind requestKind, member conn.State, cause string, err error) error {
	if kind == readRequest {
		return errorf("%v %s: %w", member, cause, err)
	}
	return errorf("%w: %v %s: %w", ErrUnknownOutcome, member, cause, err)
}

// answered reports an error that is the member's refusal of the request,
// which leaves nothing open: an etcd error that says what the request
// failed on (a compaction, a size or quota limit, a permission, a missing
// lease...), or gRPC's own refusal of a message over its size limit, made
// before the request reaches etcd. Any other failure may have come after a
// write applied: a stream reset or a transport error, and the etcd errors
// of a server that stopped waiting for the outcome of a proposal it may
// have made ("server stopped", "request timed out", "leader changed":
// codes Unavailable, DeadlineExceeded, Canceled, Aborted, Unknown,
// Internal).
func answered(err error) bool {
	if errors.Is(mapServerError(err), ErrTooLarge) {
		return true
	}
	if IsRetryable(err) {
		return false
	}
	var ee rpctypes.EtcdError
	if !errors.As(err, &ee) {
		return false
	}
	switch ee.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown, codes.Internal:
		return false
	}
	return true
}

// refusedBeforeSending reports gRPC's refusal of a request over the
// call's send limit, which it makes in the client before anything is
// sent. (A message over the server's receive limit fails with the same
// code, but "received message larger than max": the member answered.)
func refusedBeforeSending(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.ResourceExhausted && strings.Contains(s.Message(), "trying to send message larger than max")
}

// awaitSynced waits, until ctx ends, for cli's connection to be up, so that a
// request is sent only on a connection that is: one that cannot connect
// proves that a write never left. It returns "" when the connection is up,
// else why the member is not reachable.
func awaitSynced(ctx context.Context, cli *clientv3.Client) string {
	cc := cli.ActiveConnection()
	for {
		switch st := cc.GetState(); st {
		case connectivity.Ready:
			return ""
		case connectivity.TransientFailure:
			return "is unreachable (its connection keeps failing)"
		case connectivity.Shutdown:
			return "is unreachable (its connection is closed)"
		case connectivity.Idle:
			cc.Connect()
			fallthrough
		default:
			if !cc.WaitForStateChange(ctx, st) {
				return "did not accept a connection in time"
			}
		}
	}
}

// read is one Get through the request runner.
func (c *Client) read(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	var resp *clientv3.GetResponse
	err := c.request(ctx, readRequest, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r, err := cli.Get(ctx, key, opts...)
		if err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return resp, err
}

// put is one Put through the request runner.
func (c *Client) put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	var resp *clientv3.PutResponse
	err := c.request(ctx, writeRequest, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r, err := cli.Put(ctx, key, val, opts...)
		if err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return resp, err
}

// del is one Delete through the request runner.
func (c *Client) del(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	var resp *clientv3.DeleteResponse
	err := c.request(ctx, writeRequest, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r, err := cli.Delete(ctx, key, opts...)
		if err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return resp, err
}

// txn is one transaction through the request runner; it is a write if any
// of its ops is.
func (c *Client) txn(ctx context.Context, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	kind := readRequest
	for _, op := range append(append([]clientv3.Op(nil), then...), els...) {
		if !op.IsGet() {
			kind = writeRequest
		}
	}
	var resp *clientv3.TxnResponse
	err := c.request(ctx, kind, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r, err := cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		if err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return resp, err
}

// requireLeaderCall carries etcd's require-leader flag (the header that
// clientv3.WithRequireLeader puts in the outgoing metadata) as a per-call
// credential. clientv3's interceptor copies a context's outgoing metadata
// twice on every call to add its own version header; a credential is added
// by gRPC itself, when it writes the call's headers.
type requireLeaderCall struct{}

// requireLeaderHeader is the flag. gRPC only reads the map a credential
// returns, so every call shares this one.
var requireLeaderHeader = map[string]string{rpctypes.MetadataRequireLeaderKey: rpctypes.MetadataHasLeader}

func (requireLeaderCall) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return requireLeaderHeader, nil
}

// RequireTransportSecurity is false: the flag is no secret, and it is sent
// on connections without TLS too.
func (requireLeaderCall) RequireTransportSecurity() bool { return false }

// kvCallOptions are the call options of a request that c.invoke sends on a
// request connection: those clientv3 gives every call on a connection that
// dialRaw made, that matter to these requests (wait for the connection, and
// its receive limit: a value may be larger than gRPC's 4 MiB default), and
// the require-leader flag. Not its send limit: the three requests invoke
// sends are a key of at most maxNameLen under the namespace and a value of
// at most MaxValueSize, which sendLimit always leaves room for. Nor the
// StaticMethod marker of gRPC's generated stubs, which only tells stats
// plugins that the method name is safe as a label. clientv3's interceptor
// copies the options into a slice of its own on every call, growing it as
// it goes: three options cost one allocation fewer than five.
func kvCallOptions() []grpc.CallOption {
	return []grpc.CallOption{
		grpc.WaitForReady(true),
		grpc.MaxCallRecvMsgSize(math.MaxInt32),
		grpc.PerRPCCredentials(requireLeaderCall{}),
	}
}

// invoke sends req, one etcdserverpb KV request, on cli's connection and
// decodes the answer into resp, as clientv3's KV does (its interceptors,
// auth token included, stay on the connection) but without its copies of
// the key and value and its call options per request. Errors are clientv3's
// (rpctypes.Error, then the context's own error if it ended the call).
// Only the request connections of a Client made by New take it: a client
// made by Wrap keeps the caller's KV, which may have been wrapped (a
// namespace, say).
func (c *Client) invoke(ctx context.Context, cli *clientv3.Client, method string, req, resp any) error {
	return clientv3.ContextError(ctx, cli.ActiveConnection().Invoke(ctx, method, req, resp, c.kvOpts...))
}

// getKey is a linearizable Get of one key through the request runner.
func (c *Client) getKey(ctx context.Context, key []byte) (*clientv3.GetResponse, error) {
	if !c.owned {
		return c.read(ctx, string(key))
	}
	var resp *pb.RangeResponse
	err := c.requestKV(ctx, readRequest, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r := new(pb.RangeResponse)
		if err := c.invoke(ctx, cli, pb.KV_Range_FullMethodName, &pb.RangeRequest{Key: key}, r); err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return (*clientv3.GetResponse)(resp), err
}

// putKey is a Put of one key through the request runner. key and val are
// sent as they are, not copied: they must not change until it returns. The
// call has no send limit of its own (see kvCallOptions): val must be within
// MaxValueSize, as encodeValue makes it.
func (c *Client) putKey(ctx context.Context, key, val []byte) (*clientv3.PutResponse, error) {
	if !c.owned {
		return c.put(ctx, string(key), string(val))
	}
	var resp *pb.PutResponse
	err := c.requestKV(ctx, writeRequest, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r := new(pb.PutResponse)
		if err := c.invoke(ctx, cli, pb.KV_Put_FullMethodName, &pb.PutRequest{Key: key, Value: val}, r); err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return (*clientv3.PutResponse)(resp), err
}

// deleteKey is a Delete of one key through the request runner.
func (c *Client) deleteKey(ctx context.Context, key []byte) (*clientv3.DeleteResponse, error) {
	if !c.owned {
		return c.del(ctx, string(key))
	}
	var resp *pb.DeleteRangeResponse
	err := c.requestKV(ctx, writeRequest, func(ctx context.Context, cli *clientv3.Client) (*pb.ResponseHeader, error) {
		r := new(pb.DeleteRangeResponse)
		if err := c.invoke(ctx, cli, pb.KV_DeleteRange_FullMethodName, &pb.DeleteRangeRequest{Key: key}, r); err != nil {
			return nil, err
		}
		resp = r
		return r.Header, nil
	})
	return (*clientv3.DeleteResponse)(resp), err
}
