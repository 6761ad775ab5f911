package robustness

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// HoldingRecord is what a Mutexes or Semaphores workload saw of one mutex
// or semaphore: the holdings as their holders saw them, and the guarded
// counter they updated.
type HoldingRecord struct {
	// Kind is "mutex" or "semaphore"; Limit is 1 for a mutex.
	Kind, Name string
	Limit      int
	// Holders is the prefix of the holder keys, relative to the namespace,
	// read from the first holding's key.
	Holders string
	// Counter is the key incremented by one in every guarded update, and
	// Last the key written in the same transaction with
	// "<id> <token> <counter>".
	Counter, Last string
	// Holdings are the holdings, each with when Lock or Acquire returned it
	// and when its Context was cancelled.
	Holdings []LeaderRecord
	// Acked counts the guarded updates that returned success, Unknown
	// those whose outcome is unknown.
	Acked, Unknown int
}

// Holding registers a mutex or semaphore record.
func (r *Recorder) Holding(hr *HoldingRecord) {
	r.update(func(h *History) { h.Holdings = append(h.Holdings, hr) })
}

func (r *Recorder) holdingWon(hr *HoldingRecord, lr LeaderRecord, key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i := strings.LastIndex(key, "/"); i >= 0 && hr.Holders == "" {
		hr.Holders = key[:i+1]
	}
	hr.Holdings = append(hr.Holdings, lr)
	return len(hr.Holdings) - 1
}

func (r *Recorder) holdingLost(hr *HoldingRecord, i int, at time.Duration, cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if hr.Holdings[i].Lost == 0 {
		hr.Holdings[i].Lost, hr.Holdings[i].Cause = at, cause
	}
}

func (r *Recorder) holdingUpdate(hr *HoldingRecord, acked bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if acked {
		hr.Acked++
	} else {
		hr.Unknown++
	}
}

// Mutexes is the workload of one Mutex with three contenders, each on its
// own client (some through one member's proxy only, so that a fault there
// cuts the holder off). A contender locks, and while it holds increments a
// counter with GuardedUpdateKeys every few milliseconds, writing who it is
// in the same transaction; it unlocks now and then and locks again. The
// checker verifies that no two holdings overlap, that every guarded write
// carries the token of the holder at its revision, and that the counter
// equals the updates that applied.
type Mutexes struct{ holdings }

// Name returns "mutexes".
func (m *Mutexes) Name() string { return "mutexes" }

// Start makes the contenders and starts them.
func (m *Mutexes) Start(ctx context.Context, run *Run) error {
	return m.start(ctx, run, "mutex", 1, 3)
}

// Semaphores is Mutexes for a Semaphore of limit 2 with three contenders:
// the checker verifies that at no revision, and at no time, more than 2
// permits were live.
type Semaphores struct{ holdings }

// Name returns "semaphores".
func (s *Semaphores) Name() string { return "semaphores" }

// Start makes the contenders and starts them.
func (s *Semaphores) Start(ctx context.Context, run *Run) error {
	return s.start(ctx, run, "semaphore", 2, 3)
}

