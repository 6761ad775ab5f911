package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit/proxy"
)

// ErrClosed is returned by Restart once the member has been closed, by Close
// or by the cleanup of the test that started it.
var ErrClosed = errors.New("etcdtest: member closed")

// A Server is one etcd member listening on 127.0.0.1, running inside the
// test process or, with WithBinary or BinaryEnv, as a process of an etcd
// binary. Start returns a single-member Server; the members of a Cluster
// are Servers too. All methods are safe for concurrent use, and Stop, Kill,
// Restart and Close are safe to call after the test's cleanup has run
// (Restart fails with ErrClosed, the others do nothing).
type Server struct {
	g          *group
	name       string
	clientPort int
	peerPort   int // advertised, served by link
	listenPort int // where etcd listens for peers
	link       *peerLink
	dir        string
	logs       *logBuffer
	proxy      *proxy.Proxy // nil without WithProxy

	// life serialises starting and stopping the member.
	life sync.Mutex

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
	// grpcs are the running member's client gRPC servers, as etcd creates
	// them, so that stopping the member can end its client connections.
	grpcs       []*grpc.Server
	id          uint64
	partitioned bool

	// For a process member: the running process (nil while stopped),
	// whether Freeze stopped it, and the client etcdtest queries it with.
	proc   *process
	frozen bool
	ctl    *clientv3.Client
}

// Start starts one etcd member on 127.0.0.1 with free client and peer ports
// and a data directory under t.TempDir(), waits until it is ready to serve,
// and registers t.Cleanup to stop it. It fails the test with t.Fatal if the
// member cannot be started or is not ready within 30 seconds.
//
// The member's logs are kept in memory and printed only for failed tests
// that asked for them (see WithLogs). Its defaults suit tests, not
// production: fsync is off (data survives Restart, not a machine crash),
// the gRPC gateway is off, and timing is DefaultTick and DefaultElection.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return startGroup(t, 1, buildOptions(t, opts)).members[0]
}

// Name returns the member's etcd name: "m0", "m1", ... in cluster order.
func (s *Server) Name() string { return s.name }

// ID returns the member's etcd member ID. It does not change across Restart.
func (s *Server) ID() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// Endpoint returns the member's direct client address, "127.0.0.1:PORT",
// without a scheme so that it serves plain and TLS clients alike. The
// address stays the same across Stop and Restart.
func (s *Server) Endpoint() string {
	return "127.0.0.1:" + strconv.Itoa(s.clientPort)
}

// ProxyEndpoint returns the address of the member's proxy,
// "127.0.0.1:PORT", or "" if the member was started without WithProxy. The
// proxy forwards to Endpoint and keeps listening while the member is stopped.
func (s *Server) ProxyEndpoint() string {
	if s.proxy == nil {
		return ""
	}
	return s.proxy.Addr()
}

// Proxy returns the fault-injection proxy in front of the member's client
// endpoint, or nil if the member was started without WithProxy. The proxy
// is closed by the test's cleanup; a test may Stop and Start it, and must
// not Close it.
func (s *Server) Proxy() *proxy.Proxy { return s.proxy }

// NewProxy starts a fault-injection proxy of its own in front of the
// member's client endpoint, on a free 127.0.0.1 port, and closes it when
// the test ends. Give one to each client whose link to the member a test
// cuts off, so that the other clients, on Endpoint or ProxyEndpoint, keep
// theirs. It works with or without WithProxy, and like ProxyEndpoint's
// proxy it keeps listening while the member is stopped.
func (s *Server) NewProxy(t testing.TB) *proxy.Proxy {
	t.Helper()
	p, err := proxy.New(s.Endpoint())
	if err != nil {
		t.Fatalf("etcdtest: proxy for member %s: %v", s.Name(), err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// PeerURL returns the URL the member's peers reach it on,
// "http://127.0.0.1:PORT". The port is the member's for the test's whole
// life, across Stop and Restart.
func (s *Server) PeerURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(s.peerPort)
}

// Etcd returns the running embedded member, or nil while it is stopped. The
// value changes on every Restart; do not Close it, use Stop. A process
// member (see WithBinary) has no embedded server: Etcd always returns nil
// for it, and a test that needs etcd's internals must use in-process
// members.
func (s *Server) Etcd() *embed.Etcd {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd
}

// Running reports whether the member has been started and not stopped since.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil || s.proc != nil
}

// Client returns a raw clientv3 client connected directly to this member
// (never through its proxy), using the member's client TLS if it has any.
// The client is closed by t.Cleanup. Creating it does not wait for a
// connection, so it works on a stopped member too; except WithAuth, where
// the client authenticates as RootUser when it is made, which needs the
// member running.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return s.g.client(t, []string{s.Endpoint()})
}

