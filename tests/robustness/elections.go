package robustness

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// FencedKey is the key, under a schedule's namespace, that election leaders
// write with GuardedPut.
const FencedKey = "fenced"

// Elections is the workload of one election with two or three campaigners,
// each on its own client (some through one member's proxy only, so that a
// fault there deposes them). A campaigner campaigns, and while it leads
// writes "<id> <token> <seq>" to the fenced key with GuardedPut every few
// milliseconds, resigning now and then; when its leadership ends it
// campaigns again. Leaderships
// (when won, when their Context was cancelled) and successful guarded
// writes are recorded; the checker verifies them against the cluster's
// history of the candidate keys and the fenced key.
type Elections struct {
	run    *Run
	rec    *ElectionRecord
	cands  []*campaigner
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

type campaigner struct {
	id     string
	c      *etcdkit.Client
	e      *etcdkit.Election
	fenced *etcdkit.Key[string]
	rng    *RandSource
}

// Name returns "elections".
func (es *Elections) Name() string { return "elections" }

// Start makes the campaigners and starts their campaigns.
func (es *Elections) Start(ctx context.Context, run *Run) error {
	es.run = run
	rng := run.Rand("elections")
	ttl := time.Second
	if rng.Chance(0.3) {
		ttl = 2 * time.Second
	}
	es.rec = &ElectionRecord{Name: "e", Fenced: FencedKey}
	run.Rec.Election(es.rec)
	tctx, cancel := context.WithCancel(ctx)
	es.cancel = cancel
	for i := range 2 + rng.IntN(2) {
		members := rotate(i)
		via := "all"
		if rng.Chance(0.5) {
			members = members[:1]
			via = fmt.Sprintf("m%d", members[0])
		}
		id := fmt.Sprintf("l%d", i)
		c, err := run.Client(ctx, ClientOptions{Name: id, Members: members, StallTimeout: rng.Duration(300*time.Millisecond, time.Second)})
		if err != nil {
			return err
		}
		cd := &campaigner{id: id, c: c, e: etcdkit.NewElection(c, es.rec.Name, ttl),
			fenced: etcdkit.NewKey(c, FencedKey, etcdkit.String()), rng: run.Rand("campaigner " + id)}
		es.cands = append(es.cands, cd)
		run.Rec.Note("elect", "%s campaigns via %s, TTL %v", id, via, ttl)
		es.wg.Go(func() { cd.loop(tctx, run, es.rec) })
	}
	// The faults should find a leader at work.
	wctx, cancel := run.startContext(ctx)
	defer cancel()
	if !waitFor(wctx, func() bool { return run.Rec.leaderships(es.rec) > 0 }, nil) {
		return fmt.Errorf("no campaigner won election %q within the start budget of %v", es.rec.Name, StartBudget)
	}
	return nil
}

// leaderships returns the number of leaderships won so far.
func (r *Recorder) leaderships(e *ElectionRecord) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(e.Leaderships)
}

// loop campaigns and writes as leader until ctx ends.
func (cd *campaigner) loop(ctx context.Context, run *Run, er *ElectionRecord) {
	rec := run.Rec
	for ctx.Err() == nil {
		l, err := cd.e.Campaign(ctx, cd.id)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			rec.Note("elect", "%s campaign: %v", cd.id, err)
			// The pace of retries, part of the workload's definition.
			time.Sleep(cd.rng.Duration(10*time.Millisecond, 50*time.Millisecond))
			continue
		}
		idx := rec.leadershipWon(er, LeaderRecord{ID: cd.id, Token: l.Token(), Won: rec.Now()},
			strings.TrimPrefix(l.HoldingKey(), run.Namespace+"/"))
		recorded := make(chan struct{})
		stop := context.AfterFunc(l.Context(), func() {
			rec.leadershipLost(er, idx, rec.Now(), fmt.Sprint(context.Cause(l.Context())))
			close(recorded)
		})
		rec.Note("elect", "%s leads with token %d", cd.id, l.Token())
		for seq := 1; l.Context().Err() == nil && ctx.Err() == nil; seq++ {
			v := fmt.Sprintf("%s %d %d", cd.id, l.Token(), seq)
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			invoke := rec.Now()
			rev, err := etcdkit.GuardedPut(wctx, l, cd.fenced, v)
			ret := rec.Now()
			cancel()
			if err != nil {
				rec.Note("elect", "%s guarded put %q: %v", cd.id, v, err)
				continue
			}
			rec.Guarded(GuardedWrite{Leader: cd.id, Token: l.Token(), Key: FencedKey, Value: v, Rev: rev, Invoke: invoke, Return: ret})
			if cd.rng.Chance(0.08) {
				// Hand over now and then, so that short schedules see
				// leaderships change too.
				break
			}
			time.Sleep(cd.rng.Duration(3*time.Millisecond, 15*time.Millisecond))
		}
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := l.Resign(rctx); err != nil {
			rec.Note("elect", "%s resign: %v", cd.id, err)
		}
		cancel()
		<-l.Done()
		// The leadership's Context is cancelled by now; wait for the
		// callback that records when.
		if stop() {
			rec.leadershipLost(er, idx, rec.Now(), "still live after Done")
		} else {
			<-recorded
		}
	}
}

// leadershipWon records a won leadership and the candidates' prefix, read
// from the leader key; it returns the leadership's index.
func (r *Recorder) leadershipWon(e *ElectionRecord, lr LeaderRecord, key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i := strings.LastIndex(key, "/"); i >= 0 && e.Candidates == "" {
		e.Candidates = key[:i+1]
	}
	e.Leaderships = append(e.Leaderships, lr)
	return len(e.Leaderships) - 1
}

// leadershipLost records when leadership i's Context was cancelled.
func (r *Recorder) leadershipLost(e *ElectionRecord, i int, at time.Duration, cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Leaderships[i].Lost == 0 {
		e.Leaderships[i].Lost, e.Leaderships[i].Cause = at, cause
	}
}

// Quiesce ends the campaigns; leaders stop writing and resign.
func (es *Elections) Quiesce(*Run) {
	if es.cancel != nil {
		es.cancel()
	}
}

// Settle waits for the campaigners to have resigned.
func (es *Elections) Settle(context.Context, *Run) error {
	es.wg.Wait()
	return nil
}

// Converge does nothing: the checker reads the cluster's history.
func (es *Elections) Converge(context.Context, *Run) {}

// Close ends the campaigns and closes the clients.
func (es *Elections) Close() {
	es.once.Do(func() {
		es.Quiesce(es.run)
		es.wg.Wait()
		for _, cd := range es.cands {
			_ = cd.c.Close()
		}
	})
}
