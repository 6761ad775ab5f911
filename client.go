package etcdkit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/etcdkit/etcdkit/internal/backoff"
	"github.com/etcdkit/etcdkit/internal/conn"
	"github.com/etcdkit/etcdkit/internal/watch"
)

// Client is a connection to an etcd cluster under one namespace. It is safe
// for concurrent use. Keys, prefixes, watches, sessions and the other handles
// are made from it and end when it is closed.
//
// Requests on a sick member. Reads, writes and transactions of keys and
// prefixes ([Key.Get], [Key.Put], [Key.Create], [Key.CompareAndSwap],
// [Key.Update], [Key.Delete], [Prefix.List]) go to one member at a time,
// through a connection pinned to each configured endpoint: the member the
// watch and lease streams use while it answers, else the one that answered
// last. Each attempt is bounded by [Config.StallTimeout] and sent with
// etcd's require-leader flag, so that a member that lost its leader refuses
// it at once instead of holding it until its own request timeout. A member
// that refuses, does not answer in time, or cannot be connected to is
// recorded as sick, with the cause, and the request moves on to the next
// member, the healthy ones first. So a request issued while its member is
// partitioned from its peers (once the member knows it has no leader: an
// election timeout), blackholed after a failure was recorded, or stopped
// completes on a healthy member within StallTimeout plus a fraction of a
// second.
//
// A read may be sent anywhere again. A write is sent again only when it
// provably did not apply: the member refused it before proposing it ("no
// leader"), or it was never sent (the connection was not up). A write that
// was sent and got no answer (a silent member, a broken connection, the
// caller's context ending while it was in flight) fails at once with
// [ErrUnknownOutcome], naming the member and the cause: it may have
// applied, or may still. See ErrUnknownOutcome for how to retry a Create,
// CompareAndSwap or Update safely. When no member serves a request before
// its context ends, the error lists each member and why ("no member
// answered within 5s: member m0 (127.0.0.1:2379) is unreachable...; member
// m1 (...) has no leader; ...").
//
// The record of each endpoint's standing is the client's one view of its
// members' health: the watch and lease streams leave a member the requests
// found sick and the other way round, and a [HealthMonitor]'s probes feed
// it and report it in [ClusterHealth].Endpoints. Pinning gives up the load
// spreading of clientv3's round robin: one client's requests all go to one
// member while it is healthy. Many clients spread over the members as their
// endpoint lists and failures do; a client that must spread its own load
// should list its endpoints in a different order per process. In exchange a
// sick member costs at most one attempt, where round robin sends one
// request in n to it until the request times out. Every request of the
// library's handles follows these rules, the guarded writes of a
// [Leadership], [Lock] or [Permit] included. [Client.Raw] still
// round-robins, and calls made through it move nowhere. A Client made by
// [Wrap] sends its requests through the wrapped client, which picks the
// member.
type Client struct {
	raw   *clientv3.Client
	owned bool
	cfg   Config
	ns    string // the prefix of every key: keyPrefix(cfg.Namespace)
	log   *zap.Logger

	// life is cancelled by Close; every handle's goroutines watch it.
	life   context.Context
	cancel context.CancelFunc

	streams *conn.Pool  // the stream connection: watches, keepalives
	tokens  *authTokens // the auth token of every connection; nil without credentials
	kas     keepAlives  // the sessions' shared keepalive stream
	hub     *watch.Hub  // shared etcd watches

	// kvOpts are the call options of the requests that invoke sends
	// (kvCallOptions).
	kvOpts []grpc.CallOption

	// spawnMu orders spawn against Close so that no goroutine starts after
	// Close began waiting for them.
	spawnMu sync.Mutex
	wg      sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New connects to the cluster described by cfg. It blocks until a member
// answers, the DialTimeout passes or ctx ends, so that wrong endpoints,
// certificates or credentials fail here with a clear error rather than on the
// first request. An endpoint that is not "host:port" (or a URL or unix socket
// of that form) fails at once, before any dial. When no member answers, the
// error says for each endpoint why it could not be reached ("connection
// refused", "no such host", a TLS handshake failure). ctx bounds only this
// call. With Config.StartWithoutCluster, New waits for nothing: it fails
// only on a Config it cannot use, and checks the cluster in the background.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdkit: config: no endpoints")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tokens := newAuthTokens(cfg)
	if cfg.StartWithoutCluster {
		raw, err := dialRaw(ctx, cfg, tokens, loginLater, cfg.Endpoints)
		if err != nil {
			return nil, err
		}
		c := newClient(raw, true, cfg, tokens)
		c.spawn(c.reachCluster)
		return c, nil
	}
	raw, err := dialRaw(ctx, cfg, tokens, loginFirst, cfg.Endpoints)
	if err != nil {
		return nil, err
	}
	members, err := probe(ctx, raw, cfg, cfg.DialTimeout)
	if err != nil {
		_ = raw.Close()
		return nil, err
	}
	c := newClient(raw, true, cfg, tokens)
	c.streams.SetNames(members)
	return c, nil
}

