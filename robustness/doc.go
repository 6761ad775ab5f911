// Package robustness runs etcdkit against a three-member etcd cluster while
// random, reproducible fault schedules break it, and checks the recorded
// history against the library's guarantees.
//
// Unit-level fault tests prove one fault at a time; real outages stack them.
// A [Schedule], drawn from a seed by [Generate], overlaps proxy faults (stop,
// FIN, RST, blackholes, pauses, latency), member faults (stop, kill,
// partition), leadership moves and compactions, and always ends healed.
// While it runs, pluggable [Workload]s drive traffic through etcdkit clients
// on the proxied endpoints and record what they saw in a [History]: writers
// record every call with its invoke and return times, subscribers every
// event they received. After the schedule the [Env] heals the cluster, lets
// it settle, waits for every workload to converge, and reads the cluster's
// real history back with direct clients.
//
// # Checks
//
// [Check] validates a History, and is what the tests call; it knows nothing
// of how the history was produced, so a test can feed it a forged one:
//
//   - every subscriber's events are ordered, unique, start where asked and
//     match the cluster's real history, with Resync events only where a
//     compaction happened while the subscriber was behind;
//   - every cache ends equal to the cluster's final state;
//   - single-key operations (Put, CompareAndSwap, Update, Get, Delete) are
//     linearizable against a register model, checked with porcupine;
//   - every acknowledged write is in the cluster's history;
//   - successful guarded writes never go back to an older leader's token;
//   - ephemeral keys exist while their owners are connected, and disappear
//     once an owner has been cut off for longer than its TTL (with a
//     tolerance for the election timeout and the machine's load).
//
// A failure report names the seed and prints a timeline of faults, calls and
// events with times relative to the start of the schedule; the tests replay
// one schedule with "go test ./robustness -run TestRobustness -seed N".
package robustness
