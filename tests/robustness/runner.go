package robustness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/internal/backoff"
)

// SettleTimeout bounds how long a workload may take to converge with the
// cluster once everything is healed. It is generous: the machine may be a
// loaded two-core one running the race detector.
const SettleTimeout = 30 * time.Second

// StartBudget bounds the start-up of a schedule's workloads, all of them
// together, before the first fault. A step of a start-up (a client's
// dial, a lease grant, a first read or write) that fails in a transient
// way is retried within it (see Run.StartStep): on a loaded machine one
// request timeout is no measure of the cluster's health.
const StartBudget = time.Minute

// A Workload is one kind of traffic. A fresh value runs for each schedule;
// the runner calls its methods in this order, from one goroutine:
//
//  1. Start, before any fault: make clients, start the traffic's
//     goroutines, and return once the traffic runs (subscribers ready).
//  2. Quiesce, when the fault phase ends and before the heal: stop making
//     calls; calls in flight may end as unknown.
//  3. Settle, once the cluster is healed and has a leader: reach the state
//     the workload wants to end in (owners back, sentinel writes). After
//     Settle the workload writes nothing more.
//  4. Converge, once the cluster's history has been read back (Run.Changes):
//     wait until what the workload observes has caught up with it, marking
//     what has not by the deadline of ctx.
//  5. Close, always (also after a failure, through t.Cleanup): stop
//     everything and close every client, and return once its goroutines
//     have ended. Close must be idempotent.
//
// Workloads record what they see through Run.Rec.
type Workload interface {
	Name() string
	Start(ctx context.Context, run *Run) error
	Quiesce(run *Run)
	Settle(ctx context.Context, run *Run) error
	Converge(ctx context.Context, run *Run)
	Close()
}

// Env is a running three-member cluster behind proxies, prepared to run
// schedules one after the other. Schedules share the cluster but nothing
// else: each runs in a fresh key namespace with fresh clients, and the
// cluster is healed between them.
type Env struct {
	cluster *etcdtest.Cluster
	// direct are raw clients, one per member, that bypass the proxies.
	direct []*clientv3.Client
	runs   int
	// user and password authenticate the workloads' clients, when set.
	user, password string
}

// NamespaceRoot is the prefix of every schedule's namespace: a user that
// may read and write it can run the workloads (see Env.Authenticate).
const NamespaceRoot = "robust/"

// Authenticate makes the workloads' clients log in as user, for a cluster
// with etcd auth on; the user needs read and write access to NamespaceRoot.
func (env *Env) Authenticate(user, password string) { env.user, env.password = user, password }

// NewEnv prepares a cluster started with etcdtest.WithProxy for schedules.
// Its direct clients are closed by t.Cleanup.
func NewEnv(t testing.TB, c *etcdtest.Cluster) *Env {
	t.Helper()
	env := &Env{cluster: c}
	for _, m := range c.Members() {
		if m.Proxy() == nil {
			t.Fatalf("robustness: member %s has no proxy; start the cluster with etcdtest.WithProxy()", m.Name())
		}
		env.direct = append(env.direct, m.Client(t))
	}
	return env
}

// Cluster returns the cluster the schedules run on.
func (env *Env) Cluster() *etcdtest.Cluster { return env.cluster }

// index returns the position of member m.
func (env *Env) index(m *etcdtest.Server) int {
	return slices.Index(env.cluster.Members(), m)
}

// leaderClient waits for a leader and returns its direct client.
func (env *Env) leaderClient(t testing.TB) *clientv3.Client {
	t.Helper()
	return env.direct[env.index(env.cluster.WaitLeader(t))]
}

// Result is what one schedule produced.
type Result struct {
	Schedule *Schedule
	History  *History
	// Injected counts the faults injected (heals not counted).
	Injected int
	// Took is the schedule's wall time, settling and reading included.
	Took time.Duration
}

// Run is one schedule being run: what workloads use to reach the cluster
// and record what they see.
type Run struct {
	env *Env
	t   testing.TB
	// Rec records the history.
	Rec *Recorder
	// Namespace is the schedule's key namespace; Clients work under it.
	Namespace string
	seed      int64
	sched     *Schedule
	inj       *injector
	// startBy is when the start budget runs out.
	startBy time.Time

	mu       sync.Mutex
	archived int64 // history is known up to this revision
	changes  []Change
}

// Schedule returns the schedule being run.
func (r *Run) Schedule() *Schedule { return r.sched }

// Rand returns the random source of the workload called name: the same
// for the same seed.
func (r *Run) Rand(name string) *RandSource { return &RandSource{NewRand(r.seed, name)} }

// ClientOptions say how a workload's client reaches the cluster.
type ClientOptions struct {
	// Name names the client in debug logs.
	Name string
	// Members are the members whose proxies the client uses, in order
	// (all three if empty).
	Members []int
	// StallTimeout is passed to Config.StallTimeout (0: the default).
	StallTimeout time.Duration
	// RequestTimeout is passed to Config.RequestTimeout (0: one second).
	RequestTimeout time.Duration
}