// Wrap makes a Client over an existing raw client, which stays the caller's:
// Close does not close it. Unlike New, it does not wait for the cluster: it
// returns at once, whether or not any member can be reached, so that a
// service can start while etcd is down (a Live value then serves its
// snapshot or default until the cluster answers). cfg supplies the namespace and the other options;
// its Endpoints default to raw's. The watch and lease engines open their own
// connections to those endpoints with cfg's TLS and credentials, so set them
// as for raw. Requests go through raw, whose gRPC send limit
// (clientv3.Config.MaxCallSendMsgSize, 2 MiB by default) must then leave
// room for values of cfg.MaxValueSize. They are still bounded by
// StallTimeout per attempt and sent with etcd's require-leader flag, a read
// is retried and a write only when it provably did not apply; but raw picks
// the member, so they do not follow the client's view of its members'
// health (see Requests on a sick member, under [Client]). A service that
// must start while etcd is down and keep that failover uses New with
// Config.StartWithoutCluster instead.
func Wrap(raw *clientv3.Client, cfg Config) (*Client, error) {
	if raw == nil {
		return nil, errors.New("etcdkit: Wrap: nil client")
	}
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = raw.Endpoints()
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdkit: config: no endpoints")
	}
	return newClient(raw, false, cfg, newAuthTokens(cfg)), nil
}

func newClient(raw *clientv3.Client, owned bool, cfg Config, tokens *authTokens) *Client {
	c := &Client{raw: raw, owned: owned, cfg: cfg, log: cfg.Logger, kvOpts: kvCallOptions(), tokens: tokens}
	// withDefaults validated the namespace.
	c.ns, _ = keyPrefix(cfg.Namespace)
	c.life, c.cancel = context.WithCancel(context.Background())
	c.streams = conn.New(conn.Config{
		Endpoints: cfg.Endpoints,
		Dial: func(ctx context.Context, ep string) (*clientv3.Client, error) {
			return dialRaw(ctx, cfg, tokens, loginFirst, []string{ep})
		},
		// A dial is an attempt like a request's: with auth on, the first
		// one fetches the client's token, which a silent member does not
		// give.
		DialTimeout:    min(cfg.DialTimeout, cfg.StallTimeout),
		MaxDialTimeout: cfg.DialTimeout,
		DialRequest: func(ctx context.Context, ep string) (*clientv3.Client, error) {
			return dialRaw(ctx, cfg, tokens, loginFirst, []string{ep}, func(rc *clientv3.Config) {
				// The request runner moves a request to another member
				// itself; clientv3 retrying it on the same one would spend
				// the attempt. Two, not one, so that a request refused
				// for its auth token twice (a new token refused again, as
				// the auth store changed meanwhile) is still sent once more.
				rc.MaxUnaryRetries = 2
			})
		},
		Life:      c.life,
		Log:       c.log,
		Closed:    ErrClosed,
		Retryable: IsRetryable,
		OnStall:   func() { cfg.Metrics.Add(MetricWatchStalls, 1) },
	})
	c.hub = watch.NewHub(watch.Config{
		Life:         c.life,
		Spawn:        c.spawn,
		Log:          c.log,
		StallTimeout: cfg.StallTimeout,
		Conns:        c.streams,
		Get:          c.get,
		PageSize:     func() int64 { return listPageSize },
		Closed:       ErrClosed,
		Compacted:    ErrCompacted,
		Observe: watch.Observer{
			Stalled:     func() { cfg.Metrics.Add(MetricWatchStalls, 1) },
			Reconnected: func() { cfg.Metrics.Add(MetricWatchReconnects, 1) },
			Resynced:    func() { cfg.Metrics.Add(MetricWatchResyncs, 1) },
			Lag:         func(n int) { cfg.Metrics.Set(MetricSubscriberLag, float64(n)) },
		},
	})
	return c
}

