package conn

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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

// TestAttemptFailsOnlyASilentConnection: a request attempt on the stream
// connection that runs out of time moves the connection only if its member
// answered nothing since the attempt was sent. A member that answered
// something else meanwhile (here: Alive, as a watch response or a keepalive
// reports it) is slow, not silent: the next attempt, with twice the time,
// goes to the same connection, and the watches and keepalives on it live
// on. Any other retryable failure moves the connection whatever was
// answered.
func TestAttemptFailsOnlyASilentConnection(t *testing.T) {
	errUnavailable := errors.New("unavailable")
	tests := []struct {
		name     string
		answered bool  // the member answers something during the first attempt
		err      error // how the first attempt fails; nil: it runs out of time
		moved    bool
	}{
		{name: "slow", answered: true, moved: false},
		{name: "silent", answered: false, moved: true},
		{name: "unavailable", answered: true, err: errUnavailable, moved: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ln.Close() })
			stalls := 0
			s := New(Config{
				Endpoints: []string{ln.Addr().String()},
				Dial: func(_ context.Context, ep string) (*clientv3.Client, error) {
					return clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
				},
				Life:   context.Background(),
				Log:    zap.NewNop(),
				Closed: errors.New("closed"),
				Retryable: func(err error) bool {
					return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errUnavailable)
				},
				OnStall: func() { stalls++ },
			})
			t.Cleanup(s.Close)

			var gens []uint64
			err = s.Do(context.Background(), 50*time.Millisecond, func(ctx context.Context, _ *clientv3.Client) error {
				_, gen, err := s.Get(ctx)
				if err != nil {
					return err
				}
				gens = append(gens, gen)
				if len(gens) > 1 {
					return nil
				}
				if tt.answered {
					s.Alive(gen)
				}
				if tt.err != nil {
					return tt.err
				}
				<-ctx.Done()
				return ctx.Err()
			})
			if err != nil {
				t.Fatalf("Do: got %v, want nil", err)
			}
			if len(gens) != 2 {
				t.Fatalf("got %d attempts, want 2", len(gens))
			}
			if moved := gens[1] != gens[0]; moved != tt.moved {
				t.Errorf("connection moved: got %v, want %v (generations %v)", moved, tt.moved, gens)
			}
			// The second attempt's success made the endpoint healthy
			// again; a move left its cause.
			if cause := s.State(0).Cause; (cause != nil) != tt.moved {
				t.Errorf("endpoint failure recorded: got %v, want one: %v", cause, tt.moved)
			}
			wantStalls := 0
			if tt.moved && tt.err == nil {
				wantStalls = 1
			}
			if stalls != wantStalls {
				t.Errorf("stalls: got %d, want %d", stalls, wantStalls)
			}
		})
	}
}

// TestDoSaysWhyItsContextEnded: an attempt that clientv3 ends with a bare
// "context canceled" because the caller's ctx ended for a reason of its
// own (a session's lost lease) reports that reason; a plain cancel stays
// plain, and an error that is not the context's passes through.
func TestDoSaysWhyItsContextEnded(t *testing.T) {
	errLost := errors.New("lease lost")
	errOther := errors.New("compacted")
	tests := []struct {
		name  string
		cause error // the ctx's cause; nil: a plain cancel
		err   error // what the attempt returns; nil: the ctx's error
		want  []error
		avoid error
	}{
		{name: "cause", cause: errLost, want: []error{errLost}},
		{name: "plain", want: []error{context.Canceled}},
		{name: "not the context's", cause: errLost, err: errOther, want: []error{errOther}, avoid: errLost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ln.Close() })
			s := New(Config{
				Endpoints: []string{ln.Addr().String()},
				Dial: func(_ context.Context, ep string) (*clientv3.Client, error) {
					return clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
				},
				Life:      context.Background(),
				Log:       zap.NewNop(),
				Closed:    errors.New("closed"),
				Retryable: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
			})
			t.Cleanup(s.Close)

			ctx, cancel := context.WithCancelCause(context.Background())
			t.Cleanup(func() { cancel(nil) })
			err = s.Do(ctx, time.Minute, func(actx context.Context, _ *clientv3.Client) error {
				cancel(tt.cause)
				<-actx.Done()
				if tt.err != nil {
					return tt.err
				}
				return actx.Err()
			})
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Errorf("Do: got %v, want it to match %v", err, want)
				}
			}
			if tt.avoid != nil && errors.Is(err, tt.avoid) {
				t.Errorf("Do: got %v, want it not to match %v", err, tt.avoid)
			}
		})
	}
}
