//go:build robustness_repro

package robustness_test

import (
	"net"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestRegressionKillBehindSilentProxy: Kill (and Stop) of a member hangs
// while a client connection through its proxy has reached the member but
// the proxy drops or holds the client's bytes. etcd's shutdown (embed
// Etcd.Close) waits for its client listener's cmux to finish, and cmux
// waits, without a deadline, for every accepted connection to send the
// bytes that tell HTTP/1 from HTTP/2. It returns once the proxy heals.
func TestRegressionKillBehindSilentProxy(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	srv.Proxy().Blackhole(proxy.Upstream)
	conn, err := net.Dial("tcp", srv.ProxyEndpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	// Let the proxy dial the member.
	deadline := time.Now().Add(5 * time.Second)
	for srv.Proxy().Stats().Conns == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	killed := make(chan struct{})
	go func() {
		srv.Kill()
		close(killed)
	}()
	select {
	case <-killed:
	case <-time.After(20 * time.Second):
		srv.Proxy().Unblackhole()
		<-killed
		t.Fatalf("Kill did not return within 20s while the proxy blackholed the client's bytes; it returned once the proxy healed")
	}
}