// get is one read through the request runner, bounded by opContext.
func (c *Client) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	return c.read(ctx, key, opts...)
}

// onStreams runs op on the stream connection, retrying on the next member
// as conn.Pool.Do says, until it succeeds, fails for good or ctx ends.
func (c *Client) onStreams(ctx context.Context, attempt time.Duration, op func(context.Context, *clientv3.Client) error) error {
	return c.streams.Do(ctx, attempt, op)
}

// requestOverhead is the room a request needs besides its value: the key
// (a name of at most maxNameLen under a namespace of at most as much), the
// comparisons of a transaction and the protobuf framing.
const requestOverhead = 64 << 10

// grpcDefaultSendLimit is clientv3's default gRPC send limit, which the
// client never goes below.
const grpcDefaultSendLimit = 2 << 20

// sendLimit is the gRPC send limit for cfg: room for a request carrying a
// value of MaxValueSize.
func sendLimit(cfg Config) int {
	if cfg.MaxValueSize > math.MaxInt32-requestOverhead {
		return math.MaxInt32
	}
	return max(cfg.MaxValueSize+requestOverhead, grpcDefaultSendLimit)
}

// loginMode says whether dialRaw logs in before it returns.
type loginMode bool

const (
	// loginFirst: with credentials and no token at hand, dialRaw fetches
	// one before it returns, which proves the endpoint and credentials.
	loginFirst loginMode = true
	// loginLater: the first call on the client fetches the token.
	loginLater loginMode = false
)

// dialRaw builds a raw client for endpoints with cfg's TLS, keepalive, a
// send limit that fits MaxValueSize and a reconnect backoff short enough
// that a healed link is used again within a fraction of a second, then
// cfg.DialOptions; tweaks adjust the clientv3 configuration last. ctx bounds
// the dial, not the client's life. With credentials, the client sends the
// token tokens holds (see authTokens), not clientv3's own; when there is
// none yet, dialRaw fetches it through the new client before it returns,
// bounded by ctx and DialTimeout, and a single endpoint that refuses
// connections fails at once rather than after the whole wait, so that the
// caller moves on to the next member. With a token at hand, or with
// loginLater, it does not wait for the connection, as without credentials: the
// first call fetches the token then.
func dialRaw(ctx context.Context, cfg Config, tokens *authTokens, mode loginMode, endpoints []string, tweaks ...func(*clientv3.Config)) (*clientv3.Client, error) {
	login := tokens != nil && !tokens.has() && mode == loginFirst
	if login && len(endpoints) == 1 {
		// The token request waits for a connection that a refused one
		// never becomes; one plain dial tells at once.
		if err := dialOnce(ctx, cfg, endpoints[0]); err != nil {
			return nil, errorf("connect to %v: %w", endpoints, err)
		}
	}
	// The client's life is base's; base ends with ctx only while the
	// client is being made, which bounds the token request.
	base, abort := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, abort)
	rc := clientv3.Config{
		Endpoints:            endpoints,
		MaxCallSendMsgSize:   sendLimit(cfg),
		MaxCallRecvMsgSize:   math.MaxInt32,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.KeepAliveTime,
		DialKeepAliveTimeout: cfg.KeepAliveTimeout,
		// etcd's servers refuse keepalive pings on a connection without
		// streams (GOAWAY too_many_pings), so idle connections do not ping.
		PermitWithoutStream: false,
		TLS:                 cfg.TLS,
		// No Username and Password: clientv3 would log in for every
		// client and every stream; tokens' credentials carry the token.
		Logger:  clientLogger(cfg.Logger),
		Context: base,
		DialOptions: []grpc.DialOption{
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: grpcbackoff.Config{
					BaseDelay:  50 * time.Millisecond,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   time.Second,
				},
				MinConnectTimeout: cfg.DialTimeout,
			}),
		},
	}
	if tokens != nil {
		rc.DialOptions = append(rc.DialOptions, tokens.dialOptions()...)
	}
	rc.DialOptions = append(rc.DialOptions, cfg.DialOptions...)
	for _, tweak := range tweaks {
		tweak(&rc)
	}
	raw, err := clientv3.New(rc)
	if err == nil && login {
		if err = tokens.ensure(base, raw.ActiveConnection()); err != nil {
			_ = raw.Close()
		}
	}
	if !stop() {
		// ctx ended while the client was made: its life has ended too.
		if err == nil {
			_ = raw.Close()
		}
		err = context.Cause(ctx)
	}
	if err != nil {
		return nil, errorf("connect to %v: %w", endpoints, err)
	}
	return raw, nil
}

