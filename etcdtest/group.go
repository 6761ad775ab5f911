package etcdtest

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/proxy"
)

// group is the set of members started together by one Start or
// StartCluster call, sharing options and cleanup.
type group struct {
	opts           *options
	members        []*Server
	initialCluster string

	mu        sync.Mutex
	closed    bool
	clientTLS *transport.TLSInfo // as configured, by WithClientTLS or WithConfig
	authOn    bool               // WithAuth has turned auth on

	shutdownOnce sync.Once
	// release, when set, runs once after the group closed: it frees what a
	// group started outside a test holds (its data directories).
	release func()
}

// startGroup starts n members forming one cluster, retrying with fresh
// ports and directories if a port was taken before etcd could bind it.
func startGroup(t testing.TB, n int, o *options) *group {
	t.Helper()
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var g *group
		g, err = tryStartGroup(t, n, o)
		if err == nil {
			return g
		}
		if !isAddrInUse(err) {
			break
		}
	}
	t.Fatalf("etcdtest: start %d member(s): %v", n, err)
	return nil
}

func tryStartGroup(t testing.TB, n int, o *options) (*group, error) {
	// Per member: client port, the peer port etcd listens on, and the
	// advertised peer port held by the member's peer link.
	ls, err := listenFree(3 * n)
	if err != nil {
		return nil, err
	}
	g := &group{opts: o}
	for i := range n {
		g.members = append(g.members, &Server{
			g:          g,
			name:       "m" + strconv.Itoa(i),
			clientPort: port(ls[3*i]),
			listenPort: port(ls[3*i+1]),
			peerPort:   port(ls[3*i+2]),
			dir:        t.TempDir(),
			logs:       newLogBuffer(),
		})
	}
	if o.withProxy {
		for _, m := range g.members {
			if m.proxy, err = proxy.New(m.Endpoint()); err != nil {
				closeAll(ls)
				g.closeProxies()
				return nil, err
			}
		}
	}
	for i, m := range g.members {
		ls[3*i].Close()
		ls[3*i+1].Close()
		var allow func(from string) bool
		if o.binary != "" {
			// A process member cannot be told to cut a peer, so its
			// partitions are made here, on the peer connections.
			allow = func(from string) bool { return g.peerAllowed(m, from) }
		}
		m.link = newPeerLink(ls[3*i+2], "127.0.0.1:"+strconv.Itoa(m.listenPort), allow)
		if i > 0 {
			g.initialCluster += ","
		}
		g.initialCluster += m.name + "=" + m.PeerURL()
	}
	for _, m := range g.members {
		if err := m.start(); err != nil {
			g.shutdown()
			return nil, fmt.Errorf("member %s: %w", m.name, err)
		}
	}
	// From here on the members are the test's: cleanup stops them and
	// prints their logs if the test asked, even if they never get ready.
	t.Cleanup(func() { g.cleanup(t) })
	deadline := time.Now().Add(readyTimeout)
	for _, m := range g.members {
		if err := m.waitSynced(deadline); err != nil {
			t.Fatalf("etcdtest: start %d member(s): %v", n, err)
		}
	}
	if o.auth {
		if err := g.enableAuth(); err != nil {
			t.Fatalf("etcdtest: start %d member(s): %v", n, err)
		}
	}
	return g, nil
}

func (g *group) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// hasQuorum reports whether a majority of the group's members is running.
func (g *group) hasQuorum() bool {
	running := 0
	for _, m := range g.members {
		if m.Running() {
			running++
		}
	}
	return running > len(g.members)/2
}

// stopAll kills every member concurrently. A graceful stop would make a
// leader wait for a handover to members that are stopping too.
func (g *group) stopAll() {
	var wg sync.WaitGroup
	for _, m := range g.members {
		wg.Go(m.Kill)
	}
	wg.Wait()
}

// anyPartitioned reports whether some member is partitioned.
func (g *group) anyPartitioned() bool {
	for _, m := range g.members {
		if m.isPartitioned() {
			return true
		}
	}
	return false
}

// closeProxies closes the members' proxies, cutting every client
// connection that goes through them.
func (g *group) closeProxies() {
	for _, m := range g.members {
		if m.proxy != nil {
			m.proxy.Close()
		}
	}
}

// shutdown stops everything the group runs. Client proxies go first: a
// member shutting down waits for open client streams, and those through
// proxies end at once this way. Peer links go last, ending the peer
// connections etcd leaves behind.
func (g *group) shutdown() {
	g.shutdownOnce.Do(func() {
		g.closeProxies()
		g.stopAll()
		for _, m := range g.members {
			m.closeControl()
			if m.link != nil {
				m.link.close()
			}
		}
	})
}

// close ends the group for good: Restart fails from now on.
func (g *group) close() {
	g.mu.Lock()
	g.closed = true
	release := g.release
	g.release = nil
	g.mu.Unlock()
	g.shutdown()
	if release != nil {
		release()
	}
}

func (g *group) cleanup(t testing.TB) {
	g.close()
	for _, m := range g.members {
		m.logs.dump(t, m.name, g.opts.logs)
	}
}

func (g *group) tlsConfig() (*tls.Config, error) {
	g.mu.Lock()
	info := g.clientTLS
	g.mu.Unlock()
	if info == nil {
		return nil, nil
	}
	return info.ClientConfig()
}

func (g *group) newClient(endpoints []string) (*clientv3.Client, error) {
	tc, err := g.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("client TLS config: %w", err)
	}
	user, password := g.credentials()
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tc,
		Username:    user,
		Password:    password,
		Logger:      zap.NewNop(),
	})
}

func (g *group) client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := g.newClient(endpoints)
	if err != nil {
		t.Fatalf("etcdtest: client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
