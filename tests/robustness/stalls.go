package robustness

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// StallTick is how often the stall meter asks to be woken. A wake later
// than that by more than StallNoise is a stall of the process: for that
// long, a goroutine that was due to run did not get to.
const (
	StallTick  = 10 * time.Millisecond
	StallNoise = 20 * time.Millisecond
)

// Stall is an interval, in schedule time, during which the process did not
// run a goroutine that was due: from when the stall meter was due to wake
// to when it woke.
type Stall struct {
	From, To time.Duration
}

// Len returns the stall's length.
func (s Stall) Len() time.Duration { return s.To - s.From }

// String formats the stall, e.g. "0.412s at +3.100s".
func (s Stall) String() string { return fmt.Sprintf("%.3fs at %s", s.Len().Seconds(), fmtTime(s.From)) }

// StallSummary sums up the stalls of one schedule.
type StallSummary struct {
	// Max is the longest stall; Total the sum of every stall's length;
	// Count their number.
	Max   Stall
	Total time.Duration
	Count int
}

// String formats the summary, e.g. "max 0.412s at +3.100s, total 1.020s in 12 stalls".
func (s StallSummary) String() string {
	if s.Count == 0 {
		return "no stall"
	}
	return fmt.Sprintf("max %v, total %.3fs in %d stalls", s.Max, s.Total.Seconds(), s.Count)
}

// StallSummary sums up the stalls recorded in h.
func (h *History) StallSummary() StallSummary {
	var s StallSummary
	for _, st := range h.Stalls {
		s.Count++
		s.Total += st.Len()
		if st.Len() > s.Max.Len() {
			s.Max = st
		}
	}
	return s
}

// stallMeter measures the process's own scheduling stalls while a
// schedule runs: a goroutine that sleeps StallTick at a time and records
// every wake that comes more than StallNoise late. Neither the library's
// timers nor the in-process etcd members' can fire while the process is
// starved, so a check whose margin such a stall exceeds proves nothing
// about the library (see Violation.Starved).
type stallMeter struct {
	rec  *Recorder
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	stalls []Stall
}

// startStallMeter starts measuring; stalls are timed on rec's clock.
func startStallMeter(rec *Recorder) *stallMeter {
	m := &stallMeter{rec: rec, stop: make(chan struct{}), done: make(chan struct{})}
	go m.run()
	return m
}

func (m *stallMeter) run() {
	defer close(m.done)
	timer := time.NewTimer(StallTick)
	defer timer.Stop()
	due := m.rec.Now() + StallTick
	for {
		select {
		case <-m.stop:
			return
		case <-timer.C:
		}
		now := m.rec.Now()
		if now-due > StallNoise {
			m.mu.Lock()
			m.stalls = append(m.stalls, Stall{From: due, To: now})
			m.mu.Unlock()
		}
		due = now + StallTick
		timer.Reset(StallTick)
	}
}

// Stop stops the meter and returns the stalls it measured. It is
// idempotent.
func (m *stallMeter) Stop() []Stall {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stalls
}

// stalled returns the stalls of h that overlap [from, to], and their total
// length within it.
func stalled(h *History, from, to time.Duration) ([]Stall, time.Duration) {
	var out []Stall
	var total time.Duration
	for _, s := range h.Stalls {
		if s.To <= from || s.From >= to {
			continue
		}
		out = append(out, s)
		total += min(s.To, to) - max(s.From, from)
	}
	return out, total
}

// probeTimeout bounds one probe of the cluster's latency.
const probeTimeout = 5 * time.Second

// Probe is one linearizable read the latency probe made through a member's
// direct client: the time the in-process cluster, starved of CPU with the
// rest of the process, took to serve what a lease keepalive also needs (a
// round to the leader and its quorum).
type Probe struct {
	Member int
	// At and Took are when the read was sent and how long it took to
	// answer or fail (a failure counts as its full time).
	At, Took time.Duration
	Failed   bool
}

// probeLoop reads the revision through member m's direct client, with a
// short pause between reads, until ctx ends, and returns the probes. Each
// member has its own loop, so that a slow one does not thin out the
// others' probes.
func probeLoop(ctx context.Context, rec *Recorder, m int, cli *clientv3.Client) []Probe {
	var ps []Probe
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		at := rec.Now()
		_, err := currentRev(pctx, cli)
		cancel()
		if ctx.Err() != nil {
			break // cut short by the end of the schedule: no measure
		}
		ps = append(ps, Probe{Member: m, At: at, Took: rec.Now() - at, Failed: err != nil})
		// The pause keeps the probe from being the load it measures.
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return ps
}

// slowCluster returns the longest interval within [from, to] during which
// every probe of member m took at least d (or failed), as the probes that
// cover it: a client on m whose requests give up after d got no answer
// then, however well it behaved.
func slowCluster(h *History, m int, d, from, to time.Duration) (Stall, []Probe) {
	var best, cur Stall
	var bestPs, curPs []Probe
	for _, p := range h.Probes {
		if p.Member != m || p.At+p.Took < from || p.At > to {
			continue
		}
		if p.Took < d && !p.Failed {
			cur, curPs = Stall{}, nil
			continue
		}
		if len(curPs) == 0 {
			cur.From = p.At
		}
		cur.To = p.At + p.Took
		curPs = append(curPs, p)
		if cur.Len() > best.Len() {
			best, bestPs = cur, slices.Clone(curPs)
		}
	}
	return best, bestPs
}