// holdings is the workload core shared by Mutexes and Semaphores.
type holdings struct {
	run     *Run
	rec     *HoldingRecord
	clients []*etcdkit.Client
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// acquirer is what a contender needs of a Mutex or a Semaphore.
type acquirer func(ctx context.Context) (etcdkit.Fence, func(context.Context) error, <-chan struct{}, error)

func (hs *holdings) start(ctx context.Context, run *Run, kind string, limit, n int) error {
	hs.run = run
	rng := run.Rand(kind + "s")
	ttl := time.Second
	if rng.Chance(0.3) {
		ttl = 2 * time.Second
	}
	hs.rec = &HoldingRecord{Kind: kind, Name: "h", Limit: limit, Counter: kind + "/counter", Last: kind + "/last"}
	run.Rec.Holding(hs.rec)
	tctx, cancel := context.WithCancel(ctx)
	hs.cancel = cancel
	for i := range n {
		members := rotate(i)
		via := "all"
		if rng.Chance(0.5) {
			members = members[:1]
			via = fmt.Sprintf("m%d", members[0])
		}
		id := fmt.Sprintf("%c%d", kind[0], i)
		c, err := run.Client(ctx, ClientOptions{Name: id, Members: members, StallTimeout: rng.Duration(300*time.Millisecond, time.Second)})
		if err != nil {
			return err
		}
		hs.clients = append(hs.clients, c)
		var acq acquirer
		if kind == "mutex" {
			m := etcdkit.NewMutex(c, hs.rec.Name, ttl, etcdkit.WithHolderID(id))
			acq = func(ctx context.Context) (etcdkit.Fence, func(context.Context) error, <-chan struct{}, error) {
				lk, err := m.Lock(ctx)
				if err != nil {
					return nil, nil, nil, err
				}
				return lk, lk.Unlock, lk.Done(), nil
			}
		} else {
			s := etcdkit.NewSemaphore(c, hs.rec.Name, limit, ttl, etcdkit.WithHolderID(id))
			acq = func(ctx context.Context) (etcdkit.Fence, func(context.Context) error, <-chan struct{}, error) {
				p, err := s.Acquire(ctx)
				if err != nil {
					return nil, nil, nil, err
				}
				return p, p.Release, p.Done(), nil
			}
		}
		ct := &contender{id: id, acq: acq, rng: run.Rand(kind + " contender " + id),
			counter: etcdkit.NewKey(c, hs.rec.Counter, etcdkit.JSON[int]()), last: etcdkit.NewKey(c, hs.rec.Last, etcdkit.String())}
		run.Rec.Note(kind, "%s contends via %s, TTL %v", id, via, ttl)
		hs.wg.Go(func() { ct.loop(tctx, run, hs.rec) })
	}
	wctx, cancel := run.startContext(ctx)
	defer cancel()
	if !waitFor(wctx, func() bool {
		run.Rec.mu.Lock()
		defer run.Rec.mu.Unlock()
		return len(hs.rec.Holdings) > 0
	}, nil) {
		return fmt.Errorf("no contender acquired %s %q within the start budget of %v", kind, hs.rec.Name, StartBudget)
	}
	return nil
}

type contender struct {
	id      string
	acq     acquirer
	rng     *RandSource
	counter *etcdkit.Key[int]
	last    *etcdkit.Key[string]
}

// errRead marks a guarded update that failed before sending its write.
var errRead = errors.New("read failed")

func (ct *contender) loop(ctx context.Context, run *Run, hr *HoldingRecord) {
	rec := run.Rec
	for ctx.Err() == nil {
		f, release, done, err := ct.acq(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			rec.Note(hr.Kind, "%s acquire: %v", ct.id, err)
			time.Sleep(ct.rng.Duration(10*time.Millisecond, 50*time.Millisecond))
			continue
		}
		key := f.(interface{ HoldingKey() string }).HoldingKey()
		idx := rec.holdingWon(hr, LeaderRecord{ID: ct.id, Token: f.Token(), Won: rec.Now()}, strings.TrimPrefix(key, run.Namespace+"/"))
		recorded := make(chan struct{})
		stop := context.AfterFunc(f.Context(), func() {
			rec.holdingLost(hr, idx, rec.Now(), fmt.Sprint(context.Cause(f.Context())))
			close(recorded)
		})
		rec.Note(hr.Kind, "%s holds with token %d", ct.id, f.Token())
		for f.Context().Err() == nil && ctx.Err() == nil {
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := etcdkit.GuardedUpdateKeys(wctx, f, func(ctx context.Context, tx *etcdkit.Tx) error {
				v, _, err := ct.counter.GetIn(ctx, tx)
				if err != nil {
					return fmt.Errorf("%w: %w", errRead, err)
				}
				tx.Write(ct.counter.OpPut(v.Data+1), ct.last.OpPut(fmt.Sprintf("%s %d %d", ct.id, f.Token(), v.Data+1)))
				return nil
			})
			cancel()
			switch {
			case err == nil:
				rec.holdingUpdate(hr, true)
			case errors.Is(err, errRead), errors.Is(err, etcdkit.ErrConflict),
				errors.Is(err, etcdkit.ErrNotHeld) && !strings.Contains(err.Error(), "may have applied"):
				rec.Note(hr.Kind, "%s guarded update not applied: %v", ct.id, err)
			default:
				rec.holdingUpdate(hr, false)
				rec.Note(hr.Kind, "%s guarded update unknown: %v", ct.id, err)
			}
			if ct.rng.Chance(0.2) {
				break
			}
			time.Sleep(ct.rng.Duration(5*time.Millisecond, 25*time.Millisecond))
		}
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := release(rctx); err != nil {
			rec.Note(hr.Kind, "%s release: %v", ct.id, err)
		}
		cancel()
		<-done
		if stop() {
			rec.holdingLost(hr, idx, rec.Now(), "still live after Done")
		} else {
			<-recorded
		}
	}
}

// Quiesce ends the contenders; holders stop writing and release.
func (hs *holdings) Quiesce(*Run) {
	if hs.cancel != nil {
		hs.cancel()
	}
}

// Settle waits for the contenders to have released.
func (hs *holdings) Settle(context.Context, *Run) error {
	hs.wg.Wait()
	return nil
}

// Converge does nothing: the checker reads the cluster's history.
func (hs *holdings) Converge(context.Context, *Run) {}

// Close ends the contenders and closes the clients.
func (hs *holdings) Close() {
	hs.once.Do(func() {
		hs.Quiesce(hs.run)
		hs.wg.Wait()
		for _, c := range hs.clients {
			_ = c.Close()
		}
	})
}
