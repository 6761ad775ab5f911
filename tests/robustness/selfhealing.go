package robustness

// The ephemeral owners and the service instances both own a self-healing
// key: they update it at their own pace while faults run, and at the end
// expect it back with one of the values it may hold, under its lease.

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// candidates are the values a self-healing key may hold at the end of a
// schedule: the last one whose write succeeded, then every one given since
// (a failed write keeps its value for the next restore, which may or may not
// happen).
type candidates struct {
	mu sync.Mutex
	vs []string
}

func newCandidates(first string) *candidates { return &candidates{vs: []string{first}} }

// get returns a copy of the candidates, oldest first: keepUpdating goes on
// appending to its own slice while the caller reads.
func (c *candidates) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.vs)
}

// keepUpdating writes name.1, name.2, ... with write, one every lo to hi
// (the workload's pace, drawn from rng), until ctx ends, keeping c up to
// date and noting each failed write under tag for who.
func keepUpdating(ctx context.Context, rec *Recorder, rng *RandSource, lo, hi time.Duration,
	tag, who, name string, c *candidates, write func(context.Context, string) error) {
	for seq := 1; ; seq++ {
		t := time.NewTimer(rng.Duration(lo, hi))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		v := fmt.Sprintf("%s.%d", name, seq)
		c.mu.Lock()
		c.vs = append(c.vs, v)
		c.mu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		err := write(wctx, v)
		cancel()
		if err != nil {
			rec.Note(tag, "%s update %q: %v", who, v, err)
			continue
		}
		c.mu.Lock()
		c.vs = []string{v}
		c.mu.Unlock()
	}
}

// awaitKey waits until the key full, read directly from the cluster, holds
// a value that accept takes under the lease it names, or until ctx or stop
// ends. It returns whether it did and what it read last: the value and
// lease, "absent", or the read's error.
func awaitKey(ctx context.Context, run *Run, full string, stop <-chan struct{},
	lease func() int64, accept func([]byte) bool) (string, bool) {
	got := "not read"
	ok := waitFor(ctx, func() bool {
		kv, err := run.get(ctx, full)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				got = err.Error()
			}
			return false
		case kv == nil:
			got = "absent"
			return false
		}
		got = fmt.Sprintf("%q under lease %x", kv.Value, kv.Lease)
		return accept(kv.Value) && kv.Lease == lease()
	}, stop)
	return got, ok
}
