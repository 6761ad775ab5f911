package robustness

import (
	"fmt"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// OpKind is the kind of a single-key operation made by a writer.
type OpKind int

const (
	// OpPut is Key.Put.
	OpPut OpKind = iota + 1
	// OpCAS is Key.CompareAndSwap.
	OpCAS
	// OpUpdate is Key.Update with a function that chains tags (see Op).
	OpUpdate
	// OpGet is Key.Get.
	OpGet
	// OpDelete is Key.Delete.
	OpDelete
)

// String returns the operation's name as the timeline prints it.
func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "put"
	case OpCAS:
		return "cas"
	case OpUpdate:
		return "update"
	case OpGet:
		return "get"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Outcome says how an operation ended.
type Outcome int

const (
	// OK: the call returned without error (for a Get, whether or not the key
	// was found; see Op.Found).
	OK Outcome = iota + 1
	// Conflict: a CompareAndSwap found another revision. Op.Found,
	// Op.Result and Op.Rev describe what the key held.
	Conflict
	// Failed: the call failed in a way that proves it did not apply (an
	// Update that gave up after conflicts, a write whose error does not
	// match etcdkit.ErrUnknownOutcome).
	Failed
	// Unknown: the call failed in a way that leaves open whether it
	// applied (a timeout, a lost connection, a cancelled context).
	Unknown
)

// String returns the outcome's name.
func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Conflict:
		return "conflict"
	case Failed:
		return "failed"
	case Unknown:
		return "unknown"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Op is one call a writer made on one key, with its invoke and return times
// relative to the start of the schedule.
//
// Every value a writer stores is unique: Put and CompareAndSwap store a tag
// "w<writer>.<seq>", and Update stores "<tag>^<previous tag>", where the
// previous tag is the tag of the value the update function was given ("" if
// the key was absent). A value found in the cluster's history therefore
// names the call that wrote it.
type Op struct {
	// Client is the writer's number.
	Client int
	// Key is the key's name relative to the schedule's namespace.
	Key  string
	Kind OpKind
	// Value is the value a Put or CompareAndSwap stores, or the tag of an
	// Update.
	Value string
	// Expected is the mod revision a CompareAndSwap expects (0: absent).
	Expected       int64
	Invoke, Return time.Duration
	Outcome        Outcome
	// Found reports, for a Get or a Conflict, whether the key existed.
	Found bool
	// Result is the value a Get read, the value a Conflict found, or the
	// value an Update stored.
	Result string
	// Rev is the revision of a write, the mod revision a Get read, or the
	// mod revision a Conflict found.
	Rev int64
	// Err is the error's text for Failed and Unknown outcomes.
	Err string
}

// Change is one event of the cluster's real history under the schedule's
// namespace, as read back with a direct client after the run.
type Change struct {
	Rev  int64
	Type etcdkit.EventType
	// Key is the key's name relative to the namespace.
	Key string
	// Value is the stored bytes of a Put.
	Value string
	// CreateRev, Version and Lease are the key's metadata after a Put.
	CreateRev, Version, Lease int64
}

// Compaction is a compaction the schedule made: every revision below Rev is
// gone from then on.
type Compaction struct {
	Rev int64
	// At is when the compaction was asked for: watches may meet it from
	// then on.
	At time.Duration
}

// StartMode is where a subscriber asked its events to start.
type StartMode int

const (
	// StartNow: a watch from now; changes after its Synced must be delivered.
	StartNow StartMode = iota + 1
	// StartAfter: AfterRevision(Subscriber.After).
	StartAfter
	// StartInitial: WithInitial, the current state first.
	StartInitial
)

// String returns the mode's name.
func (m StartMode) String() string {
	switch m {
	case StartNow:
		return "now"
	case StartAfter:
		return "after"
	case StartInitial:
		return "initial"
	}
	return fmt.Sprintf("StartMode(%d)", int(m))
}

// Delivery is one event a subscriber received.
type Delivery struct {
	// At is when the subscriber's reader received it.
	At   time.Duration
	Type etcdkit.EventType
	// Key is the key's name relative to the namespace (not to the prefix).
	Key   string
	Value string
	Rev   int64
	// Initial and Resync are the event's flags.
	Initial, Resync bool
}

// Subscriber is the record of one Watch (of a Key, a Prefix or a Cache).
type Subscriber struct {
	// Name identifies the subscriber in reports, e.g. "s2 prefix data after".
	Name string
	// Scope is the key's name, or for a prefix the prefix's name followed by
	// "/", relative to the namespace.
	Scope string
	// Prefix reports whether Scope is a prefix.
	Prefix bool
	Start  StartMode
	// After is the start revision for StartAfter, and for StartNow the
	// revision of a linearizable read made after Synced closed: every change
	// above it must be delivered.
	After int64
	// Before is, for a Watch from now, the revision of a linearizable read
	// that returned before Watch was called: no change at or below it may
	// be delivered. 0 when unknown (Cache subscriptions, which start from
	// the cache's contents rather than from the cluster).
	Before int64
	// Events are the events received, in order.
	Events []Delivery
	// Ended says how the watch ended, when that was wrong: by itself
	// before the run closed it, or closed with an Err other than
	// etcdkit.ErrClosed. "" when it ran until the run closed it.
	Ended string
	// Stuck is set when the subscriber did not catch up with the cluster's
	// history before the settle deadline.
	Stuck string
	// Compacted is set when the watch ended by itself with
	// etcdkit.ErrCompacted (the error), which a Prefix watch not started
	// WithInitial may do when the history it must resume from and the
	// state at its position are gone; CompactedAt is when.
	Compacted   string
	CompactedAt time.Duration

	mu sync.Mutex
}

// add records an event.
func (s *Subscriber) add(d Delivery) {
	s.mu.Lock()
	s.Events = append(s.Events, d)
	s.mu.Unlock()
}

// lastRev returns the revision of the last event received, 0 for none.
func (s *Subscriber) lastRev() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastRevLocked()
}