// Stop stops the member gracefully, as etcd does on SIGTERM: a leader hands
// leadership to another member first (unless the member or a peer is
// partitioned, where the handover could pick a cut-off peer and stall for
// etcd's request timeout; then Stop acts like Kill), and in-flight requests
// and streams get up to a second to finish before their connections are
// closed. Stop does nothing on a stopped member; it returns once the member
// has released its ports and data directory.
//
// A process member gets SIGTERM, etcd's graceful shutdown (or SIGKILL where
// an in-process member would be killed), and is killed if it has not
// exited after 15 seconds; etcd itself gives its clients up to its request
// timeout instead of a second. A frozen member is thawed to act on the
// signal.
//
// The member's proxy, if any, keeps listening and keeps its faults, and
// Stop does not wait for it: clients on it see their connections close
// through the proxy as through a real network, at once where it lets the
// member's side through, and only once it heals where it blackholes or
// pauses the Downstream direction. A connection made while the proxy
// silences Upstream never reached the member, so the stop shows on it only
// once the proxy heals and its bytes meet the stopped member.
func (s *Server) Stop() {
	s.life.Lock()
	defer s.life.Unlock()
	s.stopLocked(s.g.anyPartitioned())
}

// Kill stops the member abruptly, like a crash: raft stops at once without
// handing over leadership, so if the member led, the others elect a new
// leader only after an election timeout, and every client connection is
// closed at once, with no GOAWAY and no grace for requests in flight. Data
// already written stays on disk. Otherwise Kill is like Stop. A process
// member gets SIGKILL (kill -9), frozen or not.
func (s *Server) Kill() {
	s.life.Lock()
	defer s.life.Unlock()
	s.stopLocked(true)
}

func (s *Server) stopLocked(hard bool) {
	s.mu.Lock()
	e, grpcs, p := s.etcd, s.grpcs, s.proc
	s.etcd, s.grpcs = nil, nil
	s.mu.Unlock()
	if p != nil {
		s.stopProcess(p, hard)
		s.mu.Lock()
		s.proc, s.frozen = nil, false
		s.mu.Unlock()
		// The process's own peer connections are gone with it; the ones
		// its peers made to it end here.
		s.link.setDown(true)
		return
	}
	if e == nil {
		return
	}
	// etcd's Close ends the client connections at once, unless its gRPC
	// server's graceful stop wins a race with the listener closing: then it
	// waits for every client to acknowledge a GOAWAY ping and end its
	// streams, for up to etcd's request timeout (6s with DefaultElection),
	// and a client behind a silent proxy acknowledges nothing. A kill cuts
	// them at once, as a crash does; a stop gives them stopGrace at most.
	grace := stopGrace
	if hard {
		grace = 0
		// With raft already stopped, Close finds no peer to hand over to
		// and skips straight to closing listeners and storage.
		e.Server.HardStop()
	}
	cancelCut := cutClientsAfter(grace, grpcs)
	defer cancelCut()
	// Once raft has stopped, peer connections are of no use, and Close
	// would wait a second for them to go idle before giving up on them;
	// cutting them at the link ends them at once.
	closed := make(chan struct{})
	go func() {
		select {
		case <-e.Server.StopNotify():
			s.link.setDown(true)
		case <-closed:
		}
	}()
	e.Close()
	close(closed)
	s.link.setDown(true)
}

// cutClientsAfter stops the gRPC servers hard, closing every client
// connection, once grace has passed; at once for a zero grace. The returned
// function cancels what has not started and waits for what has.
func cutClientsAfter(grace time.Duration, grpcs []*grpc.Server) (cancel func()) {
	done := make(chan struct{})
	cut := func() {
		defer close(done)
		for _, gs := range grpcs {
			gs.Stop()
		}
	}
	if grace <= 0 {
		cut()
		return func() {}
	}
	t := time.AfterFunc(grace, cut)
	return func() {
		if !t.Stop() {
			<-done
		}
	}
}

// Close stops, for good, everything that was started with the member: for
// a Server from Start, the member and its proxy; for a cluster member, the
// whole cluster, as Cluster.Close does. The test's cleanup calls it anyway;
// call it to tear down early. Close is idempotent, and afterwards Stop does
// nothing and Restart returns ErrClosed.
func (s *Server) Close() {
	s.g.close()
}

