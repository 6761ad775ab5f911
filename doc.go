// Package etcdkit is a typed client for etcd v3 for services that share
// runtime configuration and coordinate through etcd: typed keys, watches that
// survive any network fault, synced caches, self-healing ephemeral keys,
// service discovery with a gRPC resolver, leader election with fencing, and a
// cluster health monitor.
//
// # Quick start
//
// Follow a typed configuration value: the current value first, then every
// change once, in order. A change is a Put or a Delete, and a stored value
// that does not decode comes with Err set, so look at both before using
// Value (it is the zero value for those). The package example QuickStart runs this code.
//
//	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:2379"}, Namespace: "billing"})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	limits := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]())
//	w := limits.Watch(ctx, etcdkit.WithInitial())
//	defer w.Close()
//	for ev := range w.Events() {
//		switch {
//		case ev.Err != nil: // not decodable: keep the last good value
//			log.Printf("config/limits at revision %d: %v", ev.Revision, ev.Err)
//		case ev.Type == etcdkit.Delete:
//			apply(DefaultLimits)
//		default:
//			apply(ev.Value)
//		}
//	}
//	return w.Err() // why the loop ended: ctx, Close, or a permanent failure
//
// # Keys, prefixes and names
//
// A [Key] is a typed handle on one key and a [Prefix] a typed handle on the
// keys below one name. Every name lives under [Config.Namespace], which takes
// the layouts of existing deployments: "/billing/" (or "/billing") puts name
// "config/limits" at "/billing/config/limits", "billing" at
// "billing/config/limits", "/" at "/config/limits". Names are "/"-separated
// segments, and a name that is empty, has an empty, "." or ".." segment, or
// holds control characters is refused with [ErrInvalidName], so no name can
// reach outside its namespace. A prefix ends at a "/" boundary:
// prefix "svc" holds "svc/a" but never "svc2/a".
//
// Values pass through a [Codec]: [JSON], [String], [Bytes] and [Proto] are
// provided. A value larger than [Config.MaxValueSize] is refused with
// [ErrTooLarge] before anything is sent; a stored value that does not decode
// is reported as a [*DecodeError] naming the key, never a panic.
//
// [Key.Create] writes only if the key is absent, [Key.CompareAndSwap] only if
// the key still has the expected mod revision, and [Key.Update] runs a
// read-modify-write function, retrying on conflicts with the value that won.
// A failed condition is a [*ConflictError] that carries the current value.
//
// # Watching
//
// [Key.Watch] and [Prefix.Watch] return a [Watch] that delivers every change
// once, in revision order, from now, after a revision ([AfterRevision]) or
// from the current state ([WithInitial]). From now means after the revision
// of a linearizable read made when Watch is called, so a watch started after
// a read never delivers a change older than what was read. Across a closed, reset or silent
// link, a restarted server or a failed member it resumes from the revision
// after the last one it delivered, on another member when there is one. A
// silent link is noticed within [Config.StallTimeout] plus a fraction of a
// second, by asking the server for progress, not after gRPC's keepalive. If
// the revisions it needs were compacted, it reads the state at the oldest
// revision etcd kept and sends events flagged Resync (deletes included) that
// bring the subscriber to it; the changes after that revision follow one by
// one.
// Watches of one Client on the same key or prefix share one etcd watch; each
// has a bounded buffer, and a subscriber that falls behind catches up on its
// own without slowing the others or growing memory.
//
// [Prefix.Cache] keeps a synced copy of a prefix in memory: Get and List are
// served locally, and [Cache.Subscribe] feeds the changes as they are applied.
//
// # Sessions and ephemeral keys
//
// [Client.NewSession] grants a lease and keeps it alive, reporting Live,
// Suspended (keepalives failing; the lease may still live), Lost (declared
// before the server can expire the lease) and Recovered (a new lease after
// the link returned). [NewEphemeral] keeps a key alive under its own session:
// deleted or overwritten by someone else, it is put back; after a lost lease,
// it comes back under a new one once the link returns.
//
// # Discovery
//
// [NewService] describes a service whose instances register with
// [Service.Register] (an ephemeral key per instance) and are followed with
// [Service.Track]. [Client.ResolverBuilder] plugs the registry into gRPC as the
// "etcdkit:///<service>" resolver.
//
// # Election
//
// [NewElection] and [Election.Campaign] elect one leader at a time. A
// [Leadership] carries a fencing token (the leader key's create revision) and
// a Context that is cancelled as soon as leadership may be lost, before any
// other candidate can win; writes made through [GuardedPut],
// [GuardedDelete] or [Leadership.Txn] apply only while the leader key still
// holds that token, and fail with [ErrNotLeader] otherwise.
// [Election.Observe] returns an [Observation] of every change of leader.
//
// # Health and metrics
//
// [NewHealthMonitor] probes every member (reachability, linearizable read
// latency, leader, raft indexes, database size, alarms) and rates the cluster
// Healthy, Degraded or Unhealthy with reasons; it serves readiness probes
// over HTTP. Set [Config.Metrics] to count the library's own reconnects,
// resyncs, stalls, session changes, restores and leadership changes; the
// metrics/prom package adapts them to Prometheus.
//
// # Handles
//
// Every long-lived handle (Watch, Cache, Session, Ephemeral, Registration,
// Tracker, Observation, Leadership, HealthMonitor) has Close (idempotent, waits for its
// goroutines), Done and Err (the cause once Done is closed). A channel never
// closes without Err saying why. Closing the Client ends them all with
// [ErrClosed].
//
// # Testing
//
// The etcdtest package runs embedded etcd members inside a test, and the
// proxy package injects network faults (FIN, RST, blackhole, pause, latency,
// bandwidth) between a client and a member.
package etcdkit
