package etcdkit

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// electionRoot is the reserved name, under the client's namespace, below
// which every election keeps its candidate keys.
const electionRoot = "_etcdkit/election"

// Election is a leader election among the holders of one name: candidates
// call Campaign, the one whose candidate key is oldest leads, the others
// wait in line. Make one with [NewElection]; it holds no state besides its
// configuration, is cheap to make and safe for concurrent use. Any number of
// Campaigns may run at once, from one Election or many, in one process or
// many. A leader learns it may have lost leadership before another can win,
// unless someone else deletes its key or revokes its lease (it then learns
// when it sees its key go, with ErrLeaseLost for a revoke), and its guarded
// writes apply only while it leads (see [Leadership]).
//
// Each candidate holds one key, attached to a lease of its own:
// <namespace>/_etcdkit/election/<name>/<lease in hex>, whose value is the
// candidate's id; <name> is the election's name path-escaped into one
// segment, so that election "a" never sees the candidates of election
// "a/b". The leader is the candidate whose key has the lowest create
// revision, as in etcd's concurrency.Election; that revision is the
// leadership's fencing token ([Leadership.Token]).
//
// An invalid name, TTL or option does not panic: every method returns the
// error, as Validate does.
type Election struct {
	c     *Client
	name  string
	ttl   time.Duration
	o     electionOptions
	cands *Prefix[[]byte] // candidate keys, named by their lease in hex
	err   error

	// A Mutex and a Semaphore are elections of their own kind (see
	// holdKind), whose oldest slots candidates hold.
	kind  *holdKind
	slots int
	// share is the session a Mutex's or a Semaphore's holders share; an
	// election's candidates have a session each.
	share *leaseShare
	// guard, if not empty, is a key every candidate key's put requires to
	// hold guardValue, recording it when absent (see casOp.guard), and
	// mismatch the error of a put that found it holding another: a
	// Semaphore's limit.
	guard      string
	guardValue []byte
	mismatch   func(*mvccpb.KeyValue) error
}

// NewElection returns the election called name among the clients of c's
// namespace, whose candidates hold leases of the given TTL. The TTL follows
// the rules of Client.NewSession (a whole number of seconds, at least the
// cluster's minimum); a leader whose link goes silent steps down within
// about the TTL, and another candidate takes over a little after it (see
// Leadership). Short TTLs make failover fast and leaders jumpy: with a TTL of
// a few seconds one keepalive stalled for a third of it is enough to step
// down.
func NewElection(c *Client, name string, ttl time.Duration, opts ...ElectionOption) *Election {
	return newContest(c, electionKind, name, ttl, 1, opts)
}

// newContest makes an election of the given kind, whose oldest slots
// candidates hold at once.
func newContest(c *Client, kind *holdKind, name string, ttl time.Duration, slots int, opts []ElectionOption) *Election {
	e := &Election{c: c, name: name, ttl: ttl, kind: kind, slots: slots}
	if c == nil {
		e.err = fmt.Errorf("etcdkit: new %s: nil client", kind.name)
		return e
	}
	if err := validateName(name); err != nil {
		e.err = errorf("%s: %w", kind.name, err)
		return e
	}
	if err := validateTTL(ttl); err != nil {
		e.err = errorf("%s %q: %w", kind.name, name, err)
		return e
	}
	o, err := buildElectionOptions(ttl, c.cfg.StallTimeout, opts)
	if err != nil {
		e.err = errorf("%s %q: %w", kind.name, name, err)
		return e
	}
	e.o = o
	e.cands = NewPrefix(c, kind.root+"/"+url.PathEscape(name), Bytes())
	e.err = e.cands.err
	if kind.shared {
		e.share = &leaseShare{e: e}
	}
	return e
}

// Name returns the election's name.
func (e *Election) Name() string { return e.name }

// TTL returns the TTL of the candidates' leases.
func (e *Election) TTL() time.Duration { return e.ttl }

// Validate returns the error that makes the election unusable (a nil
// client, an invalid name, TTL or option), or nil. Every method returns it
// too.
func (e *Election) Validate() error { return e.err }

// LeaderInfo describes who holds an election at a revision. Present tells
// whether anyone does; when it is false the other fields but Revision are
// zero.
type LeaderInfo struct {
	// Present is true when a candidate leads, false when there is no
	// candidate at all.
	Present bool
	// ID is the id the leader gave to Campaign.
	ID string
	// Token is the create revision of the leader's key: the fencing token
	// of its Leadership. Successive leaders have growing tokens.
	Token int64
	// Lease is the ID of the leader's lease.
	Lease int64
	// Revision is the cluster revision at which this was true.
	Revision int64
}

// String describes the leader, or says there is none.
func (li LeaderInfo) String() string {
	if !li.Present {
		return fmt.Sprintf("no leader (revision %d)", li.Revision)
	}
	return fmt.Sprintf("leader %q (token %d, revision %d)", li.ID, li.Token, li.Revision)
}

// same reports whether li and o name the same leader, or both none.
func (li LeaderInfo) same(o LeaderInfo) bool {
	return li.Present == o.Present && li.ID == o.ID && li.Token == o.Token && li.Lease == o.Lease
}

// leaderOf returns the candidate with the lowest create revision.
func leaderOf(entries []Entry[[]byte], rev int64) LeaderInfo {
	li := LeaderInfo{Revision: rev}
	for _, en := range entries {
		if !li.Present || en.CreateRevision < li.Token {
			li = LeaderInfo{Present: true, ID: string(en.Data), Token: en.CreateRevision, Lease: en.Lease, Revision: rev}
		}
	}
	return li
}

// Leader reads who leads the election now (a linearizable read). With no
// candidate it returns a LeaderInfo that is not Present, with the read's
// revision, and an error matching ErrNoCandidate. ctx bounds the call, with
// Config.RequestTimeout when it has no deadline.
func (e *Election) Leader(ctx context.Context) (LeaderInfo, error) {
	if e.err != nil {
		return LeaderInfo{}, e.err
	}
	rctx, cancel, err := e.c.opContext(ctx)
	if err != nil {
		return LeaderInfo{}, e.fail("leader", err)
	}
	defer cancel()
	resp, err := e.c.read(rctx, e.cands.path, clientv3.WithFirstCreate()...)
	if err != nil {
		return LeaderInfo{}, e.fail("leader", e.c.cause(err))
	}
	if len(resp.Kvs) == 0 {
		return LeaderInfo{Revision: resp.Header.Revision}, e.fail("leader", ErrNoCandidate)
	}
	kv := resp.Kvs[0]
	return LeaderInfo{Present: true, ID: string(kv.Value), Token: kv.CreateRevision, Lease: kv.Lease,
		Revision: resp.Header.Revision}, nil
}

func (e *Election) fail(op string, err error) error {
	return errorf("%s %q: %s: %w", e.kind.name, e.name, op, err)
}

// countChange counts a change of leader, if e's holdings are leaderships
// (see holdKind.leadershipChange).
func (e *Election) countChange() {
	if e.kind.leadershipChange {
		e.c.cfg.Metrics.Add(MetricLeadershipChanges, 1)
	}
}
