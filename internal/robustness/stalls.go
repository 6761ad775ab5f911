package robustness

import (
	"fmt"
	"sync"
	"time"
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
