package conn

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestPoolPick(t *testing.T) {
	s := New(Config{Endpoints: []string{"a", "b", "c"}})
	pick := func() int {
		i := s.pickLocked()
		s.curIdx = i
		return i
	}
	fail := func(i int, at time.Time) { s.eps[i].failedAt = at }

	t0 := time.Now()
	if got := pick(); got != 0 {
		t.Fatalf("first pick: got %d, want 0", got)
	}
	fail(0, t0)
	if got := pick(); got != 1 {
		t.Fatalf("after 0 failed: got %d, want 1", got)
	}
	// 1 fails; 2 never failed, so it goes before 0.
	fail(1, t0.Add(time.Second))
	if got := pick(); got != 2 {
		t.Fatalf("after 1 failed: got %d, want 2", got)
	}
	// 2 fails: 0 failed longest ago.
	fail(2, t0.Add(2*time.Second))
	if got := pick(); got != 0 {
		t.Fatalf("after 2 failed: got %d, want 0", got)
	}
	// 0 fails again at once: 1 failed longer ago than 2.
	fail(0, t0.Add(3*time.Second))
	if got := pick(); got != 1 {
		t.Fatalf("after 0 failed again: got %d, want 1", got)
	}

	one := New(Config{Endpoints: []string{"only"}})
	if got := one.pickLocked(); got != 0 {
		t.Fatalf("single endpoint: got %d, want 0", got)
	}
}

// TestPoolOrder: requests try the healthy endpoints first, the stream
// connection's own before the others, then the most recently successful;
// the sick ones last, the one that failed longest ago first. A success
// sent before the last failure does not make an endpoint healthy again.
func TestPoolOrder(t *testing.T) {
	s := New(Config{Endpoints: []string{"a", "b", "c", "d"}})
	if got := s.Order(); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("fresh pool: got order %v, want [0 1 2 3]", got)
	}
	t0 := time.Now()
	s.Succeeded(2, 7, t0)
	if got := s.Order(); !slices.Equal(got, []int{2, 0, 1, 3}) {
		t.Fatalf("after 2 answered: got order %v, want [2 0 1 3]", got)
	}
	s.Sick(2, errors.New("has no leader"))
	s.Sick(0, errors.New("did not answer"))
	if got := s.Order(); !slices.Equal(got, []int{1, 3, 2, 0}) {
		t.Fatalf("after 2 then 0 failed: got order %v, want [1 3 2 0]", got)
	}
	// A request sent before 2 failed and answered after proves nothing.
	s.Succeeded(2, 7, t0)
	if st := s.State(2); st.Healthy || st.Cause.Error() != "has no leader" || st.MemberID != 7 {
		t.Fatalf("late success: got %+v, want 2 still sick, has no leader, member 7", st)
	}
	s.Succeeded(2, 7, time.Now())
	if st := s.State(2); !st.Healthy {
		t.Fatalf("fresh success: got %+v, want 2 healthy", st)
	}
	s.SetNames(map[uint64]string{7: "m7"})
	if got, want := s.State(2).String(), "member m7 (c)"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got, want := s.State(1).String(), "endpoint b"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := s.Order(); got[0] != 2 {
		t.Fatalf("got order %v, want 2 first: the most recent success", got)
	}
}
