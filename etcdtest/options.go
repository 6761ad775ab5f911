package etcdtest

import (
	"os"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// The default timing is chosen so that a three-member cluster elects a
// leader in well under a second, yet does not hold spurious elections on a
// loaded two-core machine running tests with -race. etcd's own defaults are
// 100 ms and 1 s. The election timeout also sets etcd's request timeout,
// 5 s + 2 × election, after which a request that cannot commit fails.
const (
	// DefaultTick is the heartbeat interval of every member unless
	// WithTiming says otherwise: 50 ms.
	DefaultTick = 50 * time.Millisecond
	// DefaultElection is the election timeout of every member unless
	// WithTiming says otherwise: 500 ms, ten heartbeats. A cluster notices
	// a dead leader and elects another within about that long.
	DefaultElection = 500 * time.Millisecond
)

// stopGrace bounds how long Stop lets client requests and streams finish
// once the member stopped serving new ones.
const stopGrace = time.Second

// readyTimeout bounds the wait for a member (or a whole cluster) to become
// ready. It is generous because the race detector and a busy machine can
// slow a cold start down by an order of magnitude.
const readyTimeout = 30 * time.Second

// An Option changes how Start and StartCluster configure their members.
// Options are applied in order; WithConfig functions run after all others.
// A nil Option is an error, as in the etcdkit package: Start and
// StartCluster fail the test, New and NewCluster return the error.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	tick, election time.Duration
	quota          int64
	clientTLS      *transport.TLSInfo
	withProxy      bool
	auth           bool
	logs           bool
	configs        []func(*embed.Config)
	// binary is the etcd executable members run as, "" for in-process
	// members.
	binary string
	flags  []string
}

func buildOptions(t testing.TB, opts []Option) *options {
	t.Helper()
	o := &options{tick: DefaultTick, election: DefaultElection, binary: os.Getenv(BinaryEnv)}
	for i, opt := range opts {
		if opt == nil {
			t.Fatalf("etcdtest: option %d is nil", i)
		}
		opt.apply(o)
	}
	if o.binary != "" && len(o.configs) > 0 {
		t.Fatalf("etcdtest: WithConfig changes an embedded member's configuration, but members run as processes of %s (WithBinary or %s); use WithFlags", o.binary, BinaryEnv)
	}
	if o.binary == "" && len(o.flags) > 0 {
		t.Fatalf("etcdtest: WithFlags needs members that run as processes (WithBinary or %s); in-process members take WithConfig", BinaryEnv)
	}
	return o
}

// BinaryEnv is the environment variable that makes every member run as a
// process of the etcd binary it names, as if each Start, StartCluster, New
// and NewCluster had WithBinary(os.Getenv(BinaryEnv)) as its first option.
// It lets a whole test suite run against another etcd release without
// changing a test. A later WithBinary overrides it.
const BinaryEnv = "ETCDTEST_BINARY"

// WithBinary makes each member run as a process of the etcd executable at
// path, an etcd 3.5, 3.6 or 3.7 server, instead of inside the test
// process; "" means in-process members, overriding BinaryEnv. A process
// member offers the same methods, with the differences their docs state:
// Server.Etcd returns nil and WithConfig is refused (WithFlags passes
// server flags instead), while Server.Freeze and Server.Thaw and a Kill
// that is a real SIGKILL show faults an in-process member cannot.
func WithBinary(path string) Option {
	return optionFunc(func(o *options) { o.binary = path })
}

// WithFlags adds command-line flags, such as
// "--auto-compaction-retention=1", to every start of a process member
// (see WithBinary), after the flags etcdtest sets, so that they win where
// etcd takes the last of repeated flags. The flags must suit the binary's
// release: etcd 3.6 renamed most --experimental-* flags and 3.7 dropped the
// old names. The same rules as for WithConfig apply to names, directories
// and URLs. WithFlags with in-process members fails the start.
func WithFlags(flags ...string) Option {
	return optionFunc(func(o *options) { o.flags = append(o.flags, flags...) })
}

// WithConfig registers f to change each member's embed.Config after every
// default and every other option has been applied, so f has the last word
// on anything: client certificate auth, auto-compaction, snapshot counts.
// f runs before each start of a member, including restarts, and must not
// change the member's name, data directory or URLs unless the test accepts
// that Restart, Endpoint and the cluster's bookkeeping stop working.
// Several WithConfig options run in the order given.
func WithConfig(f func(*embed.Config)) Option {
	return optionFunc(func(o *options) { o.configs = append(o.configs, f) })
}

// WithClientTLS makes each member serve its clients over TLS with info: the
// client URLs become https and info becomes the member's ClientTLSInfo.
// Peers still talk plain HTTP. Endpoint keeps its "127.0.0.1:PORT" form, and
// Client dials with info.ClientConfig(), so info's certificate must be valid
// for 127.0.0.1 or self-signed (see transport.SelfCert).
func WithClientTLS(info transport.TLSInfo) Option {
	return optionFunc(func(o *options) { o.clientTLS = &info })
}

// WithProxy puts each member's client endpoint behind its own
// fault-injection proxy (see package proxy), reachable at
// Server.ProxyEndpoint and controlled through Server.Proxy. Endpoint stays
// direct, and Cluster.Endpoints returns the proxied addresses. The members'
// advertised client URLs are the direct ones, so a client that syncs its
// endpoints from the member list (clientv3 AutoSyncInterval) leaves the
// proxies behind.
func WithProxy() Option {
	return optionFunc(func(o *options) { o.withProxy = true })
}

// WithTiming sets the heartbeat interval and the election timeout of every
// member, rounded down to whole milliseconds. The defaults are DefaultTick
// and DefaultElection. etcd requires election to be at least five ticks.
func WithTiming(tick, election time.Duration) Option {
	return optionFunc(func(o *options) { o.tick, o.election = tick, election })
}

// WithQuotaBackendBytes sets each member's backend quota, so that a test can
// fill it and observe the NOSPACE alarm. Zero keeps etcd's default of 2 GiB.
func WithQuotaBackendBytes(n int64) Option {
	return optionFunc(func(o *options) { o.quota = n })
}

// WithLogs prints the tail of each member's captured log through t.Log if
// the test has failed by the time the member is cleaned up. Setting the
// environment variable ETCDKIT_TEST_LOGS=1 has the same effect for every
// test. Logs are never printed for tests that pass.
func WithLogs() Option {
	return optionFunc(func(o *options) { o.logs = true })
}
