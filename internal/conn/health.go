package conn

import (
	"context"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// endpoint is what the client knows of one configured endpoint: the last
// request's outcome through it, whatever path sent it, and the request
// connection pinned to it.
type endpoint struct {
	addr string
	// id is the member the endpoint reached last, learnt from a response
	// header; 0 until one is known.
	id uint64
	// okAt is when a request through the endpoint last succeeded, failedAt
	// when one last failed, for cause. The endpoint is sick while failedAt
	// is the later of the two.
	okAt, failedAt time.Time
	cause          error
	// req carries the unary requests to this endpoint; nil until first used.
	req *clientv3.Client
}

func (e *endpoint) fail(cause error) {
	e.failedAt, e.cause = time.Now(), cause
}

func (e *endpoint) sick() bool { return !e.failedAt.IsZero() && !e.failedAt.Before(e.okAt) }

// State is the client's standing of one endpoint, shared by the watch and
// lease streams, the request runner and the health monitor.
type State struct {
	// Endpoint is the configured address.
	Endpoint string
	// Member is the name of the member it reached last, "" if not known;
	// MemberID its ID, 0 if not known.
	Member   string
	MemberID uint64
	// Healthy is false from a failure until the next success.
	Healthy bool
	// Cause is why the last failure happened; nil if none ever did.
	Cause error
	// Since is when the standing last changed: the last success of a
	// healthy endpoint, the last failure of a sick one; zero if unused.
	Since time.Time
	// Current reports that the stream connection is on this endpoint.
	Current bool
}

// String names the endpoint in errors: "member m1 (127.0.0.1:2379)" when the
// member is known, "endpoint 127.0.0.1:2379" otherwise.
func (st State) String() string {
	if st.Member != "" {
		return fmt.Sprintf("member %s (%s)", st.Member, st.Endpoint)
	}
	return "endpoint " + st.Endpoint
}

// SetNames records the members' names by ID, from a member list.
func (s *Pool) SetNames(names map[uint64]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.names == nil {
		s.names = make(map[uint64]string, len(names))
	}
	for id, name := range names {
		if name != "" {
			s.names[id] = name
		}
	}
}

// Succeeded records that a request sent through endpoint i at sent was
// answered by member id (0 if not known). A request sent before the
// endpoint's last failure proves nothing about it since: it does not make
// the endpoint healthy again.
func (s *Pool) Succeeded(i int, id uint64, sent time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.eps[i]
	if id != 0 {
		e.id = id
	}
	if sent.Before(e.failedAt) {
		return
	}
	e.okAt = time.Now()
}

// Alive records that the stream connection of generation gen answered: a
// keepalive succeeded, a watch received a response. Its endpoint is healthy,
// as after a request's success, so that a member marked sick becomes
// healthy again through whatever path reaches it. Reports about an older
// generation are ignored: a connection dropped since proves nothing about
// its endpoint now.
func (s *Pool) Alive(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && s.gen == gen {
		s.eps[s.curIdx].okAt = time.Now()
	}
}

// AnsweredSince reports whether the member of the stream connection of
// generation gen answered anything (a request, a watch, a keepalive) at or
// after t: a member that did is slow, not silent.
func (s *Pool) AnsweredSince(gen uint64, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil && s.gen == gen && !s.eps[s.curIdx].okAt.Before(t)
}

// Identify records that endpoint i reaches member id.
func (s *Pool) Identify(i int, id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != 0 {
		s.eps[i].id = id
	}
}

// Sick records that a request through endpoint i failed for cause. If the
// stream connection is on that endpoint it moves too, as when the engines
// report a stall: one view of which member is sick.
func (s *Pool) Sick(i int, cause error) {
	s.mu.Lock()
	s.eps[i].fail(cause)
	var old *clientv3.Client
	if s.cur != nil && s.curIdx == i {
		old = s.dropLocked()
	}
	s.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
}

// State returns the standing of endpoint i.
func (s *Pool) State(i int) State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stateLocked(i)
}

func (s *Pool) stateLocked(i int) State {
	e := s.eps[i]
	st := State{Endpoint: e.addr, MemberID: e.id, Member: s.names[e.id], Cause: e.cause,
		Healthy: !e.sick(), Current: s.cur != nil && s.curIdx == i}
	if st.Healthy {
		st.Since = e.okAt
	} else {
		st.Since = e.failedAt
	}
	return st
}

// States returns the standing of every endpoint, in configuration order.
func (s *Pool) States() []State {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]State, len(s.eps))
	for i := range s.eps {
		out[i] = s.stateLocked(i)
	}
	return out
}

// Order returns the endpoints in the order a request tries them: healthy
// ones first, the stream connection's own first among them, then the others
// from the most recently successful; then the sick ones, the one that failed
// longest ago first. Requests thus stay pinned to one member while it
// answers, the same member the streams use.
func (s *Pool) Order() []int { return s.AppendOrder(nil) }

// AppendOrder appends Order's endpoints to dst and returns the slice, so
// that a caller with room for them allocates nothing.
func (s *Pool) AppendOrder(dst []int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(dst)
	for i := range s.eps {
		dst = append(dst, i)
	}
	idx := dst[n:]
	cur := -1
	if s.cur != nil {
		cur = s.curIdx
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ea, eb := s.eps[a], s.eps[b]
		if sa, sb := ea.sick(), eb.sick(); sa != sb {
			if sa {
				return 1
			}
			return -1
		} else if sa {
			return ea.failedAt.Compare(eb.failedAt)
		}
		if a == cur || b == cur {
			if a == cur {
				return -1
			}
			return 1
		}
		return eb.okAt.Compare(ea.okAt)
	})
	return dst
}

// Request returns the request connection pinned to endpoint i, making it
// on first use, bounded by ctx (the attempt's, so that a dial that with auth
// on waits for a token ends with the attempt). Unless it fetches a token,
// the dial does not wait for the connection: the caller checks its state
// before sending.
func (s *Pool) Request(ctx context.Context, i int) (*clientv3.Client, error) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return nil, s.cfg.Closed
	}
	if r := s.eps[i].req; r != nil {
		s.mu.Unlock()
		return r, nil
	}
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.cfg.Life, cancel)
	defer stop()
	r, err := s.cfg.DialRequest(ctx, s.eps[i].addr)
	if err != nil {
		if s.cfg.Life.Err() != nil {
			return nil, s.cfg.Closed
		}
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		_ = r.Close()
		return nil, s.cfg.Closed
	}
	if prev := s.eps[i].req; prev != nil {
		// Another request dialled meanwhile: keep one.
		_ = r.Close()
		return prev, nil
	}
	s.eps[i].req = r
	return r, nil
}