// probe asks the cluster for its member list (served by any member, leader
// or not, and open to every user) to prove that the endpoints, certificates
// and credentials work. It returns the members' names by ID, which errors
// use to name a member.
func probe(ctx context.Context, raw *clientv3.Client, cfg Config, timeout time.Duration) (map[uint64]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := raw.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		// gRPC hides why it could not connect (a refused connection, an
		// unknown host, a failed TLS handshake) behind the deadline; dial
		// each endpoint once ourselves so the error says it.
		if derr := diagnoseEndpoints(cfg); derr != nil {
			return nil, errorf("connect to %v: %w (%w)", cfg.Endpoints, err, derr)
		}
		return nil, errorf("connect to %v: %w", cfg.Endpoints, err)
	}
	names := make(map[uint64]string, len(resp.Members))
	for _, m := range resp.Members {
		names[m.ID] = m.Name
	}
	return names, nil
}

// reachCluster is New's check of the cluster (see probe) for a Client made
// with StartWithoutCluster, run in the background: again and again, with
// backoff, until a member answers or the Client is closed. Each distinct
// failure is logged once at Warn; once a member answers, the members'
// names are learned (errors name members by them) and, if a failure was
// logged, that the cluster was reached is logged at Info.
func (c *Client) reachCluster() {
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	logged := make(map[string]bool)
	// Each check is bounded as a re-dial is (see DialTimeout).
	attempt := min(c.cfg.DialTimeout, c.cfg.StallTimeout)
	for {
		members, err := probe(c.life, c.raw, c.cfg, attempt)
		if err == nil {
			c.streams.SetNames(members)
			if len(logged) > 0 {
				c.log.Info("etcdkit: reached the cluster", zap.Strings("endpoints", c.cfg.Endpoints))
			}
			return
		}
		if c.life.Err() != nil {
			return
		}
		// The failures of endpoints that stay down read the same every
		// time; a bound keeps a changing one from growing the set.
		if msg := err.Error(); !logged[msg] && len(logged) < 16 {
			logged[msg] = true
			c.log.Warn("etcdkit: the cluster has not answered yet; requests fail until a member does", zap.Error(err))
		}
		if !retry.Wait(c.life) {
			return
		}
		attempt = min(2*attempt, c.cfg.DialTimeout)
	}
}

// endpointErrors lists why each endpoint could not be reached.
type endpointErrors []error

func (e endpointErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e endpointErrors) Unwrap() []error { return e }

