package etcdkit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// endpointProbe is what one configured endpoint answered.
type endpointProbe struct {
	endpoint string
	status   *pb.StatusResponse
	err      error // the status request's (or the dial's) error
	readErr  error // the linearizable read's error
	latency  time.Duration
}

// check runs one check bounded by ctx and records its result.
func (hm *HealthMonitor) check(ctx context.Context) (ClusterHealth, error) {
	hm.mu.Lock()
	hm.seq++
	seq := hm.seq
	hm.mu.Unlock()

	start := time.Now()
	eps := hm.c.cfg.Endpoints
	probes := make([]endpointProbe, len(eps))
	var (
		wg       sync.WaitGroup
		members  []*pb.Member
		listErr  error
		alarms   []*pb.AlarmMember
		alarmErr error
	)
	for i, ep := range eps {
		wg.Go(func() { probes[i] = hm.probeEndpoint(ctx, ep) })
	}
	// Serializable: any member answers from its own state, so the list is
	// known even when quorum is lost.
	wg.Go(func() {
		rctx, cancel := context.WithTimeout(ctx, hm.opts.timeout)
		defer cancel()
		resp, err := hm.c.raw.MemberList(rctx, clientv3.WithSerializable())
		if err != nil {
			listErr = err
			return
		}
		members = resp.Members
	})
	// Alarms go through raft, so they are known only while there is quorum;
	// without it the cluster is Unhealthy anyway.
	wg.Go(func() {
		rctx, cancel := context.WithTimeout(ctx, hm.opts.timeout)
		defer cancel()
		resp, err := hm.c.raw.AlarmList(rctx)
		if err != nil {
			alarmErr = err
			return
		}
		alarms = resp.Alarms
	})
	wg.Wait()
	if ctx.Err() != nil {
		if hm.ctx.Err() != nil {
			return ClusterHealth{}, ErrClosed
		}
		return ClusterHealth{}, ctx.Err()
	}
	hm.mu.Lock()
	epMember := maps.Clone(hm.epMember)
	if listErr == nil {
		hm.lastList = members
	} else if hm.lastList != nil {
		// Without an answer (every member down) the last list known still
		// names the members that are gone.
		members, listErr = hm.lastList, nil
	}
	hm.mu.Unlock()
	h, seen := assess(probes, members, listErr, alarms, alarmErr, epMember, hm.opts.maxLag)
	hm.c.observeProbes(start, probes, members)
	h.CheckedAt = start
	h.Took = time.Since(start)
	h.Endpoints = hm.c.endpointHealth()
	hm.record(seq, h, seen)
	return h, nil
}

// conn returns the client pinned to ep, dialling it the first time. The
// clients stay open across checks, reconnecting on their own, until the
// monitor ends.
func (hm *HealthMonitor) conn(ep string) (*clientv3.Client, error) {
	hm.mu.Lock()
	if hm.stopped {
		hm.mu.Unlock()
		return nil, ErrClosed
	}
	if cli := hm.conns[ep]; cli != nil {
		hm.mu.Unlock()
		return cli, nil
	}
	hm.mu.Unlock()

	cli, err := dialRaw(hm.ctx, hm.c.cfg, hm.c.tokens, loginFirst, []string{ep})
	if err != nil {
		return nil, err
	}
	hm.mu.Lock()
	if hm.stopped {
		hm.mu.Unlock()
		_ = cli.Close()
		return nil, ErrClosed
	}
	if other := hm.conns[ep]; other != nil {
		// A concurrent check dialled first.
		hm.mu.Unlock()
		_ = cli.Close()
		return other, nil
	}
	hm.conns[ep] = cli
	hm.mu.Unlock()
	return cli, nil
}

