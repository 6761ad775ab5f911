package etcdtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// leaderTimeout bounds WaitLeader and MoveLeader. Elections take a few
// election timeouts; the margin is for a loaded machine under -race.
const leaderTimeout = 20 * time.Second

// A Cluster is a set of etcd members running in the test process, started
// together by StartCluster. Its methods are safe for concurrent use.
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
// not wait; see WaitLeader.
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

// WaitLeader waits until every running member that is not partitioned
// reports the same leader, and that leader is one of them and believes it
// leads, then returns it. It fails the test after 20 seconds, describing
// what each member reported.
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
		e := m.Etcd()
		if e == nil {
			continue
		}
		l := e.Server.Lead()
		if l == 0 || (lead != 0 && l != lead) {
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
		if e := m.Etcd(); e != nil {
			state = fmt.Sprintf("leader=%x", e.Server.Lead())
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
	e := lead.Etcd()
	if e == nil || !to.Running() {
		t.Fatalf("etcdtest: move leadership from %s to %s: both must be running", lead.name, to.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaderTimeout)
	defer cancel()
	if err := e.Server.MoveLeader(ctx, lead.ID(), to.ID()); err != nil {
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
func (s *Server) Partition() {
	s.mu.Lock()
	s.partitioned = true
	s.mu.Unlock()
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

// applyPartitions re-applies the cuts involving s after it started, because
// a fresh embedded server forgets them.
func (g *group) applyPartitions(s *Server) {
	for _, p := range g.members {
		if p != s && (s.isPartitioned() || p.isPartitioned()) {
			cut(s, p)
			cut(p, s)
		}
	}
}
