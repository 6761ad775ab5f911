// Package etcdtest runs real etcd members inside the test process, so that
// code talking to etcd can be tested against the real thing, including its
// failures, without Docker or an etcd binary.
//
// # Testing your own service
//
// Start one member, point your code at [Server.Endpoint], and let the test's
// cleanup stop everything:
//
//	func TestMyService(t *testing.T) {
//		srv := etcdtest.Start(t)
//		c, err := etcdkit.New(t.Context(), etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
//		require.NoError(t, err)
//		defer c.Close()
//		// ... exercise your service; inspect etcd with srv.Client(t) ...
//	}
//
// [Server.Client] returns a raw clientv3 client for setting up or checking
// state behind your code's back. Every member listens only on 127.0.0.1 on
// ports picked at random, keeps its data under t.TempDir(), and is stopped
// by t.Cleanup, so tests can run in parallel.
//
// # Faults
//
// [Server.Stop] (graceful, as on SIGTERM) or [Server.Kill] (abrupt, as in
// a crash) takes a member down, and [Server.Restart] brings it back with its
// data, on the same address. [Server.Compact] compacts history so
// that old revisions are gone. With [WithProxy], each member's clients can
// connect through its own fault-injection proxy ([Server.ProxyEndpoint],
// [Server.Proxy]) that can drop, delay, pause or reset their traffic while
// [Server.Endpoint] stays direct. Faults on a proxy and on its member
// combine freely: Stop and Kill return promptly whatever the proxy is doing,
// and clients whose proxy blackholes or pauses what the member sends see it
// go only once the proxy heals, as behind a real silent network.
//
// [StartCluster] starts several members forming one cluster; a test can stop
// the leader, move leadership ([Cluster.MoveLeader]), or cut a member off
// from its peers ([Server.Partition], [Server.Heal]) while its clients stay
// connected, and wait for the cluster to settle with [Cluster.WaitLeader]:
//
//	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
//	// ... point your code at c.Endpoints() ...
//	c.WaitLeader(t).Kill()
//	c.WaitLeader(t) // a new leader, within about an election timeout
//
// Members reach each other through in-process forwarders on their
// advertised peer addresses, so that stopping a member or the cluster ends
// every peer connection at once instead of leaving etcd's to time out.
//
// # Logs, timing and leaks
//
// Members log into a bounded in-memory buffer. When a test fails, the tail
// of each member's log is printed if the test used [WithLogs] or the
// environment has ETCDKIT_TEST_LOGS=1. Members use a short election timeout
// (see [DefaultElection]) so that failover tests are quick; [WithTiming]
// changes it, and [WithConfig] changes anything else in the embed.Config.
//
// Every goroutine of a member, its proxy and its clients ends before the
// test's cleanup returns. A package whose tests use etcdtest checks that
// nothing else leaks with:
//
//	func TestMain(m *testing.M) {
//		goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
//	}
package etcdtest
