package etcdkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// HealthStatus is the verdict of a health check on the whole cluster.
type HealthStatus int

const (
	// HealthUnknown is the zero HealthStatus: no check has completed yet.
	HealthUnknown HealthStatus = iota
	// Healthy means every member of the member list is reached through a
	// configured endpoint, follows the leader, serves a linearizable read
	// (learners excepted), has applied within WithMaxAppliedLag entries of
	// the leader, and no alarm is raised.
	Healthy
	// Degraded means the cluster is not Unhealthy, so it serves reads and
	// writes, but some member is not as Healthy requires: stopped,
	// unreachable, without a leader, following another leader, failing
	// linearizable reads, lagging or with a CORRUPT alarm. One more failure
	// may cost quorum. A member list or alarm list that cannot be read, and
	// an endpoint that reaches a member not in the list, are Degraded too.
	Degraded
	// Unhealthy means the cluster cannot serve writes: no member served a
	// linearizable read (no quorum), no reachable member knows a leader, or
	// a NOSPACE alarm is raised.
	Unhealthy
)

var healthStatusNames = [...]string{"unknown", "healthy", "degraded", "unhealthy"}

// String returns "unknown", "healthy", "degraded" or "unhealthy".
func (s HealthStatus) String() string {
	if s >= 0 && int(s) < len(healthStatusNames) {
		return healthStatusNames[s]
	}
	return "HealthStatus(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText encodes s as its String.
func (s HealthStatus) MarshalText() ([]byte, error) {
	if s < 0 || int(s) >= len(healthStatusNames) {
		return nil, fmt.Errorf("etcdkit: invalid HealthStatus %d", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes the String form of a HealthStatus.
func (s *HealthStatus) UnmarshalText(b []byte) error {
	i := slices.Index(healthStatusNames[:], string(b))
	if i < 0 {
		return fmt.Errorf("etcdkit: unknown health status %q", b)
	}
	*s = HealthStatus(i)
	return nil
}

// MemberID is an etcd member ID. Its text form is hexadecimal, as etcdctl
// prints it; 0 means no member.
type MemberID uint64

// String returns id in hexadecimal.
func (id MemberID) String() string { return strconv.FormatUint(uint64(id), 16) }

// MarshalText encodes id in hexadecimal.
func (id MemberID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hexadecimal member ID.
func (id *MemberID) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 16, 64)
	if err != nil {
		return errorf("member ID %q: %w", b, err)
	}
	*id = MemberID(v)
	return nil
}

// MemberHealth is what one check found out about one member of the cluster.
// Fields other than ID, Name, Endpoint and Err are zero when the member was
// not reachable.
type MemberHealth struct {
	// ID and Name identify the member; Name is empty for a member that was
	// added but has never started.
	ID   MemberID `json:"id"`
	Name string   `json:"name"`
	// Endpoint is the configured endpoint that reaches the member (it may be
	// a proxy in front of it), or "" if none is known to.
	Endpoint string `json:"endpoint,omitempty"`
	// Learner reports a non-voting member.
	Learner bool `json:"learner,omitempty"`
	// Reachable reports that the member answered a status request.
	Reachable bool `json:"reachable"`
	// ProbeLatency is how long a linearizable read through this member
	// took, or 0 if it failed or was not tried.
	ProbeLatency time.Duration `json:"probe_latency_ns"`
	// Leader is the member this member believes leads, 0 for none;
	// IsLeader reports that it believes it leads itself.
	Leader   MemberID `json:"leader"`
	IsLeader bool     `json:"is_leader"`
	// RaftTerm, RaftIndex (committed) and AppliedIndex are the member's
	// raft progress; AppliedLag is how many entries fewer than the leader
	// it had applied when asked.
	RaftTerm     uint64 `json:"raft_term"`
	RaftIndex    uint64 `json:"raft_index"`
	AppliedIndex uint64 `json:"applied_index"`
	AppliedLag   uint64 `json:"applied_lag"`
	// DBSize is the backend's physical size in bytes, DBSizeInUse the part
	// holding data, DBSizeQuota the member's quota.
	DBSize      int64 `json:"db_size"`
	DBSizeInUse int64 `json:"db_size_in_use"`
	DBSizeQuota int64 `json:"db_size_quota"`
	// Alarms are the alarms raised by this member: "NOSPACE", "CORRUPT".
	Alarms []string `json:"alarms,omitempty"`
	// Version is the member's etcd server version.
	Version string `json:"version,omitempty"`
	// Err is why the member is not fine in this check: the failed status
	// request or linearizable read. It is nil when both succeeded. In JSON
	// it is the "error" string.
	Err error `json:"-"`
}

// memberHealthJSON is MemberHealth without its methods, for the JSON forms.
type memberHealthJSON MemberHealth

// MarshalJSON encodes m with Err as the "error" string.
func (m MemberHealth) MarshalJSON() ([]byte, error) {
	v := struct {
		memberHealthJSON
		Error string `json:"error,omitempty"`
	}{memberHealthJSON: memberHealthJSON(m)}
	if m.Err != nil {
		v.Error = m.Err.Error()
	}
	return json.Marshal(v)
}

// UnmarshalJSON decodes the form MarshalJSON writes; Err becomes an error
// with the "error" string as its message.
func (m *MemberHealth) UnmarshalJSON(b []byte) error {
	var v struct {
		memberHealthJSON
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*m = MemberHealth(v.memberHealthJSON)
	if v.Error != "" {
		m.Err = errors.New(v.Error)
	}
	return nil
}

// label names the member in reasons: its name, or its ID when it has none
// (it never started, or the member list could not be read).
func (m *MemberHealth) label() string {
	if m.Name != "" {
		return m.Name
	}
	return m.ID.String()
}

// ClusterHealth is the result of one health check.
type ClusterHealth struct {
	// Status is the verdict; HealthUnknown only in the zero value.
	Status HealthStatus `json:"status"`
	// Reasons explain a Status other than Healthy, each naming the members
	// concerned; those that make the cluster Unhealthy come first. They are
	// worded to stay the same while the cluster's state does (no latencies,
	// no error texts), so that a change of Reasons is a change of state.
	Reasons []string `json:"reasons,omitempty"`
	// Leader is the leader most reachable members follow, 0 if none;
	// LeaderName is its name.
	Leader     MemberID `json:"leader"`
	LeaderName string   `json:"leader_name,omitempty"`
	// Members are every member of the cluster's member list, sorted by name,
	// then any member an endpoint reached that the list lacks.
	Members []MemberHealth `json:"members"`
	// CheckedAt is when the check started, Took how long it lasted.
	CheckedAt time.Time     `json:"checked_at"`
	Took      time.Duration `json:"took_ns"`
	// Endpoints are the client's own standing of each configured endpoint,
	// in configuration order: the one view its requests, watches and
	// sessions share when they pick a member, fed by their outcomes and by
	// this monitor's probes. Current and ServeHTTP fill it in as of the
	// call; Check as of the check's end.
	Endpoints []EndpointHealth `json:"endpoints,omitempty"`
	// Readiness are the results of the readiness checks as of the call to
	// Current or ServeHTTP: the cluster's health first, under
	// ClusterCheckName, then the monitor's WithReadiness checks in the
	// order they were given. nil from Check and Updates.
	Readiness []ReadinessResult `json:"readiness,omitempty"`
}

// EndpointHealth is the client's standing of one configured endpoint.
type EndpointHealth struct {
	// Endpoint is the configured address.
	Endpoint string `json:"endpoint"`
	// Member is the name of the member the endpoint reached last, "" until
	// one answered.
	Member string `json:"member,omitempty"`
	// Healthy is false from a failed request, stream or probe through the
	// endpoint until the next success: requests go to healthy endpoints
	// first.
	Healthy bool `json:"healthy"`
	// Cause is why the last failure happened ("has no leader", "did not
	// answer within 2s..."), "" if none ever did.
	Cause string `json:"cause,omitempty"`
	// Since is when the standing last changed; zero if the endpoint was
	// never used.
	Since time.Time `json:"since,omitzero"`
	// Streams reports that the watch and lease streams run through it.
	Streams bool `json:"streams,omitempty"`
}

// ReadinessResult is the answer of one readiness check: the cluster's
// health (named ClusterCheckName) or a WithReadiness check.
type ReadinessResult struct {
	// Name is the name the check was added under.
	Name string `json:"name"`
	// Ready reports that the check returned nil; for the cluster, that it
	// is Healthy or Degraded (it serves reads and writes).
	Ready bool `json:"ready"`
	// Required reports that the check counts in ServeHTTP's answer: every
	// WithReadiness check, and the cluster's under ClusterRequired.
	Required bool `json:"required"`
	// Reason is the check's error, "" when Ready; for the cluster, its
	// Status and Reasons.
	Reason string `json:"reason,omitempty"`
}

// endpointHealth returns the client's shared view of its endpoints.
func (c *Client) endpointHealth() []EndpointHealth {
	states := c.streams.States()
	out := make([]EndpointHealth, len(states))
	for i, st := range states {
		out[i] = EndpointHealth{Endpoint: st.Endpoint, Member: st.Member, Healthy: st.Healthy, Since: st.Since, Streams: st.Current}
		if st.Cause != nil {
			out[i].Cause = st.Cause.Error()
		}
	}
	return out
}

// ClusterCheckName is the name the cluster's health is reported under in
// ClusterHealth.Readiness.
const ClusterCheckName = "etcd"

// readiness judges h, the cluster's health, by the monitor's ClusterPolicy
// and runs the WithReadiness checks; it reports whether every check that
// counts passed.
func (hm *HealthMonitor) readiness(h ClusterHealth) ([]ReadinessResult, bool) {
	out := make([]ReadinessResult, 0, 1+len(hm.opts.checks))
	cluster := ReadinessResult{Name: ClusterCheckName, Ready: true, Required: hm.opts.cluster == ClusterRequired}
	switch h.Status {
	case Healthy, Degraded:
	case HealthUnknown:
		cluster.Ready, cluster.Reason = false, "no check has completed yet"
	default:
		cluster.Ready, cluster.Reason = false, h.Status.String()
		if len(h.Reasons) > 0 {
			cluster.Reason += ": " + strings.Join(h.Reasons, "; ")
		}
	}
	out = append(out, cluster)
	ready := cluster.Ready || !cluster.Required
	for _, c := range hm.opts.checks {
		r := ReadinessResult{Name: c.name, Ready: true, Required: true}
		if err := c.check.Readiness(); err != nil {
			r.Ready, r.Reason, ready = false, err.Error(), false
		}
		out = append(out, r)
	}
	return out, ready
}

// Member returns the member named name, and whether there is one.
func (h ClusterHealth) Member(name string) (MemberHealth, bool) {
	for _, m := range h.Members {
		if m.Name == name {
			return m, true
		}
	}
	return MemberHealth{}, false
}

// sameState reports whether two results say the same thing.
func (h ClusterHealth) sameState(o ClusterHealth) bool {
	return h.Status == o.Status && slices.Equal(h.Reasons, o.Reasons)
}

// healthProbeKey is read (never written) to prove that a member serves
// linearizable reads. It lives under the namespace, where the client's user
// is allowed to read.
const healthProbeKey = "etcdkit-health-probe"

// HealthMonitor checks the health of the cluster the client talks to: on
// demand with Check, and in the background every interval (WithInterval),
// keeping the latest result for Current, publishing changes on Updates and
// serving it to readiness probes through ServeHTTP. The Status follows the
// rules given for Healthy, Degraded and Unhealthy; Reasons say which rule
// each member broke.
//
// A check probes every member: reachability, linearizable read latency,
// leader, raft indexes, database size, alarms. It asks every configured
// endpoint for its member's status and a linearizable read, through a
// connection pinned to that endpoint, and relates the answers to the
// cluster's member list: the endpoints may be proxies whose addresses
// differ from the members'. Its probes also feed the client's view of its
// members' health (see [Client]), reported in [ClusterHealth].Endpoints.
//
// A HealthMonitor ends when Close is called or its Client is closed. Its
// methods are safe for concurrent use.
type HealthMonitor struct {
	// lifetime's ctx ends on Close and when the client is closed; it bounds
	// every check.
	lifetime
	c        *Client
	opts     healthOptions
	probeKey []byte
	updates  lossy[ClusterHealth]

	mu        sync.Mutex
	stopped   bool                        // no more results are recorded or published
	conns     map[string]*clientv3.Client // pinned to one endpoint each
	epMember  map[string]MemberID         // last member seen behind each endpoint
	lastList  []*pb.Member                // last member list read
	seq       uint64                      // checks started
	curSeq    uint64                      // the check current comes from
	current   ClusterHealth
	published *ClusterHealth // last sent on updates
}

// NewHealthMonitor starts monitoring the cluster of c. The first check starts
// at once, in the background; Current is the zero ClusterHealth (status
// HealthUnknown) until it completes. The monitor ends when Close is called or
// c is closed. An invalid option, or a closed c, gives a monitor that has
// already ended: Done is closed and Err says why.
func NewHealthMonitor(c *Client, opts ...HealthOption) *HealthMonitor {
	if c == nil {
		hm := &HealthMonitor{updates: make(lossy[ClusterHealth], 1), conns: map[string]*clientv3.Client{}}
		hm.closing, hm.final = hm.stopRecording, hm.closeConns
		hm.ended(errors.New("etcdkit: NewHealthMonitor: nil client"))
		return hm
	}
	hm := &HealthMonitor{
		c:        c,
		opts:     buildHealthOptions(opts),
		probeKey: []byte(c.path(healthProbeKey)),
		updates:  make(lossy[ClusterHealth], 1),
		conns:    make(map[string]*clientv3.Client),
		epMember: make(map[string]MemberID),
	}
	hm.closing, hm.final = hm.stopRecording, hm.closeConns
	if hm.opts.err != nil {
		hm.ended(hm.opts.err)
		return hm
	}
	if !hm.begin(context.Background(), c, ErrClosed) {
		hm.ended(ErrClosed)
		return hm
	}
	hm.spawn(hm.run)
	hm.arm()
	return hm
}

// run checks the cluster every interval until the monitor's life ends.
func (hm *HealthMonitor) run() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-hm.ctx.Done():
			return
		case <-timer.C:
		}
		if _, err := hm.check(hm.ctx); err != nil && hm.ctx.Err() == nil {
			hm.c.log.Debug("health check failed", zap.Error(err))
		}
		timer.Reset(hm.opts.interval)
	}
}

// stopRecording makes Check stop recording and publishing results, before
// Done is closed.
func (hm *HealthMonitor) stopRecording() {
	hm.mu.Lock()
	defer hm.mu.Unlock()
	hm.stopped = true
}

// closeConns closes Updates, on which nothing is sent once ended is set,
// then the pinned connections.
func (hm *HealthMonitor) closeConns() {
	hm.mu.Lock()
	conns := hm.conns
	hm.conns = nil
	close(hm.updates)
	hm.mu.Unlock()
	for _, cli := range conns {
		_ = cli.Close()
	}
}

// Check checks the cluster now and returns what it found. The result also
// becomes Current and, if its Status or Reasons changed, is published on
// Updates. A cluster in trouble is a result, not an error: Check fails only
// if ctx ends first (ctx's error) or the monitor has ended (Err's error).
// ctx bounds the call; without a deadline a check lasts at most about twice
// the probe timeout (WithProbeTimeout).
func (hm *HealthMonitor) Check(ctx context.Context) (ClusterHealth, error) {
	if err := hm.cause(); err != nil {
		return ClusterHealth{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(hm.ctx, cancel)
	defer stop()
	return hm.check(ctx)
}

// Current returns the result of the latest completed check, the zero
// ClusterHealth before the first one, with Endpoints and Readiness as of
// now. It does not block.
func (hm *HealthMonitor) Current() ClusterHealth {
	hm.mu.Lock()
	h := hm.current
	hm.mu.Unlock()
	if hm.c != nil {
		h.Endpoints = hm.c.endpointHealth()
	}
	h.Readiness, _ = hm.readiness(h)
	return h
}

// Updates returns a channel that receives the first check's result and then
// every result whose Status or Reasons differ from the last one sent. It
// holds one result: when the reader falls behind, a newer result replaces
// the unread one, so the reader always gets the latest state and the checks
// never wait for it. The channel is closed after Done.
func (hm *HealthMonitor) Updates() <-chan ClusterHealth { return hm.updates }

// Done returns a channel that is closed when the monitor has ended: after
// Close, when its Client was closed, or at once for an invalid option.
func (hm *HealthMonitor) Done() <-chan struct{} { return hm.done }

// Err returns nil while the monitor runs and, once Done is closed, why it
// ended: ErrClosed (Close or the Client was closed) or the error of an
// invalid option.
func (hm *HealthMonitor) Err() error { return hm.cause() }

// Close stops the background checks, ends any Check in progress with
// ErrClosed, closes the monitor's connections and returns once its goroutine
// has exited. The Client stays open. Close is idempotent and returns nil.
func (hm *HealthMonitor) Close() error { return hm.close() }

// ServeHTTP serves Current as JSON for readiness probes: status 200 when
// every check that counts passes, 503 when one fails and after the monitor
// has ended. Under ClusterRequired (the default) the cluster's health
// counts: 503 while it is Unhealthy and before the first check completes.
// Under ClusterInformational it is reported and does not count, so that a
// service serving from its Live values and snapshots stays in rotation
// while etcd is down. It never waits for a check. The body is the JSON form
// of ClusterHealth, whose Readiness says which checks failed and why. For
// a liveness probe, which etcd's state must not fail, see Liveness.
func (hm *HealthMonitor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := hm.Current()
	ready := true
	for _, rr := range h.Readiness {
		ready = ready && (rr.Ready || !rr.Required)
	}
	if err := hm.Err(); err != nil {
		h = ClusterHealth{Status: HealthUnknown, Reasons: []string{"health monitor ended: " + err.Error()}}
		ready = false
	}
	if h.Members == nil {
		h.Members = []MemberHealth{}
	}
	body, err := json.Marshal(h)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	code := http.StatusServiceUnavailable
	if ready {
		code = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

// Liveness returns the handler of a liveness probe: 200 while the monitor
// runs, whatever the cluster's state, 503 once the monitor has ended (it
// was closed, or its Client was). etcd's state must not fail a liveness
// probe: restarting a process does not bring etcd back, and a fleet that
// restarts at once makes an outage worse. The body is JSON,
// {"alive":true}, or {"alive":false,"reason":"..."}.
func (hm *HealthMonitor) Liveness() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := struct {
			Alive  bool   `json:"alive"`
			Reason string `json:"reason,omitempty"`
		}{Alive: true}
		code := http.StatusOK
		if err := hm.Err(); err != nil {
			body.Alive, body.Reason, code = false, "health monitor ended: "+err.Error(), http.StatusServiceUnavailable
		}
		b, _ := json.Marshal(body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_, _ = w.Write(append(b, '\n'))
	})
}

// record makes h current, unless a check started later has already been
// recorded, and publishes it if its state changed.
func (hm *HealthMonitor) record(seq uint64, h ClusterHealth, seen map[string]MemberID) {
	hm.mu.Lock()
	defer hm.mu.Unlock()
	for ep, id := range seen {
		hm.epMember[ep] = id
	}
	if hm.stopped || seq < hm.curSeq {
		return
	}
	hm.curSeq = seq
	hm.current = h
	hm.c.cfg.Metrics.Set(MetricHealthStatus, float64(h.Status))
	if hm.published != nil && hm.published.sameState(h) {
		return
	}
	hm.published = &h
	// Only this function sends, under mu.
	hm.updates.send(h)
}