func (s *Subscriber) lastRevLocked() int64 {
	if n := len(s.Events); n > 0 {
		return s.Events[n-1].Rev
	}
	return 0
}

// CacheRecord is the final state of one Cache, compared with the cluster's.
type CacheRecord struct {
	Name string
	// Prefix is the cached prefix's name followed by "/".
	Prefix string
	// Final is the cache's contents at the end: key name (relative to the
	// namespace) to value and mod revision.
	Final map[string]KV
	// Stuck is set when the cache did not reach the final state before the
	// settle deadline.
	Stuck string
}

// TrackerRecord is what one discovery Tracker delivered.
type TrackerRecord struct {
	Name string
	// Prefix is where the service's instances are kept, relative to the
	// namespace and ending in "/"; an instance's key is Prefix + its ID.
	Prefix string
	// Views are the views received from Updates, in order.
	Views []TrackerView
	// Final is the tracker's view at the end.
	Final map[string]string
	// Stuck is set when the tracker did not reach the final state before
	// the settle deadline.
	Stuck string
}

// TrackerView is one view a Tracker delivered: instance ID to
// "<addr> <meta>".
type TrackerView struct {
	At        time.Duration
	Instances map[string]string
}

// KV is a value with its mod revision.
type KV struct {
	Value string
	Rev   int64
}

// String formats the value as "value@rev".
func (kv KV) String() string { return fmt.Sprintf("%q@%d", kv.Value, kv.Rev) }

// FaultRecord is one fault step as it was executed.
type FaultRecord struct {
	At time.Duration
	// Took is how long the step took to execute.
	Took time.Duration
	// Desc describes the step, e.g. "blackhole p1 upstream".
	Desc string
}

// Note is a line of the timeline that no other record carries: session
// states, leadership changes, skipped steps.
type Note struct {
	At   time.Duration
	Who  string
	Text string
}

// Outage is an interval during which an owner's only path to the cluster
// was cut, derived from the schedule.
type Outage struct {
	From, To time.Duration
	// Why names the faults that cut the path.
	Why string
	// Doubtful marks an interval during which the path may or may not
	// have carried the owner's traffic (a one-way cut in the direction the
	// server talks, or held new connections): neither presence nor absence
	// of the key is required then.
	Doubtful bool
}

// EphemeralRecord is the life of one ephemeral key and its owner.
type EphemeralRecord struct {
	// Owner names the owner, e.g. "o1 via p1".
	Owner string
	// Key is the ephemeral key's name relative to the namespace.
	Key string
	// TTL is the owner's lease TTL.
	TTL time.Duration
	// Member is the member whose proxy the owner uses; StallTimeout its
	// client's Config.StallTimeout, which bounds each keepalive and grant
	// attempt (0: not known).
	Member       int
	StallTimeout time.Duration
	// Created and Closed bound the owner's life (Closed: when Close was
	// called; the key is deleted from then on).
	Created, Closed time.Duration
	// Outages are the intervals during which the owner's path was cut.
	Outages []Outage
	// Lost is set when the key was absent at the end although its owner was
	// connected, or was not the owner's latest value.
	Lost string
	// LostAt are the times the owner was told its lease was Lost (from
	// then on it must presume its key gone, until Recovered).
	LostAt []time.Duration
}

// GuardedWrite is one successful write guarded by a leadership token.
type GuardedWrite struct {
	// Leader names the campaigner, Token is its leadership token.
	Leader string
	Token  int64
	// Key and Value are what was written (relative to the namespace); they
	// may be empty in a forged history.
	Key, Value string
	// Rev is the revision of the write.
	Rev            int64
	Invoke, Return time.Duration
}

// ElectionRecord is one election and the leaderships its campaigners won.
type ElectionRecord struct {
	Name string
	// Candidates is the prefix of the candidate keys, relative to the
	// namespace and ending in "/": the leader is the candidate whose key has
	// the lowest create revision, and that revision is its token.
	Candidates string
	// Fenced is the key the leaders write with GuardedPut, values
	// "<id> <token> <seq>".
	Fenced      string
	Leaderships []LeaderRecord
}