// diagnoseEndpoints dials every endpoint once, with a TLS handshake when
// cfg.TLS is set, and returns the failures, one per endpoint that failed, or
// nil if every endpoint answered.
func diagnoseEndpoints(cfg Config) error {
	errs := make([]error, len(cfg.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range cfg.Endpoints {
		wg.Go(func() {
			if err := dialOnce(context.Background(), cfg, ep); err != nil {
				errs[i] = fmt.Errorf("%s: %w", ep, err)
			}
		})
	}
	wg.Wait()
	var failed endpointErrors
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return failed
}

// diagnoseTimeout bounds each dial of diagnoseEndpoints, which comes after
// the probe already waited DialTimeout: a refused connection or an unknown
// host fails at once, a silent endpoint has had its chance.
const diagnoseTimeout = time.Second

// dialOnce connects to ep as the client would, bounded by ctx, DialTimeout
// and diagnoseTimeout, and closes the connection.
func dialOnce(ctx context.Context, cfg Config, ep string) error {
	network, addr, err := endpointAddr(ep)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, min(cfg.DialTimeout, diagnoseTimeout))
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if cfg.TLS == nil {
		return nil
	}
	tc := cfg.TLS.Clone()
	if tc.ServerName == "" && network == "tcp" {
		tc.ServerName, _, _ = net.SplitHostPort(addr)
	}
	if err := tls.Client(conn, tc).HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return nil
}

// Close ends every handle made from the client (watches, sessions, caches...
// report ErrClosed), closes the connections the client opened, and returns
// once they are closed. A raw client passed to Wrap stays open. Close is
// idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.spawnMu.Lock()
		c.cancel()
		c.spawnMu.Unlock()
		c.wg.Wait()
		c.streams.Close()
		if c.owned {
			c.closeErr = c.raw.Close()
		}
	})
	return c.closeErr
}

// Raw returns the underlying clientv3 client, for what etcdkit does not
// cover. Keys written through it are not namespaced.
func (c *Client) Raw() *clientv3.Client { return c.raw }

// Namespace returns Config.Namespace as given ("" for none). To build raw
// etcd keys, use KeyPrefix.
func (c *Client) Namespace() string { return c.cfg.Namespace }

// KeyPrefix returns the prefix of the etcd key of every name under the
// client's namespace: name "db" is at KeyPrefix()+"db". It is "/app/" for
// Namespace "/app/" or "/app", "app/" for "app/" or "app", "/" for "/", and
// "" for none. Use it to build keys for raw clientv3 calls, such as the ops of
// Leadership.Txn.
func (c *Client) KeyPrefix() string { return c.ns }

// spawn runs f in a goroutine that Close waits for, unless the client is
// closed, in which case it reports false and does not run f. f must return
// soon after c.life ends.
func (c *Client) spawn(f func()) bool {
	c.spawnMu.Lock()
	defer c.spawnMu.Unlock()
	if c.closed() {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// hold registers a handle whose end Client.Close waits for, as spawn does for
// a goroutine; the handle calls c.wg.Done when it has ended. It reports false
// if the client is closed.
func (c *Client) hold() bool {
	c.spawnMu.Lock()
	defer c.spawnMu.Unlock()
	if c.closed() {
		return false
	}
	c.wg.Add(1)
	return true
}

// String describes the client by its Config (defaults applied), without
// its secrets, as Config.String does.
func (c *Client) String() string {
	if c == nil {
		return "<nil>"
	}
	return "etcdkit.Client" + c.cfg.String()
}

// Format prints c with String for every verb, %+v and %#v included, which
// would otherwise print its fields, its Config's Password among them.
func (c *Client) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

// closed reports whether Close was called.
func (c *Client) closed() bool { return c.life.Err() != nil }

// opContext derives the context of one request: ctx itself if it has a
// deadline, else ctx bounded by RequestTimeout. Requests in flight when the
// client is closed end because Close closes the connection; requests made
// after Close fail with ErrClosed at once.
func (c *Client) opContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if c.closed() {
		return nil, nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	return ctx, cancel, nil
}

// cause returns the error to report for a failed request: ErrClosed when the
// client was closed meanwhile, err otherwise.
func (c *Client) cause(err error) error {
	if err != nil && c.closed() && !errors.Is(err, ErrClosed) {
		return errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// path returns the etcd key of a name under the namespace.
func (c *Client) path(name string) string { return c.ns + name }
