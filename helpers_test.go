package etcdkit_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
)

// testClient connects an etcdkit client to endpoints under namespace ns and
// closes it when the test ends.
func testClient(t testing.TB, endpoints []string, ns string) *etcdkit.Client {
	t.Helper()
	return testClientConfig(t, etcdkit.Config{Endpoints: endpoints, Namespace: ns})
}

// testClientConfig connects an etcdkit client with cfg and closes it when the
// test ends.
func testClientConfig(t testing.TB, cfg etcdkit.Config) *etcdkit.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := etcdkit.New(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testContext returns a context that ends with the test or after d.
func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// stateLog records every state a handle sends, with the time it was
// received, until the channel closes or the test ends.
type stateLog struct {
	mu     sync.Mutex
	states []stampedState
	closed bool
}

type stampedState struct {
	st etcdkit.SessionState
	at time.Time
}

// recordStates starts recording the states ch sends; the recording stops
// when ch closes or the test ends.
func recordStates(t testing.TB, ch <-chan etcdkit.SessionState) *stateLog {
	l := &stateLog{}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case st, ok := <-ch:
				l.mu.Lock()
				if !ok {
					l.closed = true
					l.mu.Unlock()
					return
				}
				l.states = append(l.states, stampedState{st, time.Now()})
				l.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return l
}

func (l *stateLog) list() []etcdkit.SessionState {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]etcdkit.SessionState, len(l.states))
	for i, s := range l.states {
		out[i] = s.st
	}
	return out
}

func (l *stateLog) String() string { return fmt.Sprint(l.list()) }

// first returns when st was first received after from, or the zero time.
func (l *stateLog) first(st etcdkit.SessionState, from time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.states {
		if s.st == st && !s.at.Before(from) {
			return s.at
		}
	}
	return time.Time{}
}

// waitFor waits until st is received (at or after from) and returns when.
func (l *stateLog) waitFor(t testing.TB, st etcdkit.SessionState, from time.Time, within time.Duration) time.Time {
	t.Helper()
	var at time.Time
	require.Eventually(t, func() bool {
		at = l.first(st, from)
		return !at.IsZero()
	}, within, lsTick, "state %v never arrived; got %v", st, l.list())
	return at
}

// settled waits until the last state received is want.
func (l *stateLog) settled(t testing.TB, want etcdkit.SessionState, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { s := l.list(); return len(s) > 0 && s[len(s)-1] == want }, within, lsTick,
		"states never settled at %v; got %v", want, l)
}

// metrics records the library's metrics: the current value of every
// counter and gauge.
type metrics struct {
	mu   sync.Mutex
	vals map[etcdkit.Metric]float64
}

func newMetrics() *metrics {
	return &metrics{vals: map[etcdkit.Metric]float64{}}
}

func (m *metrics) Add(k etcdkit.Metric, d float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vals[k] += d
}

func (m *metrics) Set(k etcdkit.Metric, v float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vals[k] = v
}

func (m *metrics) get(k etcdkit.Metric) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vals[k]
}

// durationStats describes a set of measured durations, rounded to the
// millisecond, for a benchmark's log.
func durationStats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no data"
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	all := make([]time.Duration, len(ds))
	for i, d := range ds {
		sum += d
		all[i] = r(d)
	}
	return fmt.Sprintf("n=%d min %v median %v mean %v max %v (all: %v)",
		len(s), r(s[0]), r(s[len(s)/2]), r(sum/time.Duration(len(s))), r(s[len(s)-1]), all)
}
