// Package backoff computes jittered exponential delays for the retry loops of
// the watch, lease and election engines.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff yields growing, jittered delays between Min and Max. The zero value
// is not usable; build one with New. A Backoff is not safe for concurrent use:
// each retry loop owns its own.
type Backoff struct {
	min, max time.Duration
	next     time.Duration
}

// New returns a Backoff whose first delay is about min and which never waits
// longer than max.
func New(min, max time.Duration) *Backoff {
	if min <= 0 {
		min = time.Millisecond
	}
	if max < min {
		max = min
	}
	return &Backoff{min: min, max: max, next: min}
}

// Next returns the delay to wait before the next attempt: the current step with
// up to ±25% jitter, so that many clients retrying after the same outage do not
// arrive together. The step doubles on every call up to max.
func (b *Backoff) Next() time.Duration {
	d := b.next
	b.next *= 2
	if b.next > b.max {
		b.next = b.max
	}
	j := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + j
}

// Reset makes the next delay the minimum again, after an attempt succeeded.
func (b *Backoff) Reset() { b.next = b.min }

// Wait sleeps for Next() or until ctx ends, and reports whether the full delay
// elapsed.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep waits for d or until ctx ends, and reports whether d elapsed (with
// d <= 0: whether ctx is still live).
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
