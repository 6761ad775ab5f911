package etcdkit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// With Username and Password set, a Client logs in once and every
// connection it dials (the stream connection, the request connection of
// each member, a HealthMonitor's) sends the one token it got. clientv3 left
// to itself logs in (an Authenticate request: a bcrypt check of the
// password and a raft round trip) whenever a client is made and whenever it
// opens a stream, so every reconnect of the stream connection, and every
// watch or keepalive stream it opened again, waited for a login; on a busy
// cluster a short-TTL session lost its lease behind it. The connections are
// therefore dialled without the credentials, and authTokens attaches the
// token as per-RPC credentials and fetches a new one only when there is
// none yet or a member refused the one it had: an unknown or expired token
// (etcd's simple tokens live in each member's memory, and a restarted
// member has lost them; a JWT expires), or one older than the auth store.

// authenticateMethod is the gRPC method of etcd's login.
const authenticateMethod = "/etcdserverpb.Auth/Authenticate"

// authTokens is a Client's auth token, shared by every connection it dials:
// gRPC per-RPC credentials, and the unary and stream interceptors that fetch
// the token when there is none and fetch a new one when a member refuses
// it. It is nil for a Client without credentials.
type authTokens struct {
	user, password string
	// limit bounds each fetch besides its caller's context: a fetch waits
	// for its connection, and one through a silent member must end for a
	// waiting caller to try again through its own.
	limit time.Duration

	cur atomic.Pointer[authToken] // nil until the first fetch succeeded

	mu sync.Mutex
	// valid is false until a fetch succeeded and again once a member
	// refused cur: the next caller that needs the token fetches one.
	valid  bool
	flight *tokenFetch // the fetch in progress, nil if none
}

// authToken is one token and the metadata that carries it, made once:
// gRPC only reads the map credentials return.
type authToken struct {
	value string
	md    map[string]string // nil when auth is off on the cluster
}

// tokenFetch is one fetch in progress; err is set before done is closed.
type tokenFetch struct {
	done chan struct{}
	err  error
}

// newAuthTokens returns the token holder of a Client made with cfg, nil if
// cfg has no credentials.
func newAuthTokens(cfg Config) *authTokens {
	if cfg.Username == "" {
		return nil
	}
	return &authTokens{user: cfg.Username, password: cfg.Password, limit: cfg.DialTimeout}
}

// dialOptions attach the token to every call on a connection.
func (t *authTokens) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithPerRPCCredentials(t),
		grpc.WithChainUnaryInterceptor(t.unary),
		grpc.WithChainStreamInterceptor(t.stream),
	}
}

// has reports whether a valid token is at hand: a dial then needs no login.
func (t *authTokens) has() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.valid
}

// GetRequestMetadata attaches the current token, except to the login
// itself.
func (t *authTokens) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if ctx.Value(loginKey{}) != nil {
		return nil, nil
	}
	if tok := t.cur.Load(); tok != nil {
		return tok.md, nil
	}
	return nil, nil
}

// RequireTransportSecurity is false: etcd takes a token over plain
// connections too, as clientv3's own credentials do.
func (t *authTokens) RequireTransportSecurity() bool { return false }

// loginKey marks the context of a login, which carries no token.
type loginKey struct{}