// probeEndpoint asks the member behind ep for its status and, if it knows a
// leader, serves a linearizable read through it. The calls fail fast while
// the connection is down instead of waiting for it, so that an unreachable
// member reports the connection's error.
func (hm *HealthMonitor) probeEndpoint(ctx context.Context, ep string) endpointProbe {
	p := endpointProbe{endpoint: ep}
	cli, err := hm.conn(ep)
	if err != nil {
		p.err = err
		return p
	}
	conn := cli.ActiveConnection()

	sctx, cancel := context.WithTimeout(ctx, hm.opts.timeout)
	st, err := pb.NewMaintenanceClient(conn).Status(sctx, &pb.StatusRequest{})
	cancel()
	if err != nil {
		p.err = rpctypes.Error(err)
		return p
	}
	p.status = st
	if st.IsLearner {
		// Learners refuse linearizable reads by design.
		return p
	}
	if st.Leader == 0 {
		p.readErr = rpctypes.ErrNoLeader
		return p
	}

	rctx, cancel := context.WithTimeout(ctx, hm.opts.timeout)
	defer cancel()
	t0 := time.Now()
	_, err = pb.NewKVClient(conn).Range(rctx, &pb.RangeRequest{Key: hm.probeKey, CountOnly: true})
	if err != nil {
		p.readErr = rpctypes.Error(err)
		return p
	}
	p.latency = time.Since(t0)
	return p
}

// errNotReached is the Err of a member that no configured endpoint reaches.
var errNotReached = errors.New("etcdkit: no configured endpoint reaches this member")

// assessment turns the answers of one check into a ClusterHealth.
type assessment struct {
	maxLag   uint64
	epMember map[string]MemberID // member last seen behind each endpoint

	byID   map[MemberID]*MemberHealth
	order  []MemberID
	readOK map[MemberID]bool // served a linearizable read
	seen   map[string]MemberID

	unhealthy, members, other []string // reasons, in that order
}

// assess derives the cluster's health from the endpoints' answers, the
// member list (listErr if it could not be read), the alarms (alarmErr if
// they could not be listed) and the members last seen behind each endpoint.
// It also returns the members seen behind the endpoints this time.
func assess(probes []endpointProbe, list []*pb.Member, listErr error, alarms []*pb.AlarmMember, alarmErr error,
	epMember map[string]MemberID, maxLag uint64) (ClusterHealth, map[string]MemberID) {
	a := &assessment{
		maxLag:   maxLag,
		epMember: epMember,
		byID:     make(map[MemberID]*MemberHealth),
		readOK:   make(map[MemberID]bool),
		seen:     make(map[string]MemberID),
	}
	for _, lm := range list {
		m := a.member(MemberID(lm.ID))
		m.Name = lm.Name
		m.Learner = lm.IsLearner
	}
	a.reached(probes, listErr == nil)
	a.unreached(probes, list)

	h := ClusterHealth{Members: a.sorted()}
	index := make(map[MemberID]int, len(h.Members))
	for i, m := range h.Members {
		index[m.ID] = i
	}
	h.Leader = electLeader(h.Members, index)
	if i, ok := index[h.Leader]; ok {
		h.LeaderName = h.Members[i].Name
	}
	a.alarms(h.Members, index, alarms)

	// A linearizable read needs the leader to hear from a quorum, so one
	// that succeeded anywhere proves there is one.
	quorum := len(a.readOK) > 0
	if !quorum {
		a.unhealthy = append(a.unhealthy, "no quorum: no member served a linearizable read")
	}
	if h.Leader == 0 {
		a.unhealthy = append(a.unhealthy, "no leader: no reachable member knows one")
	}
	a.judgeMembers(&h, index)
	if listErr != nil && quorum {
		a.other = append(a.other, "members unknown: the member list could not be read")
	}
	if alarmErr != nil && quorum {
		a.other = append(a.other, "alarms unknown: the alarm list could not be read")
	}

	h.Reasons = slices.Concat(a.unhealthy, a.members, a.other)
	switch {
	case len(a.unhealthy) > 0:
		h.Status = Unhealthy
	case len(h.Reasons) > 0:
		h.Status = Degraded
	default:
		h.Status = Healthy
	}
	return h, a.seen
}

// member returns the member with id, adding it if it is new.
func (a *assessment) member(id MemberID) *MemberHealth {
	if m := a.byID[id]; m != nil {
		return m
	}
	m := &MemberHealth{ID: id}
	a.byID[id] = m
	a.order = append(a.order, id)
	return m
}

