// Package conn holds the connection that carries a client's long-lived
// streams (watches, lease keepalives, the requests that must follow them)
// to one member at a time, and moves it to the next member when the engines
// find the current one silent, leaderless or gone.
package conn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// Pool owns the connection that carries the client's long-lived
// streams: watches and lease keepalives. Unlike the request connection, which
// balances over all endpoints, it talks to one member at a time, so that when
// the engines find that member silent (a stall) or leaderless they can drop
// it and move every stream to the next member together. With a single
// endpoint, moving on means re-dialling it.
type Pool struct {
	cfg Config

	mu     sync.Mutex
	cur    *clientv3.Client
	curIdx int    // index of cur's endpoint
	gen    uint64 // generation of cur; bumped on every dial
	// curLife ends when cur is dropped or closed; endCur ends it.
	curLife context.Context
	endCur  context.CancelFunc
	dialing *dial // the dial in progress, nil if none
	dials   sync.WaitGroup
	// slowDials counts the dials in a row that ran out of time: each next
	// one gets twice the time, up to MaxDialTimeout (see dialTimeout).
	slowDials int
	done      bool
	// eps is the one record of every endpoint's standing, which the
	// stream connection, the request runner and the health monitor all
	// read and feed (see health.go). A move of the stream connection goes
	// to the endpoint that failed longest ago (or never), not back to one
	// that was just found dead.
	eps []*endpoint
	// names are the members' names by ID, for errors.
	names map[uint64]string
}

// Config is what a Pool needs of its client.
type Config struct {
	// Endpoints are the members, dialled one at a time.
	Endpoints []string
	// Dial connects to one endpoint; ctx bounds the dial, and with it the
	// auth token fetch the dial makes when the client has no token yet, but
	// not the life of the connection.
	Dial func(ctx context.Context, endpoint string) (*clientv3.Client, error)
	// DialRequest makes the connection of unary requests to one endpoint,
	// bounded by ctx as Dial is; unless it must fetch an auth token it does
	// not wait for the connection.
	DialRequest func(ctx context.Context, endpoint string) (*clientv3.Client, error)
	// DialTimeout bounds each dial of the stream connection, a dial that
	// waits for no caller: one to a silent endpoint ends after it, and the
	// next goes to the next endpoint. Zero means no bound but Life. A dial
	// that ran out of it makes the next one twice as long, up to
	// MaxDialTimeout, so that members that answer, only more slowly than
	// DialTimeout (a loaded machine, a long link), can still be reached.
	DialTimeout, MaxDialTimeout time.Duration
	// Life ends when the client closes.
	Life context.Context
	Log  *zap.Logger
	// Closed is the error for a closed client.
	Closed error
	// Retryable says whether a request may succeed if tried again.
	Retryable func(error) bool
	// OnStall is called when a request on the connection timed out with
	// its member silent meanwhile, which moves the connection to the next
	// member.
	OnStall func()
}

// New returns a Pool that dials its first connection on first use.
func New(cfg Config) *Pool {
	n := len(cfg.Endpoints)
	// The first dial goes to the first endpoint.
	p := &Pool{cfg: cfg, curIdx: n - 1, eps: make([]*endpoint, n)}
	for i, ep := range cfg.Endpoints {
		p.eps[i] = &endpoint{addr: ep}
	}
	return p
}

// pickLocked returns the index of the endpoint to dial: the one whose
// connection failed longest ago, never-failed ones first, in endpoint order
// starting after the current one so that equals take turns.
func (s *Pool) pickLocked() int {
	n := len(s.eps)
	best := (s.curIdx + 1) % n
	for i := 1; i < n; i++ {
		j := (s.curIdx + 1 + i) % n
		if s.eps[j].failedAt.Before(s.eps[best].failedAt) {
			best = j
		}
	}
	return best
}

// dial is one dial of the stream connection; err is set before done is
// closed.
type dial struct {
	done chan struct{}
	err  error
}