// ensure makes sure a valid token is at hand, fetching one through cc if
// there is none, bounded by ctx. Concurrent callers share one fetch; one
// whose shared fetch failed (through another member, or out of the time of
// another caller) tries again through its own connection while ctx lasts.
// A failed fetch returns clientv3's error for it: rpctypes.ErrAuthFailed for
// wrong credentials, the connection's or the context's error otherwise.
func (t *authTokens) ensure(ctx context.Context, cc *grpc.ClientConn) error {
	for {
		t.mu.Lock()
		if t.valid {
			t.mu.Unlock()
			return nil
		}
		f := t.flight
		if f == nil {
			f = &tokenFetch{done: make(chan struct{})}
			t.flight = f
			t.mu.Unlock()
			t.fetch(ctx, cc, f)
			return f.err
		}
		t.mu.Unlock()
		select {
		case <-f.done:
			if f.err == nil {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fetch logs in through cc for f, bounded by ctx and t.limit, and records
// the token.
func (t *authTokens) fetch(ctx context.Context, cc *grpc.ClientConn, f *tokenFetch) {
	ctx = context.WithValue(ctx, loginKey{}, true)
	if t.limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.limit)
		defer cancel()
	}
	// Like clientv3's login, it waits for the connection.
	resp, err := pb.NewAuthClient(cc).Authenticate(ctx, &pb.AuthenticateRequest{Name: t.user, Password: t.password},
		grpc.WaitForReady(true))
	err = clientv3.ContextError(ctx, err)
	var tok *authToken
	switch {
	case err == nil:
		tok = &authToken{value: resp.Token}
		if resp.Token != "" {
			tok.md = map[string]string{rpctypes.TokenFieldNameGRPC: resp.Token}
		}
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		// As clientv3 does: no token while the cluster has auth off; a
		// request refused once it is on (rpctypes.ErrUserEmpty) fetches one.
		tok, err = &authToken{}, nil
	}
	t.mu.Lock()
	if err == nil {
		t.cur.Store(tok)
		t.valid = true
	}
	t.flight = nil
	f.err = err
	t.mu.Unlock()
	close(f.done)
}

// refused records that a member refused tok: the next caller that needs
// the token fetches a new one. A refusal of a token already replaced is
// ignored.
func (t *authTokens) refused(tok *authToken) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur.Load() == tok {
		t.valid = false
	}
}

// unary sends a call with the token, fetching one first if there is none;
// a call a member refuses for its token fetches a new one and is sent once
// more. A failed fetch fails the call with the fetch's error.
func (t *authTokens) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == authenticateMethod {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	if err := t.ensure(ctx, cc); err != nil {
		return err
	}
	tok := t.cur.Load()
	err := invoker(ctx, method, req, reply, cc, opts...)
	if !tokenRefused(err) {
		return err
	}
	t.refused(tok)
	if err := t.ensure(ctx, cc); err != nil {
		return err
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// stream opens a stream with the token, fetching one first if there is
// none, and watches it for a refusal of the token (see authStream).
func (t *authTokens) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if err := t.ensure(ctx, cc); err != nil {
		return nil, err
	}
	tok := t.cur.Load()
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		if tokenRefused(err) {
			t.refused(tok)
		}
		return nil, err
	}
	return &authStream{ClientStream: cs, t: t, tok: tok}, nil
}

// authStream is a stream opened with tok. A member checks a stream's token
// when the stream ends (a keepalive stream fails with the refusal) or, for
// a watch stream, at every watch it creates on it, which it cancels with
// the refusal as its reason. The refusal marks tok refused, so that the
// next stream fetches a new token. A watch stream on which a watch was
// refused for its token ends with an Unauthenticated error: the stream
// keeps the token it was opened with, so every watch created on it would be
// refused too, and clientv3 would keep the stream as long as other watches
// use it. The watches on it end with that error, which is not terminal, and
// are created again on a new stream, with the new token.
type authStream struct {
	grpc.ClientStream
	t   *authTokens
	tok *authToken
}

func (s *authStream) RecvMsg(m any) error {
	if err := s.ClientStream.RecvMsg(m); err != nil {
		if tokenRefused(err) {
			s.t.refused(s.tok)
		}
		return err
	}
	if wr, ok := m.(*pb.WatchResponse); ok && wr.Canceled && refusedReason(wr.CancelReason) {
		s.t.refused(s.tok)
		return status.Errorf(codes.Unauthenticated, "etcdkit: the member refused the auth token of the watch stream: %s",
			wr.CancelReason)
	}
	return nil
}

// tokenRefusals are the errors with which a member refuses a token: one it
// does not know (an expired or lost simple token, an expired JWT), one
// older than its auth store, or none at all.
var tokenRefusals = []error{rpctypes.ErrInvalidAuthToken, rpctypes.ErrAuthOldRevision, rpctypes.ErrUserEmpty}

// tokenRefused reports whether err is a member's refusal of the token.
func tokenRefused(err error) bool {
	if err == nil {
		return false
	}
	err = rpctypes.Error(err)
	for _, r := range tokenRefusals {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// refusedReason reports whether a watch's cancel reason is a refusal of
// the token. The member writes the whole gRPC error there.
func refusedReason(reason string) bool {
	if reason == "" {
		return false
	}
	for _, r := range []error{rpctypes.ErrGRPCInvalidAuthToken, rpctypes.ErrGRPCAuthOldRevision, rpctypes.ErrGRPCUserEmpty} {
		if strings.Contains(reason, rpctypes.ErrorDesc(r)) {
			return true
		}
	}
	return false
}
