package conn

import (
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