// Get returns the current stream connection and its generation, dialling one
// if there is none. The dial runs on its own, bounded by DialTimeout and the
// pool's life, not by ctx: Get waits for it until ctx ends, so that a caller
// with a short deadline (a keepalive) is never held past it by a dial of a
// silent endpoint, and the dial, which with auth on may include fetching a
// token, is not wasted when that caller gives up. A failed dial is returned
// to every caller that waited for it, and marks its endpoint failed: the
// next call dials the next endpoint, and the caller decides how long to
// back off.
func (s *Pool) Get(ctx context.Context) (*clientv3.Client, uint64, error) {
	for {
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			return nil, 0, s.cfg.Closed
		}
		if s.cur != nil {
			cur, gen := s.cur, s.gen
			s.mu.Unlock()
			return cur, gen, nil
		}
		d := s.dialing
		if d == nil {
			d = &dial{done: make(chan struct{})}
			s.dialing = d
			idx := s.pickLocked()
			s.dials.Add(1)
			go s.dial(d, idx)
		}
		s.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, 0, d.err
			}
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// dial connects to endpoint idx for d and installs the connection.
func (s *Pool) dial(d *dial, idx int) {
	defer s.dials.Done()
	ep := s.cfg.Endpoints[idx]
	ctx, cancel := s.cfg.Life, context.CancelFunc(func() {})
	s.mu.Lock()
	timeout := dialTimeout(s.cfg.DialTimeout, s.cfg.MaxDialTimeout, s.slowDials)
	s.mu.Unlock()
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	raw, err := s.cfg.Dial(ctx, ep)
	timedOut := ctx.Err() == context.DeadlineExceeded
	cancel()

	s.mu.Lock()
	defer s.mu.Unlock()
	defer close(d.done)
	s.dialing = nil
	switch {
	case err == nil:
		s.slowDials = 0
	case timedOut:
		s.slowDials++
	}
	switch {
	case err != nil && s.cfg.Life.Err() != nil:
		d.err = s.cfg.Closed
	case err != nil:
		s.eps[idx].fail(fmt.Errorf("dial: %w", err))
		s.cfg.Log.Debug("stream connection dial failed", zap.String("endpoint", ep), zap.Error(err))
		d.err = err
	case s.done:
		_ = raw.Close()
		d.err = s.cfg.Closed
	default:
		s.cur = raw
		s.curLife, s.endCur = context.WithCancel(context.Background())
		s.curIdx = idx
		s.gen++
		s.cfg.Log.Debug("stream connection up", zap.String("endpoint", ep), zap.Uint64("generation", s.gen))
	}
}

// dialTimeout is the bound of a dial after slow dials in a row ran out of
// time: base, doubled for each, up to max (when set and larger than base).
func dialTimeout(base, limit time.Duration, slow int) time.Duration {
	if base <= 0 || limit <= base {
		return base
	}
	if d := base << min(slow, 16); d < limit {
		return d
	}
	return limit
}

// Life returns a context that ends when the connection of generation gen
// is dropped or closed; it has already ended if gen is not the current
// generation. Requests bound by it stop at once when their connection is
// replaced, rather than wait, or retry inside clientv3, on a connection
// that is closing.
func (s *Pool) Life(gen uint64) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.gen != gen {
		return endedContext
	}
	return s.curLife
}

// endedContext is a context that has ended.
var endedContext = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// Fail reports that the connection of generation gen stalled, lost its
// leader or broke. If it is still the current one it is closed, which ends
// every stream on it, its endpoint is recorded as sick, and the next Get
// dials the next endpoint. Reports about an older generation are ignored:
// those streams have already moved.
func (s *Pool) Fail(gen uint64) {
	s.failGen(gen, errStreamFailed)
}

// errStreamFailed is the cause recorded for an endpoint whose stream
// connection the watch or lease engine dropped: they report a stall or a
// lost leader without saying which.
var errStreamFailed = errors.New("its watch or keepalive stream stalled or lost its leader")

func (s *Pool) failGen(gen uint64, cause error) {
	s.mu.Lock()
	if s.cur == nil || s.gen != gen {
		s.mu.Unlock()
		return
	}
	s.eps[s.curIdx].fail(cause)
	old := s.dropLocked()
	s.mu.Unlock()
	s.cfg.Log.Debug("stream connection dropped", zap.Strings("endpoints", old.Endpoints()), zap.Uint64("generation", gen))
	_ = old.Close()
}

// dropLocked detaches the current stream connection, which the caller
// closes after unlocking.
func (s *Pool) dropLocked() *clientv3.Client {
	old := s.cur
	s.cur = nil
	if old != nil {
		s.endCur()
	}
	return old
}

