package watch

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// chanSink hands events to a channel, as the root package's typed sink
// does, without the decoding.
type chanSink struct{ ch chan *Event }

func (k chanSink) Room() int    { return cap(k.ch) - len(k.ch) }
func (k chanSink) Waiting() int { return len(k.ch) }

func (k chanSink) Put(evs []*Event) {
	for _, e := range evs {
		k.ch <- e
	}
}

func (k chanSink) Send(ctx context.Context, evs []*Event) bool {
	for _, e := range evs {
		select {
		case k.ch <- e:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	return ds[int(float64(len(ds)-1)*p)]
}

// fanReaders is n goroutines, each reading its own channel as a user's
// reader would, and recording when the current round's event reached it.
type fanReaders struct {
	chs   []chan *Event
	start atomic.Int64 // UnixNano of the round's start
	count atomic.Int64
	all   chan struct{}
	slots []paddedInt64
}

// paddedInt64 fills a cache line, so that readers on different cores do not
// write to the same line.
type paddedInt64 struct {
	atomic.Int64
	_ [56]byte
}

func newFanReaders(b *testing.B, n int) *fanReaders {
	r := &fanReaders{all: make(chan struct{}, 1), slots: make([]paddedInt64, n)}
	for i := range n {
		ch := make(chan *Event, 16)
		r.chs = append(r.chs, ch)
		go func() {
			for range ch {
				r.slots[i].Store(time.Now().UnixNano() - r.start.Load())
				if r.count.Add(1) == int64(n) {
					r.all <- struct{}{}
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, ch := range r.chs {
			close(ch)
		}
	})
	return r
}

// round runs send, which hands one event to every reader, and returns the
// time send took and the time until the last reader had the event.
func (r *fanReaders) round(send func()) (handoff, last time.Duration) {
	r.start.Store(time.Now().UnixNano())
	send()
	handoff = time.Duration(time.Now().UnixNano() - r.start.Load())
	<-r.all
	r.count.Store(0)
	var m int64
	for i := range r.slots {
		m = max(m, r.slots[i].Load())
	}
	return handoff, time.Duration(m)
}

// BenchmarkFanOutEngine measures the watch engine's fan-out of one event to
// 1,000 hooked subscribers in memory, with no etcd and no decoding in the way, each
// subscriber read by its own goroutine as a user's would be. Round by round
// it alternates with the floor the Go runtime sets: one goroutine sending
// the event on 1,000 plain channels to 1,000 readers. It reports, for both,
// the hand-off (until every channel holds the event) and the time until the
// last reader has it, and the ratio of the latter's 99th percentiles.
func BenchmarkFanOutEngine(b *testing.B) {
	const n = 1000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := NewHub(Config{Spawn: func(f func()) bool { go f(); return true }})
	t := Target{Key: "k"}
	f := &feed{h: h, target: t, up: true, next: 1, state: stateOfNames(nil)}
	engine := newFanReaders(b, n)
	for _, ch := range engine.chs {
		s := h.NewSub(ctx, t, Options{After: -1, Buffer: 1024})
		s.SetSink(chanSink{ch}, nil)
		s.feed, s.mode, s.positioned, s.enq, s.from = f, subHooked, true, 1, 1
		s.slot = len(f.members)
		f.members = append(f.members, s)
	}
	plain := newFanReaders(b, n)

	var hand, last, plainHand, plainLast []time.Duration
	rev := int64(1)
	b.ReportAllocs()
	for b.Loop() {
		re := &Event{Type: Put, Value: []byte("v"), Rev: rev}
		hd, l := engine.round(func() { f.deliver([]Batch{{Events: []*Event{re}, Next: rev + 1}}) })
		hand, last = append(hand, hd), append(last, l)
		hd, l = plain.round(func() {
			for _, ch := range plain.chs {
				ch <- &Event{Type: Put, Value: []byte("v"), Rev: rev}
			}
		})
		plainHand, plainLast = append(plainHand, hd), append(plainLast, l)
		rev++
	}
	for _, m := range []struct {
		unit string
		ds   []time.Duration
	}{{"handoff", hand}, {"last-reader", last}, {"plain-handoff", plainHand}, {"plain-last-reader", plainLast}} {
		b.ReportMetric(float64(percentile(m.ds, 0.5).Microseconds()), m.unit+"-p50-µs")
		b.ReportMetric(float64(percentile(m.ds, 0.99).Microseconds()), m.unit+"-p99-µs")
	}
	b.ReportMetric(float64(percentile(last, 0.99))/float64(percentile(plainLast, 0.99)), "last-reader-p99/plain")
}
