package backoff_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// draws is how many Backoffs the tests advance side by side: enough that the
// jitter of one step, uniform over ±25%, lands both below 90% and above 110%
// of the step with overwhelming probability (a miss has odds of 0.7^draws).
const draws = 300

// checkStep checks that ds are delays drawn around step: every one within
// ±25% of it, some below 90% and some above 110%. Together these pin the step
// itself, not only a range, since a step half or twice as long could not
// produce both.
func checkStep(t *testing.T, ds []time.Duration, step time.Duration, what string) {
	t.Helper()
	lo, hi := ds[0], ds[0]
	for _, d := range ds {
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < step-step/4 || hi > step+step/4 {
		t.Errorf("%s: got delays in [%v, %v], want all within ±25%% of %v", what, lo, hi, step)
	}
	if lo >= step*9/10 || hi <= step*11/10 {
		t.Errorf("%s: got delays in [%v, %v], want jitter reaching below %v and above %v", what, lo, hi, step*9/10, step*11/10)
	}
}

// nextAll calls Next on every Backoff of bs and returns the delays.
func nextAll(bs []*backoff.Backoff) []time.Duration {
	ds := make([]time.Duration, len(bs))
	for i, b := range bs {
		ds[i] = b.Next()
	}
	return ds
}

func newAll(lo, hi time.Duration) []*backoff.Backoff {
	bs := make([]*backoff.Backoff, draws)
	for i := range bs {
		bs[i] = backoff.New(lo, hi)
	}
	return bs
}

// TestNextGrowsToCap checks the steps successive Next calls draw around: the
// first is min, each doubles the last, and none exceeds max, with the
// defaults New applies to a min that is not positive and a max below min.
func TestNextGrowsToCap(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		min, max time.Duration
		steps    []time.Duration
	}{
		{"doubles up to max", 100 * ms, time.Second, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}},
		{"max between two doublings", 40 * ms, 100 * ms, []time.Duration{40 * ms, 80 * ms, 100 * ms, 100 * ms}},
		{"max equal to min", 60 * ms, 60 * ms, []time.Duration{60 * ms, 60 * ms, 60 * ms}},
		{"max below min is raised to min", 200 * ms, 100 * ms, []time.Duration{200 * ms, 200 * ms}},
		{"zero min is one millisecond", 0, 4 * ms, []time.Duration{ms, 2 * ms, 4 * ms, 4 * ms}},
		{"negative min is one millisecond", -5 * ms, 2 * ms, []time.Duration{ms, 2 * ms, 2 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := newAll(tt.min, tt.max)
			for i, step := range tt.steps {
				checkStep(t, nextAll(bs), step, fmt.Sprintf("call %d", i+1))
			}
		})
	}
}

// TestNextJitterBounds checks that one step's delays stay within ±25% and
// differ from each other, so that clients retrying after the same outage do
// not arrive together.
func TestNextJitterBounds(t *testing.T) {
	tests := []struct {
		name string
		step time.Duration
	}{
		{"millisecond", time.Millisecond},
		{"second", time.Second},
		{"odd nanoseconds", 1001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := nextAll(newAll(tt.step, tt.step))
			checkStep(t, ds, tt.step, "first call")
			seen := map[time.Duration]bool{}
			for _, d := range ds {
				seen[d] = true
			}
			if len(seen) < 10 {
				t.Errorf("got %d distinct delays in %d draws, want the jitter to spread them", len(seen), len(ds))
			}
		})
	}
}

// TestReset checks that Reset brings the next delay back to the first step,
// wherever the growth had got to, and that Reset before any Next changes
// nothing.
func TestReset(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name  string
		calls int // Next calls before Reset
	}{
		{"before any Next", 0},
		{"after one Next", 1},
		{"after reaching max", 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := newAll(10*ms, 500*ms)
			for range tt.calls {
				nextAll(bs)
			}
			for _, b := range bs {
				b.Reset()
			}
			checkStep(t, nextAll(bs), 10*ms, "first call after Reset")
			checkStep(t, nextAll(bs), 20*ms, "second call after Reset")
		})
	}
}

// TestWait checks that Wait reports true once the whole delay has passed,
// and false as soon as ctx ends, whether before or during the wait.
func TestWait(t *testing.T) {
	tests := []struct {
		name  string
		delay time.Duration // min and max of the Backoff
		ctx   func() (context.Context, context.CancelFunc)
		want  bool
		least time.Duration // Wait takes at least this long
	}{
		{
			name:  "delay elapses",
			delay: 40 * time.Millisecond,
			ctx:   func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			want:  true,
			least: 30 * time.Millisecond, // the step less 25% jitter
		},
		{
			name:  "ctx already done",
			delay: time.Hour,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
			want: false,
		},
		{
			name:  "ctx ends during the wait",
			delay: time.Hour,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			want:  false,
			least: 50 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			b := backoff.New(tt.delay, tt.delay)
			start := time.Now()
			res := make(chan bool, 1)
			go func() { res <- b.Wait(ctx) }()
			var got bool
			select {
			case got = <-res:
			case <-time.After(10 * time.Second):
				// A Wait cut short by ctx must return when ctx ends, not
				// after its hour-long delay.
				t.Fatal("Wait still blocked after 10s, want it to return when its delay or ctx ends")
			}
			took := time.Since(start)
			if got != tt.want {
				t.Errorf("Wait: got %v, want %v", got, tt.want)
			}
			if took < tt.least {
				t.Errorf("Wait returned after %v, want at least %v", took, tt.least)
			}
		})
	}
}

// TestWaitAdvances checks that Wait, like Next, moves to the next step.
func TestWaitAdvances(t *testing.T) {
	bs := newAll(time.Millisecond, time.Second)
	for _, b := range bs {
		if !b.Wait(context.Background()) {
			t.Fatal("Wait with a background ctx: got false, want true")
		}
	}
	checkStep(t, nextAll(bs), 2*time.Millisecond, "Next after one Wait")
}