// reached fills in the members whose endpoint answered. With the member
// list known, an endpoint reaching a member not in it is a reason of its
// own (a stray endpoint, or another cluster).
func (a *assessment) reached(probes []endpointProbe, listed bool) {
	for _, p := range probes {
		if p.status == nil {
			continue
		}
		st := p.status
		id := MemberID(st.Header.GetMemberId())
		a.seen[p.endpoint] = id
		if listed && a.byID[id] == nil {
			a.other = append(a.other, fmt.Sprintf("endpoint %s reaches member %s, which is not in the member list", p.endpoint, id))
			continue
		}
		m := a.member(id)
		if m.Reachable {
			continue // another endpoint reached it first
		}
		m.Endpoint = p.endpoint
		m.Reachable = true
		m.Leader = MemberID(st.Leader)
		m.IsLeader = st.Leader != 0 && st.Leader == uint64(id)
		m.RaftTerm = st.RaftTerm
		m.RaftIndex = st.RaftIndex
		m.AppliedIndex = st.RaftAppliedIndex
		m.DBSize = st.DbSize
		m.DBSizeInUse = st.DbSizeInUse
		m.DBSizeQuota = st.DbSizeQuota
		m.Version = st.Version
		m.Learner = m.Learner || st.IsLearner
		m.Err = p.readErr
		if p.readErr == nil && !m.Learner {
			m.ProbeLatency = p.latency
			a.readOK[id] = true
		}
	}
}

// unreached attributes each failed endpoint to a member, by the member seen
// behind it before or by the member's advertised client URLs, and gives
// every member left unreached its error.
func (a *assessment) unreached(probes []endpointProbe, list []*pb.Member) {
	var unmatched []string
	for _, p := range probes {
		if p.status != nil {
			continue
		}
		m := a.byID[a.epMember[p.endpoint]]
		if m == nil {
			m = a.byURL(list, p.endpoint)
		}
		if m == nil {
			unmatched = append(unmatched, fmt.Sprintf("%s: %v", p.endpoint, p.err))
			continue
		}
		if !m.Reachable && m.Err == nil {
			m.Endpoint = p.endpoint
			m.Err = p.err
		}
	}
	for _, id := range a.order {
		m := a.byID[id]
		if m.Reachable || m.Err != nil {
			continue
		}
		m.Err = errNotReached
		if len(unmatched) > 0 {
			m.Err = fmt.Errorf("%w (failing endpoints: %s)", errNotReached, strings.Join(unmatched, "; "))
		}
	}
}

// byURL finds the member that advertises ep as a client URL; nil if none
// does (ep is a proxy, or another address of the member).
func (a *assessment) byURL(list []*pb.Member, ep string) *MemberHealth {
	host := hostPort(ep)
	for _, lm := range list {
		for _, u := range lm.ClientURLs {
			if hostPort(u) == host {
				return a.byID[MemberID(lm.ID)]
			}
		}
	}
	return nil
}

