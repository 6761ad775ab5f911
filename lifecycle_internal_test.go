package etcdkit

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// lifeWait bounds every wait of these tests; none is expected to take long.
const lifeWait = 10 * time.Second

func TestLossyKeepsTheLatest(t *testing.T) {
	for _, tc := range []struct {
		name string
		cap  int
		sent []int
		want []int
	}{
		{"room for all", 4, []int{1, 2, 3}, []int{1, 2, 3}},
		{"full: the oldest go", 3, []int{1, 2, 3, 4, 5}, []int{3, 4, 5}},
		{"one slot: the latest only", 1, []int{1, 2, 3}, []int{3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := make(lossy[int], tc.cap)
			for _, v := range tc.sent {
				ch.send(v) // never blocks: there is no reader
			}
			close(ch)
			var got []int
			for v := range ch {
				got = append(got, v)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLossyDrain(t *testing.T) {
	ch := make(lossy[int], 3)
	ch.send(1)
	ch.send(2)
	ch.drain()
	close(ch)
	if v, ok := <-ch; ok {
		t.Fatalf("after drain: got %d, want a closed channel", v)
	}
}

// TestLossyConcurrentReaders checks that a sender racing readers that take
// values between its attempts never blocks and that the last value sent is
// the last one left.
func TestLossyConcurrentReaders(t *testing.T) {
	ch := make(lossy[int], 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ch:
				case <-stop:
					return
				}
			}
		}()
	}
	for i := range 10000 {
		ch.send(i)
	}
	close(stop)
	wg.Wait()
	ch.send(-1)
	if got := <-ch; got != -1 {
		t.Fatalf("got %d, want the last value sent, -1", got)
	}
}

// testLifeClient is the part of a Client the lifecycle core uses.
func testLifeClient(t *testing.T) *Client {
	t.Helper()
	c := &Client{}
	c.life, c.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		c.cancel()
		c.wg.Wait()
	})
	return c
}

// testHandle is a handle without a channel, adopting the core as a Lock or a
// Permit would.
type testHandle struct {
	lifetime
	order []string
	mu    sync.Mutex
}

func (h *testHandle) note(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.order = append(h.order, s)
}

func newTestHandle(t *testing.T, ctx context.Context, c *Client) *testHandle {
	t.Helper()
	h := &testHandle{}
	h.closing = func() {
		if h.cause() != nil {
			t.Error("Done closed before the closing step ran")
		}
		h.note("closing")
	}
	h.final = func() {
		select {
		case <-h.done:
		default:
			t.Error("the final step ran before Done was closed")
		}
		h.note("final")
	}
	if !h.begin(ctx, c, ErrClosed) {
		t.Fatal("begin failed on an open client")
	}
	h.spawn(func() {
		<-h.ctx.Done()
		h.note("producer returned")
	})
	h.arm()
	return h
}

func waitDone(t *testing.T, h *testHandle) {
	t.Helper()
	select {
	case <-h.done:
	case <-time.After(lifeWait):
		t.Fatalf("handle did not end within %v", lifeWait)
	}
}

func TestLifetimeEndings(t *testing.T) {
	errFailed := errors.New("producer failed")
	for _, tc := range []struct {
		name string
		end  func(h *testHandle, cancelCtx context.CancelFunc, c *Client)
		want error
	}{
		{"Close", func(h *testHandle, _ context.CancelFunc, _ *Client) { _ = h.close() }, ErrClosed},
		{"ctx ends", func(_ *testHandle, cancel context.CancelFunc, _ *Client) { cancel() }, context.Canceled},
		{"producer fails", func(h *testHandle, _ context.CancelFunc, _ *Client) { h.cancel(errFailed) }, errFailed},
		{"client closes", func(_ *testHandle, _ context.CancelFunc, c *Client) { c.cancel() }, ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testLifeClient(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			h := newTestHandle(t, ctx, c)
			if err := h.cause(); err != nil {
				t.Fatalf("Err before the end: got %v, want nil", err)
			}
			tc.end(h, cancel, c)
			waitDone(t, h)
			if err := h.cause(); !errors.Is(err, tc.want) {
				t.Fatalf("Err: got %v, want %v", err, tc.want)
			}
			_ = h.close() // idempotent, and waits for the final step
			want := []string{"producer returned", "closing", "final"}
			h.mu.Lock()
			defer h.mu.Unlock()
			if !slices.Equal(h.order, want) {
				t.Fatalf("order: got %v, want %v", h.order, want)
			}
		})
	}
}

func TestLifetimeClosedClient(t *testing.T) {
	c := testLifeClient(t)
	c.cancel()
	h := &testHandle{}
	if h.begin(context.Background(), c, ErrClosed) {
		t.Fatal("begin succeeded on a closed client")
	}
	h.ended(ErrClosed)
	if err := h.cause(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Err: got %v, want ErrClosed", err)
	}
	if err := h.close(); err != nil {
		t.Fatalf("Close of an ended handle: got %v, want nil", err)
	}
}

// TestLifetimeEndingRunsFirst checks that the ending hook has run by the
// time anyone sees the context cancelled, whichever way it ends, and once.
func TestLifetimeEndingRunsFirst(t *testing.T) {
	c := testLifeClient(t)
	h := &testHandle{}
	var ended int
	h.ending = func() { ended++ }
	if !h.begin(context.Background(), c, ErrClosed) {
		t.Fatal("begin failed on an open client")
	}
	seen := make(chan int, 1)
	h.spawn(func() {
		<-h.ctx.Done()
		seen <- ended
	})
	h.arm()
	h.cancel(errors.New("first"))
	_ = h.close()
	if got := <-seen; got != 1 {
		t.Fatalf("ending runs when the context is seen cancelled: got %d, want 1", got)
	}
	if ended != 1 {
		t.Fatalf("ending ran %d times, want once", ended)
	}
	if err := h.cause(); err == nil || err.Error() != "first" {
		t.Fatalf("Err: got %v, want the first cause", err)
	}
}