// LeaderRecord is one leadership as its holder saw it.
type LeaderRecord struct {
	ID    string
	Token int64
	// Won is when Campaign returned it; Lost when its Context was cancelled
	// (0 if it never was before the run ended).
	Won, Lost time.Duration
	// Cause is why the Context was cancelled.
	Cause string
}

// History is everything recorded during one schedule, plus the cluster's
// real history read back after it. Check validates it.
type History struct {
	// Seed is the schedule's seed.
	Seed int64
	// Namespace is the schedule's key namespace.
	Namespace string
	// StartRev is the cluster revision before the schedule's first write.
	// SettledRev is the revision once every workload had stopped writing:
	// subscribers must have received every change up to it. FinalRev is
	// the revision after every client was closed: a write whose outcome was
	// unknown may still land between the two. Changes covers (StartRev,
	// FinalRev]; a zero SettledRev means FinalRev.
	StartRev, SettledRev, FinalRev int64
	Changes                        []Change
	Compactions                    []Compaction
	Ops                            []Op
	Subscribers                    []*Subscriber
	Caches                         []*CacheRecord
	Ephemerals                     []*EphemeralRecord
	Guarded                        []GuardedWrite
	Elections                      []*ElectionRecord
	Holdings                       []*HoldingRecord
	Trackers                       []*TrackerRecord
	Lives                          []*LiveRecord
	Faults                         []FaultRecord
	Notes                          []Note
	// Stalls are the process's own scheduling stalls during the schedule,
	// as its stall meter measured them.
	Stalls []Stall
	// Raft are the changes of the members' raft terms and leaders during
	// the schedule.
	Raft []RaftChange
	// Probes are the latency probes of the cluster during the schedule.
	Probes []Probe
}

// Recorder collects a History from concurrent workloads. Its methods are
// safe for concurrent use.
type Recorder struct {
	start time.Time

	mu sync.Mutex
	h  *History
}

// NewRecorder starts a recorder whose times are relative to now.
func NewRecorder(seed int64, namespace string) *Recorder {
	return &Recorder{start: time.Now(), h: &History{Seed: seed, Namespace: namespace}}
}

// Now returns the time since the recorder started.
func (r *Recorder) Now() time.Duration { return time.Since(r.start) }

// Op records a finished call.
func (r *Recorder) Op(op Op) {
	r.mu.Lock()
	r.h.Ops = append(r.h.Ops, op)
	r.mu.Unlock()
}

// Subscriber registers a subscriber; its events are recorded on it.
func (r *Recorder) Subscriber(s *Subscriber) {
	r.mu.Lock()
	r.h.Subscribers = append(r.h.Subscribers, s)
	r.mu.Unlock()
}

// Cache registers a cache record.
func (r *Recorder) Cache(c *CacheRecord) {
	r.mu.Lock()
	r.h.Caches = append(r.h.Caches, c)
	r.mu.Unlock()
}

// Ephemeral registers an ephemeral record.
func (r *Recorder) Ephemeral(e *EphemeralRecord) {
	r.mu.Lock()
	r.h.Ephemerals = append(r.h.Ephemerals, e)
	r.mu.Unlock()
}

// Guarded records a successful guarded write.
func (r *Recorder) Guarded(g GuardedWrite) {
	r.mu.Lock()
	r.h.Guarded = append(r.h.Guarded, g)
	r.mu.Unlock()
}

// Tracker registers a tracker record.
func (r *Recorder) Tracker(t *TrackerRecord) {
	r.mu.Lock()
	r.h.Trackers = append(r.h.Trackers, t)
	r.mu.Unlock()
}

// Election registers an election record.
func (r *Recorder) Election(e *ElectionRecord) {
	r.mu.Lock()
	r.h.Elections = append(r.h.Elections, e)
	r.mu.Unlock()
}

// Fault records an executed fault step.
func (r *Recorder) Fault(f FaultRecord) {
	r.mu.Lock()
	r.h.Faults = append(r.h.Faults, f)
	r.mu.Unlock()
}

// Note records a timeline note.
func (r *Recorder) Note(who, format string, args ...any) {
	n := Note{At: r.Now(), Who: who, Text: fmt.Sprintf(format, args...)}
	r.mu.Lock()
	r.h.Notes = append(r.h.Notes, n)
	r.mu.Unlock()
}

// Compaction records a compaction.
func (r *Recorder) Compaction(c Compaction) {
	r.mu.Lock()
	r.h.Compactions = append(r.h.Compactions, c)
	r.mu.Unlock()
}

// update runs f on the history under the lock.
func (r *Recorder) update(f func(h *History)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r.h)
}

// History returns the recorded history. Call it once the workloads have
// stopped.
func (r *Recorder) History() *History {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.h
}