// Restart stops the member if it is running and starts it again on the same
// data directory, client and peer addresses, so it keeps its data and
// identity. It waits until the member is ready (up to 30 seconds), except
// for a cluster member that cannot get ready on its own: one that is
// partitioned, or one that has no quorum until other stopped members
// restart. Then Restart returns once the member has started, and the test
// should Heal it or restart more members and call Cluster.WaitLeader.
// Restart returns ErrClosed after Close or the test's cleanup.
func (s *Server) Restart() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.g.isClosed() {
		return ErrClosed
	}
	s.stopLocked(s.g.anyPartitioned())
	var err error
	// The port was ours a moment ago; if some other socket grabbed it in
	// between, it is usually gone again shortly.
	for attempt := 0; attempt < 10; attempt++ {
		if err = s.start(); err == nil || !isAddrInUse(err) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("etcdtest: restart %s: %w", s.name, err)
	}
	if s.isPartitioned() || !s.g.hasQuorum() {
		return nil
	}
	if err := s.waitSynced(time.Now().Add(readyTimeout)); err != nil {
		return fmt.Errorf("etcdtest: restart %s: %w", s.name, err)
	}
	return nil
}

// Compact compacts the member's keyspace at its current revision and waits
// for the physical compaction to finish, so that afterwards a watch or read
// at an older revision fails with rpctypes.ErrCompacted. It returns the
// compacted revision and fails the test if the compaction fails.
func (s *Server) Compact(t testing.TB) int64 {
	t.Helper()
	cli, err := s.g.newClient([]string{s.Endpoint()})
	if err != nil {
		t.Fatalf("etcdtest: compact %s: %v", s.name, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, "etcdtest/compact", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("etcdtest: compact %s: read the current revision: %v", s.name, err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compact %s at revision %d: %v", s.name, rev, err)
	}
	return rev
}

// IsLeader reports whether the member is running and believes it is the
// raft leader. A process member is asked with a status request; a frozen
// one, which cannot answer, is reported as not leading.
func (s *Server) IsLeader() bool {
	if s.Binary() != "" {
		lead, ok, err := s.processLeader()
		return ok && err == nil && lead != 0 && lead == s.ID()
	}
	e := s.Etcd()
	return e != nil && e.Server.Lead() == uint64(e.Server.MemberID())
}

// start starts the member, in-process from its configuration or as a
// process with its flags. The caller holds s.life or owns s exclusively.
func (s *Server) start() error {
	s.link.setDown(false)
	if s.Binary() != "" {
		return s.startProcess()
	}
	s.mu.Lock()
	s.grpcs = nil
	s.mu.Unlock()
	e, err := embed.StartEtcd(s.config())
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.etcd = e
	s.id = uint64(e.Server.MemberID())
	s.mu.Unlock()
	if info := e.Config().ClientTLSInfo; !info.Empty() {
		s.g.mu.Lock()
		s.g.clientTLS = &info
		s.g.mu.Unlock()
	}
	s.g.applyPartitions(s)
	return nil
}

// waitSynced waits until the running member is ready to serve clients.
func (s *Server) waitSynced(deadline time.Time) error {
	if s.Binary() != "" {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p == nil {
			return fmt.Errorf("member %s is stopped", s.name)
		}
		return s.waitProcessReady(p, deadline)
	}
	e := s.Etcd()
	if e == nil {
		return fmt.Errorf("member %s is stopped", s.name)
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("member %s failed before it was ready: %v", s.name, err)
	case <-e.Server.StopNotify():
		return fmt.Errorf("member %s stopped before it was ready", s.name)
	case <-timer.C:
		return fmt.Errorf("member %s not ready after %v (no leader elected?)", s.name, readyTimeout)
	}
}

func (s *Server) clientURL() url.URL {
	scheme := "http"
	if s.g.opts.clientTLS != nil {
		scheme = "https"
	}
	return url.URL{Scheme: scheme, Host: s.Endpoint()}
}

// config builds the member's embed.Config afresh for every start.
func (s *Server) config() *embed.Config {
	o := s.g.opts
	cfg := embed.NewConfig()
	cfg.Name = s.name
	cfg.Dir = s.dir
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(s.listenPort)}}
	cfg.AdvertisePeerUrls = []url.URL{{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(s.peerPort)}}
	client := s.clientURL()
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	if o.clientTLS != nil {
		cfg.ClientTLSInfo = *o.clientTLS
	}
	cfg.InitialCluster = s.g.initialCluster
	cfg.InitialClusterToken = "etcdtest"
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.TickMs = uint(o.tick / time.Millisecond)
	cfg.ElectionMs = uint(o.election / time.Millisecond)
	cfg.QuotaBackendBytes = o.quota
	if o.auth {
		cfg.BcryptCost = minBcryptCost
	}
	// Tests never survive a machine crash, and fsync is the slowest thing a
	// member does on a shared disk.
	cfg.UnsafeNoFsync = true
	cfg.EnableGRPCGateway = false
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(s.logs.logger(s.name))
	for _, f := range o.configs {
		f(cfg)
	}
	register := cfg.ServiceRegister
	cfg.ServiceRegister = func(gs *grpc.Server) {
		s.mu.Lock()
		s.grpcs = append(s.grpcs, gs)
		s.mu.Unlock()
		if register != nil {
			register(gs)
		}
	}
	return cfg
}