// Client connects an etcdkit client to the proxied endpoints under the
// schedule's namespace, retrying within the start budget (see StartStep).
// The client is closed by the test's cleanup, and
// should be closed by the workload's Close.
func (r *Run) Client(ctx context.Context, o ClientOptions) (*etcdkit.Client, error) {
	members := o.Members
	if len(members) == 0 {
		members = []int{0, 1, 2}
	}
	var eps []string
	for _, m := range members {
		eps = append(eps, r.env.cluster.Members()[m].ProxyEndpoint())
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = time.Second
	}
	log := zap.NewNop()
	if os.Getenv("ETCDKIT_ROBUSTNESS_DEBUG") != "" {
		log = zaptest.NewLogger(r.t, zaptest.Level(zap.DebugLevel)).Named(o.Name)
	}
	var c *etcdkit.Client
	err := r.StartStep(ctx, "connect client "+o.Name, func() (err error) {
		c, err = etcdkit.New(ctx, etcdkit.Config{
			Logger:         log,
			Endpoints:      eps,
			Namespace:      r.Namespace,
			DialTimeout:    2 * time.Second,
			RequestTimeout: o.RequestTimeout,
			StallTimeout:   o.StallTimeout,
			Username:       r.env.user,
			Password:       r.env.password,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	r.t.Cleanup(func() { _ = c.Close() })
	return c, nil
}

// StartStep runs op, one step of a workload's start-up, until it succeeds.
// A failure that etcdkit.IsRetryable calls transient (a timeout, no
// leader, an unreachable member), or a write of unknown outcome (start-up
// writes are all idempotent), is noted on the timeline and retried
// after a backoff, until ctx ends or the schedule's StartBudget runs out;
// any other failure, or the last, is returned with what names the step.
// op must leave nothing behind when it fails (a constructor that fails
// closes what it made).
func (r *Run) StartStep(ctx context.Context, what string, op func() error) error {
	b := backoff.New(50*time.Millisecond, time.Second)
	for attempt := 1; ; attempt++ {
		err := op()
		switch {
		case err == nil:
			return nil
		case !etcdkit.IsRetryable(err) && !errors.Is(err, etcdkit.ErrUnknownOutcome),
			ctx.Err() != nil, !time.Now().Before(r.startBy):
			return fmt.Errorf("%s (attempt %d, start budget %v): %w", what, attempt, StartBudget, err)
		}
		r.Rec.Note("runner", "%s failed (attempt %d), retrying: %v", what, attempt, err)
		if !b.Wait(ctx) {
			return fmt.Errorf("%s (attempt %d): %w", what, attempt, err)
		}
	}
}

// startContext returns ctx bounded by the schedule's start budget, for the
// waits of a start-up.
func (r *Run) startContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithDeadline(ctx, r.startBy)
}

// Rev returns the cluster's current revision, read linearizably through a
// direct client.
func (r *Run) Rev(ctx context.Context) (int64, error) {
	var err error
	for _, cli := range r.env.direct {
		// A member cut off from the others holds a linearizable read
		// until it times out: try the next one well before.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var rev int64
		rev, err = currentRev(actx, cli)
		cancel()
		if err == nil {
			return rev, nil
		}
	}
	return 0, err
}

// Outages returns the intervals within [from, to] during which a client
// that uses only member m's proxy could not reach a quorum.
func (r *Run) Outages(m int, from, to time.Duration) []Outage {
	return r.inj.outages(m, from, to)
}

// Changes returns the cluster's history under the namespace as read so far:
// when Converge is called, every change up to the settled revision, after
// which no workload writes (but a call whose outcome was unknown may still
// land).
func (r *Run) Changes() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changes
}

// archive reads the history up to the current revision, which it returns.
// It runs on the test's goroutine.
func (r *Run) archive(t testing.TB) (int64, error) {
	cli := r.env.leaderClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	rev, err := currentRev(ctx, cli)
	if err != nil {
		return 0, fmt.Errorf("read the revision: %w", err)
	}
	r.mu.Lock()
	from := r.archived
	r.mu.Unlock()
	cs, err := readChanges(ctx, cli, r.Namespace, from, rev)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	r.changes = append(r.changes, cs...)
	r.archived = rev
	r.mu.Unlock()
	return rev, nil
}

// RandSource is a workload's seeded random source.
type RandSource struct{ *rand.Rand }

// Duration returns a duration in [lo, hi].
func (r *RandSource) Duration(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(r.Int64N(int64(hi-lo)+1))
}

// Chance reports true with probability p.
func (r *RandSource) Chance(p float64) bool { return r.Float64() < p }

// Run runs schedule s with the workloads on the cluster and returns what
// was recorded. It fails the test only when the environment itself fails
// (a member does not restart, the history cannot be read); the caller
// checks the history with Check.
func (env *Env) Run(t testing.TB, s *Schedule, workloads []Workload) *Result {
	t.Helper()
	began := time.Now()
	env.healAll(t)
	env.runs++
	run := &Run{env: env, t: t, seed: s.Seed, sched: s, Namespace: fmt.Sprintf("%s%04d-%x", NamespaceRoot, env.runs, uint64(s.Seed))}
	run.Rec = NewRecorder(s.Seed, run.Namespace)
	run.inj = newInjector(t, run)
	meter := startStallMeter(run.Rec)
	defer meter.Stop()
	raft := startRaftLog(run.Rec, env.cluster.Members())
	defer raft.Stop()
	probeCtx, stopProbes := context.WithCancel(context.Background())
	defer stopProbes()
	var (
		probing sync.WaitGroup
		probes  = make([][]Probe, len(env.direct))
	)
	for i, cli := range env.direct {
		probing.Go(func() { probes[i] = probeLoop(probeCtx, run.Rec, i, cli) })
	}
	defer func() {
		stopProbes()
		probing.Wait()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A failure halfway leaves faults behind: heal them for the next
	// schedule, after the workloads' own cleanups.
	t.Cleanup(func() {
		if err := env.heal(); err != nil {
			t.Errorf("robustness: heal after the schedule: %v", err)
		}
	})

	startRev, err := currentRev(ctx, env.leaderClient(t))
	if err != nil {
		t.Fatalf("robustness: read the start revision: %v", err)
	}
	run.archived = startRev
	run.Rec.update(func(h *History) { h.StartRev = startRev })

	run.startBy = time.Now().Add(StartBudget)
	for _, w := range workloads {
		t.Cleanup(w.Close)
		if err := w.Start(ctx, run); err != nil {
			t.Fatalf("robustness: start workload %s: %v", w.Name(), err)
		}
	}

	begin := run.Rec.Now()
	run.Rec.Note("runner", "fault phase begins (%d faults over %.3fs)", len(s.Faults), s.Duration.Seconds())
	for _, st := range s.Steps() {
		sleepUntil(run.Rec, begin+st.At)
		run.inj.exec(s, st)
	}
	sleepUntil(run.Rec, begin+s.Duration)

	for _, w := range workloads {
		w.Quiesce(run)
	}
	env.healAll(t)
	run.Rec.Note("runner", "healed, leader agreed")
	settle, cancelSettle := context.WithTimeout(ctx, SettleTimeout)
	defer cancelSettle()
	for _, w := range workloads {
		if err := w.Settle(settle, run); err != nil {
			t.Fatalf("robustness: settle workload %s: %v", w.Name(), err)
		}
	}
	settledRev, err := run.archive(t)
	if err != nil {
		t.Fatalf("robustness: read the cluster's history: %v", err)
	}
	run.Rec.update(func(h *History) { h.SettledRev = settledRev })
	run.Rec.Note("runner", "history read up to revision %d", settledRev)
	converge, cancelConverge := context.WithTimeout(ctx, SettleTimeout)
	defer cancelConverge()
	for _, w := range workloads {
		w.Converge(converge, run)
	}
	run.Rec.Note("runner", "converged")
	for _, w := range workloads {
		w.Close()
	}
	run.Rec.Note("runner", "closed")
	// A call whose outcome was unknown may have landed meanwhile: read the
	// history on to the end, so that every event received is checked.
	finalRev, err := run.archive(t)
	if err != nil {
		t.Fatalf("robustness: read the cluster's history: %v", err)
	}
	stalls, terms := meter.Stop(), raft.Stop()
	stopProbes()
	probing.Wait()
	run.Rec.update(func(h *History) {
		h.Probes = slices.Concat(probes...)
		h.FinalRev = finalRev
		h.Changes = run.Changes()
		h.Stalls = stalls
		h.Raft = terms
	})
	return &Result{Schedule: s, History: run.Rec.History(), Injected: run.inj.injected, Took: time.Since(began)}
}

// sleepUntil waits until the recorder's clock reads at. This is the
// schedule's own timing, not synchronisation.
func sleepUntil(rec *Recorder, at time.Duration) {
	if d := at - rec.Now(); d > 0 {
		time.Sleep(d)
	}
}

// get reads one key (a full etcd key) through a direct client.
func (r *Run) get(ctx context.Context, key string) (*kvRead, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var err error
	for _, cli := range r.env.direct {
		var resp *clientv3.GetResponse
		if resp, err = cli.Get(ctx, key); err == nil {
			if len(resp.Kvs) == 0 {
				return nil, nil
			}
			return &kvRead{Value: resp.Kvs[0].Value, Lease: resp.Kvs[0].Lease}, nil
		}
	}
	return nil, err
}

// kvRead is a key read by Run.get.
type kvRead struct {
	Value []byte
	Lease int64
}
