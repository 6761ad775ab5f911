package etcdtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit/proxy"
)

// leaderTimeout bounds WaitLeader and MoveLeader. Elections take a few
// election timeouts; the margin is for a loaded machine under -race.
const leaderTimeout = 20 * time.Second

// A Cluster is a set of etcd members, in the test process or processes of
// an etcd binary (see WithBinary), started together by StartCluster. Its
// methods are safe for concurrent use.
type Cluster struct {
	g *group
}

// StartCluster starts n members (n >= 1) forming one new cluster on
// 127.0.0.1, each with its own client and peer ports, data directory and,
// with WithProxy, proxy. It waits until every member is ready, which implies
// a leader was elected, and registers t.Cleanup to stop them all. It fails
// the test if the cluster is not ready within 30 seconds.
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("etcdtest: StartCluster with %d members, want at least 1", n)
	}
	return &Cluster{g: startGroup(t, n, buildOptions(t, opts))}
}

// Close stops every member, proxy and peer connection of the cluster for
// good. The test's cleanup calls it anyway; call it to tear down early.
// Close is idempotent, and afterwards Restart returns ErrClosed.
func (c *Cluster) Close() {
	c.g.close()
}

// Members returns the members in a fresh slice, in start order: member i is
// named "m<i>".
func (c *Cluster) Members() []*Server {
	return append([]*Server(nil), c.g.members...)
}

// Endpoints returns every member's client address: the proxies' with
// WithProxy, the members' own otherwise.
func (c *Cluster) Endpoints() []string {
	if !c.g.opts.withProxy {
		return c.DirectEndpoints()
	}
	eps := make([]string, len(c.g.members))
	for i, m := range c.g.members {
		eps[i] = m.ProxyEndpoint()
	}
	return eps
}

// NewProxies starts a proxy of its own in front of every member (see
// Server.NewProxy), closed when the test ends, and returns them in member
// order with their addresses: the endpoints of one client that a test
// cuts off alone.
func (c *Cluster) NewProxies(t testing.TB) ([]*proxy.Proxy, []string) {
	t.Helper()
	ps := make([]*proxy.Proxy, len(c.g.members))
	eps := make([]string, len(c.g.members))
	for i, m := range c.g.members {
		ps[i] = m.NewProxy(t)
		eps[i] = ps[i].Addr()
	}
	return ps, eps
}

// DirectEndpoints returns every member's own client address, bypassing any
// proxy.
func (c *Cluster) DirectEndpoints() []string {
	eps := make([]string, len(c.g.members))
	for i, m := range c.g.members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// Client returns a raw clientv3 client connected directly to every member,
// closed by t.Cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return c.g.client(t, c.DirectEndpoints())
}

// Leader returns the running member that believes it is the leader,
// preferring one that is not partitioned, or nil if no member does. It does
// not wait; see WaitLeader. A frozen process member is never returned: it
// cannot say what it believes.
func (c *Cluster) Leader() *Server {
	var cut *Server
	for _, m := range c.g.members {
		if m.IsLeader() {
			if !m.isPartitioned() {
				return m
			}
			cut = m
		}
	}
	return cut
}

