// Package etcdkit is a typed client for etcd v3 for services that share
// runtime configuration and coordinate through etcd: typed keys and
// prefixes, live configuration values with defaults, validation and a
// cold-start snapshot, watches and caches that survive any network fault,
// sessions and self-healing ephemeral keys, service discovery with a gRPC
// resolver, leader election, mutexes and semaphores with fencing, typed
// transactions, requests that move off a sick member, and a cluster health
// monitor. Every name lives under [Config.Namespace]; the library keeps its
// own keys under "_etcdkit/" there.
//
// # Two rules for every handle
//
// Making. A description (NewKey, NewPrefix, NewService, NewElection,
// NewMutex, NewSemaphore, NewTxn) takes no ctx, sends nothing and never
// fails: what is wrong with its arguments is kept, and returned by Validate
// and by every method. A holding (Client.NewSession, NewEphemeral,
// Service.Register, Election.Campaign, Mutex.Lock and TryLock,
// Semaphore.Acquire and TryAcquire) waits until the cluster grants it and
// returns (handle, error): with an error nothing is held and there is
// nothing to close. A view (Key.Watch, Prefix.Watch, Prefix.Cache,
// Cache.Subscribe, Service.Track, Election.Observe, NewLive, NewLiveMap,
// NewHealthMonitor) never waits for the cluster: it returns at once and
// follows the cluster in the background, so a service starts while etcd is
// down. A view that cannot start at all (a closed Client, an ended ctx, an
// invalid description or option) comes back already ended, with Err saying
// why, so that `for ev := range k.Watch(ctx).Events()` needs no second
// check; Prefix.Cache and Service.Track report the same causes as an error
// instead, and return no handle.
//
// Contexts. The ctx given to a call bounds that call. A handle that keeps
// working for you after the call returns (every view, a Session, an
// Ephemeral, a Registration) is part of that call: it ends when ctx ends,
// letting go of what it holds, and Err wraps ctx's cause, so pass a ctx
// that lasts as long as the handle should. A Leadership, Lock or Permit
// outlives the ctx of the call that won it, which bounds only the wait: a
// holding is given back on purpose (Resign, Unlock, Release, Close) or lost
// (its Context is cancelled); Election.Run ties leading to a ctx. The ctx
// of New bounds only the dial; handles made without a ctx
// (NewHealthMonitor, Cache.Subscribe) last until Close or until what made
// them ends. Every long-lived handle has Close (idempotent, waits for its
// goroutines), Done, and Err (why it ended, once Done is closed); a channel
// never closes without Err saying why, and Client.Close ends them all with
// ErrClosed.
//
// Why: a view that returned an error would push every caller into a retry
// loop for the day etcd is down, which the view already runs; a holding
// that returned a handle before the cluster granted it would let a caller
// act as leader, lock holder or registered instance without being one.
//
// # Quick start
//
// Read a typed configuration value on every request, without waiting: a
// [Live] keeps the last good value of a key, the default while the key is
// absent, and refuses values that do not decode or validate. With a
// snapshot file it starts, marked stale, while etcd is down. The package
// example NewLive runs this code.
//
//	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:2379"}, Namespace: "billing",
//		StartWithoutCluster: true}) // start, and serve the snapshot, while etcd is down
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
// Or act on every change: the current value first, then every change once,
// in order. Look at Type and Err before Value, which is the zero value after
// a Delete and for a stored value that does not decode. The package example
// QuickStart runs this code.
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
// # Handles
//
// The [Client] ([New], [Wrap], [Config]) makes every handle; its type
// documentation says which member a request goes to and when it moves on.
//
// Descriptions, cheap values that name something in the cluster:
//
//   - [Key] and [Prefix]: typed keys, read, written, compared and swapped;
//     values pass through a [Codec] ([JSON], [String], [Bytes], [Proto]).
//   - [Txn] ([NewTxn], [GuardedTxn]) and [UpdateKeys]: transactions over typed keys.
//   - [Service]: a set of instances that register and are discovered.
//   - [Election], [Mutex], [Semaphore]: one leader, one lock holder, at most
//     limit permit holders at a time.
//
// Holdings, granted by the cluster:
//
//   - [Session]: a lease kept alive, with its state ([SessionState]).
//   - [Ephemeral] and [Registration]: a key (an instance) that lives as long
//     as its owner and is put back when it goes missing.
//   - [Leadership], [Lock], [Permit]: each a [Fence] that guards writes
//     ([GuardedPut], [GuardedDelete], [GuardedUpdateKeys]).
//
// Views, which follow the cluster:
//
//   - [Watch]: every change of a key or prefix, once, in order.
//   - [Cache]: a synced copy of a prefix in memory.
//   - [Live] and [LiveMap]: runtime configuration, read without waiting.
//   - [Tracker]: the instances of a service ([Client.ResolverBuilder] feeds
//     them to gRPC).
//   - [Observation]: who leads an election.
//   - [HealthMonitor]: the cluster's health, and the service's readiness.
//
// For tests, package etcdtest runs etcd members inside a test (in-process or
// as real etcd processes) and package proxy injects network faults between a
// client and a member.
//
// # Guarantees
//
// Each is documented in full, with its limits, where it points:
//
//   - A [Watch] delivers every change once, in revision order, across closed,
//     reset, silent and leaderless links and failed members, and after a
//     compaction brings its reader to the current state with Resync events.
//   - A reader that falls behind loses nothing and slows no other ([Watch]).
//   - A [Session] declares Lost before the server can expire its lease.
//   - An [Ephemeral] (a [Registration]) survives a silent link and a second
//     owner, and comes back under a new lease once the link returns.
//   - A leader learns it may have lost leadership before any other candidate
//     can win, and its guarded writes fail once it no longer leads
//     ([Leadership]); the same holds for a [Lock] and a [Permit].
//   - A [Tracker], and the gRPC resolver over it, says when its view may be
//     stale, and keeps gRPC on the endpoints it has meanwhile.
//   - A [Live] never serves a value that failed to decode or validate, starts
//     from its snapshot while the cluster is unreachable, and never lets an
//     older cluster state replace a newer snapshot.
//   - A request moves off a partitioned, silent or stopped member within
//     [Config.StallTimeout], and a write whose outcome cannot be known fails
//     with [ErrUnknownOutcome] ([Client]).
//
// # Read more
//
// The type documentation gives each handle's contract and timing. README.md
// has the guarantees and the tests that prove them, the options of Live,
// Config's defaults, testing a service with etcdtest and proxy, supported
// etcd releases and benchmarks. The programs under examples/ run each
// capability (go run ./examples/tour walks through all of them on an
// embedded cluster, injecting faults), and the package examples run the
// code shown here.
package etcdkit
