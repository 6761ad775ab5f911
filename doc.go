// Package etcdkit is a typed client for etcd v3 for services that share
// runtime configuration and coordinate through etcd: typed keys, live
// configuration values with defaults, validation and a cold-start snapshot,
// watches that survive any network fault, synced caches, self-healing ephemeral keys,
// service discovery with a gRPC resolver, leader election, mutexes and
// semaphores with fencing, typed transactions, requests that move off a sick
// member, and a cluster health monitor.
//
// # Quick start
//
// Read a typed configuration value on every request, without waiting: a
// [Live] keeps the last good value of a key, the default while the key is
// absent, and refuses values that do not decode or validate. With a
// snapshot file it starts, marked stale, while etcd is down. The package
// example NewLive runs this code.
//
//	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:2379"}, Namespace: "billing"})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	limits := etcdkit.NewLive(ctx, etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]()),
//		etcdkit.WithDefault(DefaultLimits), // while the key is absent
//		etcdkit.WithValidator(func(l Limits) error { // a bad value is never served
//			if l.MaxConns <= 0 {
//				return errors.New("max_conns must be positive")
//			}
//			return nil
//		}),
//		etcdkit.WithSnapshot[Limits]("/var/lib/billing/limits.snapshot")) // serve the last good value while etcd is down
//	defer limits.Close()
//	maxConns := limits.Get().MaxConns // on every request: one atomic load
//
// Or follow every change of it: the current value first, then every change
// once, in order. A change is a Put or a Delete, and a stored value that
// does not decode comes with Err set, so look at both before using Value
// (it is the zero value for those). The package example QuickStart runs
// this code.
//
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
// A failed condition is a [*ConflictError] that carries the current value;
// [AsConflict] reads it without knowing the value's type.
//
// # Watching
//
// [Key.Watch] and [Prefix.Watch] return a [Watch] that delivers every change
// once, in revision order, from now, after a revision ([AfterRevision]) or
// from the current state ([WithInitial]). From now means after the revision
// of a linearizable read made when Watch is called, so a watch started after
// a read never delivers a change older than what was read. Across a closed,
// reset, silent or leaderless link, a restarted server or a failed member it
// resumes from the revision after the last one it delivered, on another
// member when there is one. A silent link is noticed within
// [Config.StallTimeout] plus a fraction of a second, by asking the server for
// progress, not after gRPC's keepalive. If the revisions it needs were
// compacted, it reads the state at the oldest revision etcd kept and sends
// events flagged Resync (deletes included) that bring the subscriber to it;
// the changes after that revision follow one by one. A subscriber that falls
// behind loses nothing and slows no other (see Slow subscribers, under
// Guarantees).
//
// [Prefix.Cache] keeps a synced copy of a prefix in memory: Get and List are
// served locally, and [Cache.Subscribe] feeds the changes as they are applied.
// The cache lists the prefix at one revision and then applies every change
// after it, through the same engine as [Prefix.Watch]: it survives broken and
// silent links and member failures, and after a compaction it applies the
// differences with the state re-read at the compaction's revision, deletions
// included.
//
// # Live configuration
//
// [NewLive] makes a [Live]: the value of one key, as a service reads its
// runtime configuration. Get never blocks and does no I/O (one atomic
// load, a few nanoseconds): it returns the last good value, or the
// default. A good value is one that the key's codec decodes and that the
// function given to [WithValidator] accepts; any other is refused: Get
// keeps the value before it, [Live.Rejected] reports it (the error, a
// [*DecodeError] or a [*ValidationError], its revision and when), it is
// logged and counted ([MetricLiveRejections]), and [Live.Changes] never
// carries it. A later good value is applied. An absent or deleted key
// means the default ([WithDefault], else T's zero value). With
// [MergeDefault], the fields a stored JSON value leaves out take the
// default's values: the value is decoded over a fresh copy of the default.
//
// The value follows the key through the watch engine, so it has the
// guarantees of a [Watch]: every change in revision order, across broken
// and silent links, restarted servers and failed members, and a re-read
// after a compaction, of which only the current value is applied (values
// the compaction erased are never seen, so never applied). [Live.Synced]
// is closed once the key's state has come from the cluster;
// [Live.Stale] reports true before that, and while the watch's link is
// suspended. A Live ends only with its ctx, Close or Client.Close: a read
// or watch that fails for good (a permission denied) is logged and started
// again, and Get keeps serving. While the cluster refuses to let the
// client read the key, [Live.Rejected] reports the refusal (Revision 0),
// it is logged once, and [LiveReadiness] fails with it.
//
// [WithSnapshot] keeps the last good state in a file, written atomically
// (temporary file, fsync, rename, fsync of the directory) each time a
// state from the cluster is applied, with its revision, a SHA-256 checksum,
// and the etcd key and Go type it belongs to. NewLive reads it before it
// returns, so a service that starts while the cluster is unreachable
// serves it at once, Stale, and converges when the cluster is back. A file
// that is corrupt, truncated, written for another key or type, or
// unreadable is logged with the reason and counted
// ([MetricLiveSnapshotErrors]), and the default is served instead; it is
// never applied and never a crash. A missing file is the first start.
//
// The snapshot and the cluster are compared by revision. A cluster state
// with a higher revision than the snapshot's (a value written, or the key
// deleted, meanwhile) wins and replaces the file; the same revision
// confirms it. A lower one cannot come from the same cluster history, whose
// revisions only grow: it comes from a cluster restored from a backup or
// rebuilt, and it never replaces the snapshot. It is refused with
// [ErrOlderThanSnapshot], and the Live keeps serving the snapshot, Stale
// and not Synced, until the cluster writes the key at a revision above the
// snapshot's. To avoid that after a restore, restore with etcdutl's
// --bump-revision (which etcd advises anyway, since every watcher is in
// the same position) or delete the snapshot files of the services.
//
// [NewLiveMap] makes a [LiveMap], the same for every key under a
// [Prefix] (feature flags, per-tenant settings), over a [Cache]: each
// entry keeps its own last good value, a name the prefix does not hold
// reads as its default ([WithDefaults] per name, else [WithDefault]), and
// the whole map is one snapshot file, written at most once a second.
//
// # Sessions and ephemeral keys
//
// [Client.NewSession] grants a lease and keeps it alive, reporting
// [SessionLive], [SessionSuspended] (keepalives failing; the lease may still
// live), [SessionLost] (declared before the server can expire the lease) and
// [SessionRecovered] (a new lease after the link returned). [NewEphemeral] keeps a key alive under its own session:
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
// # Locks, semaphores and transactions
//
// [NewMutex] and [Mutex.Lock] give a lock to one holder at a time, waiters
// served in arrival order; [Mutex.TryLock] fails at once with [ErrLocked]
// (a [*HeldError] naming the holder). [NewSemaphore] and
// [Semaphore.Acquire] give at most limit [Permit]s at a time. Both run on
// the election's machinery: the Locks of one Mutex (the Permits of one
// Semaphore) keep their keys under one lease, the Mutex's, kept alive while
// it is in use and revoked a TTL after its last holding ends; each
// holding's Context is cancelled before the server can expire that lease
// (so before anyone else can acquire), a waiter whose lease is lost stops
// waiting with [ErrLeaseLost] and leaves no key, and Unlock or Release
// deletes its own key only (a key's name is used again only once nothing of
// its holding can reach the cluster any more), so a retried or late call
// never removes another holder's key. A lease revoked by someone else
// (another client, etcdctl lease revoke) counts as a lost lease: the
// holdings under it end with a cause matching [ErrLeaseLost] (and
// [ErrNotHeld]), and the Mutex takes a new lease for later Locks; a Lock
// or Acquire that finds its lease gone, waiting or putting its key, takes a
// new one and goes on within the same call, bounded by its ctx. A Lock that
// holds at once costs one transaction, and Unlock one more. A semaphore's
// limit is recorded in the cluster by its first user, in the transaction
// of its first Acquire; a Semaphore with another limit is refused with
// [ErrLimitMismatch], in the transaction that would have put its key.
//
// A [Leadership], a [Lock] and a [Permit] are each a [Fence]: [GuardedPut],
// [GuardedDelete], [GuardedTxn] and [GuardedUpdateKeys] apply only while
// the holder's key stands with its token, and fail with [ErrNotHeld]
// otherwise ([ErrNotLeader], which matches ErrNotHeld, for a Leadership).
//
// [NewTxn] builds a transaction over typed keys: comparisons
// ([Key.IfRevision], [Key.IfAbsent]) for If, writes ([Key.OpPut],
// [Key.OpDelete]) for Then and Else, each namespaced and encoded by its
// key's codec. [Txn.Commit] refuses, before sending, a value that does not
// encode and a transaction over etcd's limits ([ErrTooLarge]); a failed
// comparison is reported as the [*ConflictError] of its key, saying which
// one failed. [UpdateKeys] is [Key.Update] over several keys: it reads them
// at one revision with [Key.GetIn], writes with [Tx.Write], and retries on
// a conflict.
//
// # Key layout
//
// The library keeps its own keys under "_etcdkit/", a root of the namespace
// reserved to it. Each candidate of an [Election] holds one key, attached to
// a lease of its own: <namespace>/_etcdkit/election/<name>/<lease in hex>,
// whose value is the candidate's id. A [Mutex]'s holders and waiters
// hold <namespace>/_etcdkit/mutex/<name>/<lease in hex>-<slot>, a
// [Semaphore]'s <namespace>/_etcdkit/semaphore/<name>/<lease in
// hex>-<slot>, under the lease the Mutex or Semaphore shares among its
// holdings; slot is the lowest number free in that lease, so names are
// used again (etcd keeps deleted keys in its index until a compaction, and
// every acquire reads the prefix). The leader is the candidate whose key
// has the lowest create revision, as in etcd's concurrency.Election; that
// revision is the leadership's fencing token ([Leadership.Token]). Each
// instance of a [Service] is one key, attached to a lease of its own:
// <namespace>/_etcdkit/service/<name>/<ID>. In both, <name> is the
// election's or the service's name path-escaped into one segment, so that
// election "a" never sees the candidates of election "a/b", nor service "a"
// the instances of service "a/b". A [Mutex] keeps its keys the same way
// under <namespace>/_etcdkit/mutex/<name>/ and a [Semaphore] under
// <namespace>/_etcdkit/semaphore/<name>/, with its limit at
// <namespace>/_etcdkit/semaphore-limit/<name>.
//
// An instance's value is a JSON object:
//
//	{"addr":"10.0.0.7:8080","meta":{"zone":"eu-1","weight":3}}
//
// "meta" holds the bytes the service's codec produced, verbatim, when they
// are a JSON value (JSON[M] always). Other bytes (Proto[M], a String that is
// not JSON, no bytes at all) are stored base64-encoded under "metaBytes"
// instead. An object with neither (written by another tool) is an instance
// whose Meta is M's zero value. Readers ignore fields they do not know, so
// later versions can add some.
//
// # Health and metrics
//
// [NewHealthMonitor] probes every member (reachability, linearizable read
// latency, leader, raft indexes, database size, alarms) and rates the cluster
// Healthy, Degraded or Unhealthy with reasons; it serves readiness probes
// over HTTP. A check asks every configured endpoint for its member's status
// and a linearizable read, through a connection pinned to that endpoint, and
// relates the answers to the cluster's member list: the endpoints may be
// proxies whose addresses differ from the members'. Set [Config.Metrics] to
// count the library's own reconnects, resyncs, stalls, session changes,
// restores and leadership changes; the metrics/prom package adapts them to
// Prometheus.
//
// # Handles
//
// Every long-lived handle (Watch, Cache, Live, LiveMap, Session, Ephemeral,
// Registration, Tracker, Observation, Leadership, Lock, Permit,
// HealthMonitor) has Close (idempotent,
// waits for its goroutines), Done and Err (the cause once Done is closed).
// A channel never closes without Err saying why. Closing the Client ends
// them all with [ErrClosed]. Err always means why a handle ended: the
// descriptions that never end ([Key], [Prefix], [Service], [Election]) report an
// invalid name, codec or option from every method and from Validate.
//
// The ctx given to the call that makes a long-lived handle bounds the
// handle's life: when ctx ends, the handle ends and lets go of what it holds
// (a Session revokes its lease, an Ephemeral's key goes with it), and Err
// wraps ctx's cause. A call that waits for the cluster before it returns
// the handle ([Client.NewSession], [NewEphemeral], [Service.Register]) is
// bounded by the same ctx, and by [Config.RequestTimeout] when ctx has no
// deadline; one that returns at once ([Key.Watch], [Prefix.Watch],
// [Prefix.Cache], [NewLive], [NewLiveMap], [Service.Track],
// [Election.Observe]) leaves all the waiting to the handle.
// Pass a context that lasts as long as the handle should, not a request's.
//
// Exceptions: the ctx of [New] bounds only the call, and the Client lasts
// until Close; the ctx of [Election.Campaign] (and of [Mutex.Lock] and
// [Semaphore.Acquire]) bounds only the wait, and the Leadership (Lock,
// Permit) lasts until it ends on its own, Resign (Unlock, Release) or Close
// ([Election.Run] ties leading to a ctx); [NewHealthMonitor] and
// [Cache.Subscribe] take no ctx: the monitor lasts until Close or
// Client.Close, a subscription until Close or the end of its Cache.
//
// # Guarantees
//
// Each type's documentation states its contract; the sections that follow
// derive the timing those contracts promise and give the reasons for the
// choices they rest on:
//
//   - Slow subscribers: why a [Watch] that falls behind loses nothing and
//     slows no other;
//   - Sessions: keepalives and Lost: why a [Session] declares Lost before the
//     server can expire its lease;
//   - Ephemeral keys and registrations: how an [Ephemeral] survives a silent
//     link and a second owner;
//   - When leadership ends: why a leader learns it may have lost leadership
//     before any other candidate can win;
//   - Discovery: how fresh a view is: what a [Tracker] and the gRPC resolver
//     show while the link is down;
//   - Live configuration (above): a [Live] never holds a value that failed
//     to decode or validate, and a service starts from its snapshot while
//     the cluster is unreachable, marked stale; which of the snapshot and
//     the cluster wins, by revision.
//   - Requests on a sick member: which member a request goes to, when it
//     moves on, and when a write's outcome is reported unknown.
//
// # Slow subscribers
//
// Watches of one [Client] on the same key, or on the same prefix, share one
// etcd watch, which hands each event straight to every subscriber's Events
// channel. Each subscriber has its own bounded buffer ([WithBufferSize],
// 1024 events by default): a subscriber that does not keep up never slows
// the others and never makes memory grow. When its buffer is full it is
// unhooked from the shared stream; once its reader has drained half of the
// buffer it catches up on its own from the first revision it is missing,
// through its own etcd watch, or, if that history has been compacted
// meanwhile, with Resync events; then it rejoins the shared stream. Nothing
// is dropped. A [Watch] runs no goroutine of its own while its reader keeps
// up.
//
// # Sessions: keepalives and Lost
//
// A [Session] refreshes its lease with one keepalive request every third of
// the TTL (at most every 5s; [WithKeepAliveInterval]), on the client's
// stream connection, each bounded by [Config.StallTimeout] (or the interval,
// if shorter). The sessions of a Client share one keepalive stream per
// connection, so that with etcd auth on a keepalive costs no login (clientv3
// fetches a token for every stream it opens). A keepalive that fails or
// stalls makes the session Suspended at once and moves the stream
// connection (and the watches on it) to the next member, where it retries
// within a fraction of a second; one that ran out of time is retried with
// twice the time, up to what is left before Lost, and stays on its member
// if that member answered anything meanwhile (it is slow, not silent), so
// that members that answer, only more slowly than StallTimeout, keep the
// lease without a new connection per attempt.
//
// The server expires a lease TTL after the leader last renewed it, and it
// can only have renewed it after the client sent the request, so the lease
// lives at least until TTL after the send time of the last keepalive that
// succeeded (a new leader only extends leases, by its election timeout, and
// a keepalive whose answer was lost can only have extended it further). The
// session declares Lost a margin before that moment, measured on the
// client's monotonic clock from when the request was sent, not when its
// answer came back. The margin, a tenth of the TTL but at least 500ms (a
// quarter of TTLs under 2s; [WithLostMargin]), covers what can make Lost
// reach the owner late: timers firing late on a loaded machine or during a
// garbage collection pause, the owner's own reaction to the state, and clock
// rate differences between client and server (under 0.1% with NTP). The
// server itself deletes expired leases only on its next half-second sweep
// and after a raft round, which adds slack that the margin does not rely on.
//
// # Ephemeral keys and registrations
//
// An [Ephemeral] follows its key through the client's watch engine, as
// [Key.Watch] does: a broken, silent or leaderless link is noticed and
// survived as for any [Watch], by the one stall detector every watch of the
// client shares. Two Ephemerals on one key fight over it, each putting its
// value back; the restores are paced (a restore within 5s of the previous
// one waits, longer each time, up to 5s) so that the fight stays cheap.
//
// A [Registration] is an Ephemeral, so a silent process disappears from its
// service within about the TTL, and an instance whose lease was lost is
// published again once its link comes back. An ID is taken while its key
// exists: registered by another live process, or by a crashed predecessor
// whose lease has not expired yet, which takes at most its TTL.
//
// # When leadership ends
//
// The [Leadership.Context] of a leader whose keepalives fail is cancelled
// once no keepalive of its lease has succeeded for so long that the session
// would declare the lease Lost within the step-down margin
// ([WithStepDownMargin]), whether the session is Suspended or a keepalive is
// still in flight. This rule is what makes the leader know before anyone
// else can win. Another candidate wins only once the leader key is deleted.
// If nobody deletes it and nobody revokes the lease, that takes the lease
// expiring, which the server does no earlier than the TTL after the leader
// sent its last successful keepalive (see Sessions: keepalives and Lost).
// The session declares Lost the Lost margin before that moment, on the
// client's monotonic clock, and the leadership ends the step-down margin
// before Lost: at least the two margins together (1s with a 5s TTL and the
// defaults) before the earliest moment another candidate can win, which
// leaves room for late timers and for the leader to stop what it is doing.
//
// A key deleted or a lease revoked by someone else ends leadership as soon
// as the leader sees its key go; when the server no longer knows the lease
// (asked then, one request), the cause matches [ErrLeaseLost] too. What the
// margins cannot cover, a pause longer than them, a key deleted or
// a lease revoked by someone else, the guarded writes do: [Leadership.Txn],
// [GuardedPut] and [GuardedDelete] apply only while the leader key still
// exists with the leadership's token, a condition the cluster checks in the
// same etcd transaction as the write. Whatever the timing, a deposed
// leader's late writes are refused by the cluster itself.
//
// # Discovery: how fresh a view is
//
// A [Tracker]'s view can only be as fresh as its link to the cluster: while
// that link is down, [Tracker.State] is not WatchConnected and
// [Tracker.Stale] reports true, and instances that went away meanwhile are
// still listed. They are removed as soon as the link is back.
//
// The resolver of [Client.ResolverBuilder] runs a Tracker of the service
// and hands every new view to gRPC. It is not generic: it reads each
// instance's address and the raw bytes of its metadata from the stored
// object (see Key layout) without decoding them, so it serves services of
// any metadata type; decode the metadata with [Service.DecodeResolved]
// where a balancer needs it. An instance whose stored object is unreadable
// is left out; an empty service resolves to no endpoints, which gRPC reports
// as a resolver that produced zero addresses. Failures reach gRPC through
// ReportError: when the resolver cannot get a first view, when its view has
// been stale for half of [Config.StallTimeout] (the watch itself is declared
// Suspended after a StallTimeout of silence), and when its tracker ends (the
// Client was closed). While the view is stale, gRPC keeps using the
// endpoints it has; once the view is fresh again the resolver sends it
// again. ResolveNow does nothing: the view follows every change as it is
// made.
//
// # Requests on a sick member
//
// Reads, writes and transactions of keys and prefixes ([Key.Get],
// [Key.Put], [Key.Create], [Key.CompareAndSwap], [Key.Update],
// [Key.Delete], [Prefix.List]) go to one member at a time, through a
// connection pinned to each configured endpoint: the member the watch and
// lease streams use while it answers, else the one that answered last.
// Each attempt is bounded by [Config.StallTimeout] and sent with etcd's
// require-leader flag, so that a member that lost its leader refuses it at
// once instead of holding it until its own request timeout. A member that
// refuses, does not answer in time, or cannot be connected to is recorded
// as sick, with the cause, and the request moves on to the next member, the
// healthy ones first. So a request issued while its member is partitioned
// from its peers (once the member knows it has no leader: an election
// timeout), blackholed after a failure was recorded, or stopped completes on
// a healthy member within StallTimeout plus a fraction of a second.
//
// A read may be sent anywhere again. A write is sent again only when it
// provably did not apply: the member refused it before proposing it ("no
// leader"), or it was never sent (the connection was not up). A write that
// was sent and got no answer (a silent member, a broken connection, the
// caller's context ending while it was in flight) fails at once with
// [ErrUnknownOutcome], naming the member and the cause: it may have applied,
// or may still. See ErrUnknownOutcome for how to retry a Create,
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
// request in n to it until the request times out. [Client.Raw] still
// round-robins, and calls made through it move nowhere; so, for now, do the
// guarded writes of a [Leadership] and the reads of an [Election]. A Client
// made by [Wrap] sends its requests through the wrapped client, which picks
// the member.
//
// # Testing
//
// The etcdtest package runs embedded etcd members inside a test, and the
// proxy package injects network faults (FIN, RST, blackhole, pause, latency,
// bandwidth) between a client and a member.
package etcdkit