// sorted returns the members by name, those without one (never started, or
// no member list) last by ID.
func (a *assessment) sorted() []MemberHealth {
	members := make([]MemberHealth, 0, len(a.order))
	for _, id := range a.order {
		members = append(members, *a.byID[id])
	}
	slices.SortFunc(members, func(x, y MemberHealth) int {
		if (x.Name == "") != (y.Name == "") {
			if x.Name == "" {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(x.Name, y.Name), cmp.Compare(x.ID, y.ID))
	})
	return members
}

// electLeader returns the leader most reachable members follow; on a tie,
// one that believes it leads, then the lowest ID. 0 if none knows a leader.
func electLeader(members []MemberHealth, index map[MemberID]int) MemberID {
	votes := make(map[MemberID]int)
	for _, m := range members {
		if m.Reachable && m.Leader != 0 {
			votes[m.Leader]++
		}
	}
	claims := func(id MemberID) bool {
		i, ok := index[id]
		return ok && members[i].IsLeader
	}
	var lead MemberID
	for id, n := range votes {
		switch {
		case lead == 0, n > votes[lead]:
			lead = id
		case n < votes[lead]:
		case claims(id) != claims(lead):
			if claims(id) {
				lead = id
			}
		case id < lead:
			lead = id
		}
	}
	return lead
}

// alarms attaches each raised alarm to its member.
func (a *assessment) alarms(members []MemberHealth, index map[MemberID]int, alarms []*pb.AlarmMember) {
	for _, am := range alarms {
		if am.Alarm == pb.AlarmType_NONE {
			continue
		}
		if i, ok := index[MemberID(am.MemberID)]; ok {
			members[i].Alarms = append(members[i].Alarms, am.Alarm.String())
			continue
		}
		msg := fmt.Sprintf("member %s, not in the member list, raised a %s alarm", MemberID(am.MemberID), am.Alarm)
		if am.Alarm == pb.AlarmType_NOSPACE {
			a.unhealthy = append(a.unhealthy, msg)
		} else {
			a.other = append(a.other, msg)
		}
	}
}

// judgeMembers fills in each member's lag behind the leader and gives the
// reasons that concern single members.
func (a *assessment) judgeMembers(h *ClusterHealth, index map[MemberID]int) {
	var ref uint64 // the leader's applied index, or the highest seen
	if i, ok := index[h.Leader]; ok && h.Members[i].Reachable {
		ref = h.Members[i].AppliedIndex
	} else {
		for _, m := range h.Members {
			ref = max(ref, m.AppliedIndex)
		}
	}
	for i := range h.Members {
		m := &h.Members[i]
		name := m.label()
		if m.Reachable {
			m.AppliedLag = ref - min(ref, m.AppliedIndex)
		}
		var why string
		switch {
		case !m.Reachable && m.Endpoint == "":
			why = "is not reached by any configured endpoint"
		case !m.Reachable:
			why = "is unreachable"
		case m.Leader == 0:
			why = "has no leader"
		case h.Leader != 0 && m.Leader != h.Leader:
			why = fmt.Sprintf("follows %s, not the leader %s", m.Leader, leaderLabel(*h))
		case m.Err != nil:
			why = "failed a linearizable read"
		}
		if why != "" {
			a.members = append(a.members, "member "+name+" "+why)
		}
		if m.Reachable && m.AppliedLag > a.maxLag {
			a.members = append(a.members, fmt.Sprintf("member %s lags the leader by more than %d applied entries", name, a.maxLag))
		}
		for _, alarm := range m.Alarms {
			if alarm == pb.AlarmType_NOSPACE.String() {
				a.unhealthy = append(a.unhealthy, fmt.Sprintf("member %s raised a NOSPACE alarm: the cluster refuses writes until it is disarmed", name))
			} else {
				a.members = append(a.members, fmt.Sprintf("member %s raised a %s alarm", name, alarm))
			}
		}
	}
}

func leaderLabel(h ClusterHealth) string {
	if h.LeaderName != "" {
		return h.LeaderName
	}
	return h.Leader.String()
}

// hostPort returns the host:port of an endpoint or URL.
func hostPort(ep string) string {
	if strings.Contains(ep, "://") {
		if u, err := url.Parse(ep); err == nil {
			return u.Host
		}
	}
	return ep
}

// observeProbes feeds what a check's probes found, sent at start, into the
// client's shared view of its endpoints: a member that answered its status
// and served a linearizable read is healthy; one that did not is sick, for
// the cause the probe met, and the watch and lease streams leave it too.
func (c *Client) observeProbes(start time.Time, probes []endpointProbe, members []*pb.Member) {
	names := make(map[uint64]string, len(members))
	for _, m := range members {
		names[m.ID] = m.Name
	}
	c.streams.SetNames(names)
	for i, p := range probes {
		if p.status != nil {
			c.streams.Identify(i, p.status.GetHeader().GetMemberId())
		}
		switch {
		case errors.Is(p.err, ErrClosed):
		case p.err != nil:
			c.streams.Sick(i, fmt.Errorf("did not answer a health probe: %w", p.err))
		case errors.Is(p.readErr, rpctypes.ErrNoLeader):
			c.streams.Sick(i, errors.New("has no leader"))
		case p.readErr != nil:
			c.streams.Sick(i, fmt.Errorf("did not serve a linearizable read: %w", p.readErr))
		case !p.status.IsLearner:
			c.streams.Succeeded(i, p.status.GetHeader().GetMemberId(), start)
		}
	}
}