// Close closes the stream connection and the request connections, and
// refuses new ones. It waits for a dial in progress, which ends with Life.
func (s *Pool) Close() {
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
	s.dials.Wait()
	s.mu.Lock()
	old := s.dropLocked()
	var reqs []*clientv3.Client
	for _, e := range s.eps {
		if e.req != nil {
			reqs = append(reqs, e.req)
			e.req = nil
		}
	}
	s.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	for _, r := range reqs {
		_ = r.Close()
	}
}

// Endpoint returns the endpoint the connection is attached to, or "" if
// there is none.
func (s *Pool) Endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return ""
	}
	return s.cur.Endpoints()[0]
}

// Do runs op on the stream connection, one attempt at a time, each
// bounded by attempt, until it succeeds, fails in a way retrying cannot fix,
// or ctx ends. An attempt that stalls (runs out of its time with its member
// silent since it was sent: see AnsweredSince) or finds its member
// unavailable moves the stream connection to the next member before the
// next attempt; one whose connection is replaced meanwhile (by another
// request or the watch engine) stops at once. Either way the next attempt
// goes to the live connection, after a backoff. An attempt that ran out of
// its time makes the next one twice as long, so that members that answer,
// only more slowly than attempt, are still heard before ctx ends; if its
// member answered anything else meanwhile (a watch response or a
// keepalive on the connection, another request), the connection stays: the
// member is slow, not silent, and dropping the connection would end every
// watch and keepalive stream on it. It logs nothing: the caller reports
// the outcome.
func (s *Pool) Do(ctx context.Context, attempt time.Duration, op func(context.Context, *clientv3.Client) error) error {
	retry := backoff.New(50*time.Millisecond, 500*time.Millisecond)
	for slow := 0; ; {
		err := s.attempt(ctx, attempt<<min(slow, 16), op)
		if err != nil && ctx.Err() != nil && context.Cause(ctx) != ctx.Err() &&
			(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// The attempt ended because ctx did, for a reason of its own
			// (a session's lost lease...): say that reason, not the bare
			// "context canceled" clientv3 returns.
			return fmt.Errorf("%w (last attempt: %v)", context.Cause(ctx), err)
		}
		if err == nil || !s.cfg.Retryable(err) && !errors.Is(err, ErrReplaced) {
			return err
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			slow++
		}
		if ctx.Err() != nil || !retry.Wait(ctx) {
			return fmt.Errorf("%w (last attempt: %v)", context.Cause(ctx), err)
		}
	}
}

// ErrReplaced is the cause of an attempt stopped because its stream
// connection was dropped while it ran.
var ErrReplaced = errors.New("etcdkit: the stream connection was replaced during the request")

func (s *Pool) attempt(ctx context.Context, attempt time.Duration, op func(context.Context, *clientv3.Client) error) error {
	tctx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	cli, gen, err := s.Get(tctx)
	if err != nil {
		return err
	}
	// A request on a connection that is closing fails with Canceled, which
	// clientv3's interceptor retries every 25ms until the deadline: end it as
	// soon as its connection is dropped.
	actx, abandon := context.WithCancelCause(tctx)
	defer abandon(nil)
	stop := context.AfterFunc(s.Life(gen), func() { abandon(ErrReplaced) })
	defer stop()
	sent := time.Now()
	if err := op(actx, cli); err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(actx), ErrReplaced) {
			return fmt.Errorf("%w: %w", ErrReplaced, err)
		}
		// A member that answered anything meanwhile (a watch response or
		// a keepalive on the connection, another request) is slow, not
		// silent: a write waiting on a loaded disk must not drop every
		// watch and keepalive stream with it. Do gives the next attempt,
		// on the same connection, twice the time. The watch engine and
		// the session fail the connection themselves if it does fall
		// silent.
		if !errors.Is(err, context.DeadlineExceeded) || !s.AnsweredSince(gen, sent) {
			s.Failed(ctx, gen, err)
		}
		return err
	}
	s.Alive(gen)
	return nil
}

// Failed moves the stream connection of generation gen to the next
// member if err, from a request on it, says the member is silent,
// unreachable or without a leader, unless ctx (the caller's, not the
// attempt's) ended.
func (s *Pool) Failed(ctx context.Context, gen uint64, err error) {
	if ctx.Err() != nil || !s.cfg.Retryable(err) {
		return
	}
	if errors.Is(err, context.DeadlineExceeded) && s.cfg.OnStall != nil {
		s.cfg.OnStall()
	}
	s.failGen(gen, err)
}
