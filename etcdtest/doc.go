// Package etcdtest runs real etcd members inside the test process, so that
// code talking to etcd can be tested against the real thing, including its
// failures, without Docker or an etcd binary; or, given a binary, as etcd
// processes of any release from 3.5 on.
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
// # Authentication
//
// [WithAuth] turns etcd authentication on once the members are ready, with
// a root user ([RootUser], [RootPassword]) that etcdtest's own clients use.
// [Cluster.AddUser] (or [Server.AddUser]) adds a user with a password and a
// role that may read and write one key prefix only, the way a service is
// usually confined to its namespace:
//
//	c := etcdtest.StartCluster(t, 3, etcdtest.WithAuth())
//	c.AddUser(t, "app", "secret", "/app/")
//	// ... etcdkit.Config{Endpoints: c.Endpoints(), Namespace: "/app/",
//	//	Username: "app", Password: "secret"} ...
//
// # Members as etcd processes
//
// [WithBinary] makes the members processes of an etcd executable (3.5, 3.6
// or 3.7) instead, and the environment variable ETCDTEST_BINARY
// ([BinaryEnv]) does so for every member of a test run, so that a suite
// that does not reach into the embedded server runs unchanged against
// another server release:
//
//	ETCDTEST_BINARY=/path/to/etcd-3.5 go test ./...
//
// A process member offers everything an in-process one does, on the same
// addresses, ports and data directories: the proxy, Stop (SIGTERM, etcd's
// graceful shutdown), Kill (SIGKILL, kill -9), Restart, Partition and Heal,
// Compact, WaitLeader, MoveLeader, Client, and New and NewCluster. It adds
// faults only a process can show: [Server.Freeze] stops it with SIGSTOP,
// as a long garbage-collection pause or a stalled virtual machine would,
// sockets open and silent, until [Server.Thaw]. What needs the embedded
// server does not apply: [Server.Etcd] returns nil, and [WithConfig] fails
// the start ([WithFlags] passes server flags instead); Freeze and Thaw on an
// in-process member return [ErrNotProcess]. etcdtest sets only flags that
// 3.5, 3.6 and 3.7 accept alike, and learns a process member's view of the
// leader with status requests. A partition of process members is made on
// the peer links, which read the sender of each peer connection from etcd's
// own request headers. Process output goes to the member's log buffer, as
// below. The test's cleanup, or Close for New and NewCluster, kills every
// process and waits for it; on Linux the kernel also kills them if the test
// process dies first.
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
