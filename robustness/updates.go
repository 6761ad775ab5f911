package robustness

import (
	"context"
	"fmt"
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

// get returns the candidates, oldest first.
func (c *candidates) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.vs
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