// WaitLeader waits until every running member that is not partitioned or
// frozen reports the same leader, and that leader is one of them and
// believes it leads, then returns it. It fails the test after 20 seconds,
// describing what each member reported.
func (c *Cluster) WaitLeader(t testing.TB) *Server {
	t.Helper()
	deadline := time.Now().Add(leaderTimeout)
	for {
		if l := c.agreedLeader(); l != nil {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcdtest: members did not agree on a leader within %v: %s", leaderTimeout, c.describe())
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *Cluster) agreedLeader() *Server {
	var lead uint64
	voters := 0
	for _, m := range c.g.members {
		if m.isPartitioned() {
			continue
		}
		l, running, err := m.leaderView()
		if !running {
			continue
		}
		if err != nil || l == 0 || (lead != 0 && l != lead) {
			return nil
		}
		lead = l
		voters++
	}
	if voters == 0 {
		return nil
	}
	for _, m := range c.g.members {
		if m.ID() == lead && !m.isPartitioned() && m.IsLeader() {
			return m
		}
	}
	return nil
}

// describe reports each member's view of the leader, for failure messages.
func (c *Cluster) describe() string {
	var parts []string
	for _, m := range c.g.members {
		state := "stopped"
		if l, running, err := m.leaderView(); err != nil {
			state = fmt.Sprintf("status unknown: %v", err)
		} else if running {
			state = fmt.Sprintf("leader=%x", l)
		} else if m.Frozen() {
			state = "frozen"
		}
		if m.isPartitioned() {
			state += " partitioned"
		}
		parts = append(parts, fmt.Sprintf("%s(%x): %s", m.name, m.ID(), state))
	}
	return strings.Join(parts, "; ")
}

// MoveLeader transfers leadership to member to and waits until the cluster
// agrees on it. It fails the test if to is not running, if the transfer
// times out, or if another member wins instead.
func (c *Cluster) MoveLeader(t testing.TB, to *Server) {
	t.Helper()
	lead := c.WaitLeader(t)
	if lead == to {
		return
	}
	if !lead.Running() || !to.Running() {
		t.Fatalf("etcdtest: move leadership from %s to %s: both must be running", lead.name, to.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaderTimeout)
	defer cancel()
	if err := lead.moveLeader(ctx, to.ID()); err != nil {
		t.Fatalf("etcdtest: move leadership from %s to %s: %v", lead.name, to.name, err)
	}
	if got := c.WaitLeader(t); got != to {
		t.Fatalf("etcdtest: move leadership from %s: got leader %s, want %s", lead.name, got.name, to.name)
	}
}

// Partition cuts the member off from all its peers in both directions: it
// drops every raft message to and from them (etcd's CutPeer on this member
// for each peer and on each peer for this member). Its client connections
// stay up, so its clients see a member that has lost its leader: within an
// election timeout it reports leader 0 and requests needing consensus fail
// or time out. The cut survives Restart of either side; a partitioned member
// that restarts does not serve clients until Heal. Partition applies to
// raft traffic only; it has no effect on a single-member Server.
//
// Process members cannot be told to cut a peer, so for them the member's
// and its peers' peer links (see the package doc) close and refuse every
// peer connection to the member and every raft connection from it. Other
// peer traffic from it, such as a lease renewal forwarded to the leader,
// still passes; it needs a leader the member no longer has.
func (s *Server) Partition() {
	s.mu.Lock()
	s.partitioned = true
	s.mu.Unlock()
	if s.Binary() != "" {
		s.g.recheckLinks()
		return
	}
	for _, p := range s.g.members {
		if p != s {
			cut(s, p)
			cut(p, s)
		}
	}
}

// Heal undoes Partition: raft messages flow again between the member and
// every peer that is not itself partitioned. The member then catches up
// from the leader. Heal on a member that is not partitioned does nothing.
func (s *Server) Heal() {
	s.mu.Lock()
	s.partitioned = false
	s.mu.Unlock()
	if s.Binary() != "" {
		// The links refuse no new connection now; etcd redials within
		// about a tenth of a second.
		return
	}
	for _, p := range s.g.members {
		if p != s && !p.isPartitioned() {
			mend(s, p)
			mend(p, s)
		}
	}
}

func (s *Server) isPartitioned() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.partitioned
}

// cut makes a drop every raft message to and from b.
func cut(a, b *Server) {
	if e := a.Etcd(); e != nil && b.ID() != 0 {
		e.Server.CutPeer(types.ID(b.ID()))
	}
}

func mend(a, b *Server) {
	if e := a.Etcd(); e != nil && b.ID() != 0 {
		e.Server.MendPeer(types.ID(b.ID()))
	}
}

// leaderView returns the leader the member believes in (0 for none);
// running is false for a stopped member, or a frozen one, which cannot
// say.
func (s *Server) leaderView() (lead uint64, running bool, err error) {
	if s.Binary() != "" {
		return s.processLeader()
	}
	e := s.Etcd()
	if e == nil {
		return 0, false, nil
	}
	return e.Server.Lead(), true, nil
}

// moveLeader asks s, the leader, to hand leadership to the member with ID
// to.
func (s *Server) moveLeader(ctx context.Context, to uint64) error {
	if s.Binary() != "" {
		cli, err := s.control()
		if err != nil {
			return err
		}
		_, err = cli.MoveLeader(ctx, to)
		return err
	}
	e := s.Etcd()
	if e == nil {
		return fmt.Errorf("member %s is stopped", s.name)
	}
	return e.Server.MoveLeader(ctx, s.ID(), to)
}

// peerAllowed reports whether a process member's peer link forwards a
// connection to to whose first request came from the member with peer
// URLs from ("" if it named none).
func (g *group) peerAllowed(to *Server, from string) bool {
	if to.isPartitioned() {
		return false
	}
	for _, m := range g.members {
		if m != to && sentBy(from, m.PeerURL()) && m.isPartitioned() {
			return false
		}
	}
	return true
}

// recheckLinks closes the peer connections a partition no longer allows.
func (g *group) recheckLinks() {
	for _, m := range g.members {
		if m.link != nil {
			m.link.recheck()
		}
	}
}

// applyPartitions re-applies the cuts involving s after it started, because
// a fresh embedded server forgets them. Process members' links keep theirs.
func (g *group) applyPartitions(s *Server) {
	for _, p := range g.members {
		if p != s && (s.isPartitioned() || p.isPartitioned()) {
			cut(s, p)
			cut(p, s)
		}
	}
}
