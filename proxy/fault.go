package proxy

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Direction selects which way through the proxy a fault acts on.
type Direction int

const (
	// Upstream is the client-to-server direction: bytes the client writes.
	Upstream Direction = iota
	// Downstream is the server-to-client direction: bytes the server writes.
	Downstream
	// Both is Upstream and Downstream at once.
	Both
)

// String returns "upstream", "downstream" or "both".
func (d Direction) String() string {
	switch d {
	case Upstream:
		return "upstream"
	case Downstream:
		return "downstream"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// each returns the single directions d stands for. It panics on a value that
// is not one of the constants, which is a bug in the caller.
func (d Direction) each() []Direction {
	switch d {
	case Upstream, Downstream:
		return []Direction{d}
	case Both:
		return []Direction{Upstream, Downstream}
	}
	panic(fmt.Sprintf("etcdkit: proxy: invalid %v", d))
}

// dirState is the fault configuration of one direction, shared by every
// connection. It is guarded by Proxy.mu.
type dirState struct {
	paused     bool
	blackholed bool
	latency    time.Duration
	jitter     time.Duration
	bucket     bucket
}

// Blackhole silences direction d on every connection, current and future:
// the proxy keeps the connections open, reads and drops every byte sent that
// way, and forwards nothing, not even a close. The sender's writes succeed;
// the receiver sees neither data nor EOF. Blackhole does not block. If d is
// also paused, pause wins: bytes wait unread instead of being dropped.
// Blackhole panics if d is not a Direction constant.
func (p *Proxy) Blackhole(d Direction) {
	p.update(d, func(s *dirState) { s.blackholed = true })
}

// Unblackhole heals every blackholed direction. A connection that had any
// byte dropped is closed now (FIN, or RST where the kernel still holds
// unread input), because its stream has a hole in it and must not resume; a
// connection that lost nothing keeps flowing.
func (p *Proxy) Unblackhole() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	for i := range p.dirs {
		p.dirs[i].blackholed = false
	}
	// A conn marked lost never delivers again (see conn.gate), so closing it
	// after unlocking cannot let a corrupted stream resume in between.
	var cut []*conn
	for c := range p.conns {
		if c.lost[Upstream] || c.lost[Downstream] {
			cut = append(cut, c)
		}
	}
	p.notifyLocked()
	p.mu.Unlock()
	for _, c := range cut {
		c.close(false)
	}
}

// Pause stops forwarding in direction d without losing anything: the proxy
// stops reading, so TCP backpressure eventually blocks the sender's writes,
// and the receiver sees neither data nor EOF. Chunks already read wait in the
// proxy. Pause does not block. Pause panics if d is not a Direction constant.
func (p *Proxy) Pause(d Direction) {
	p.update(d, func(s *dirState) { s.paused = true })
}

// Resume undoes Pause in both directions: everything held is delivered
// intact and in order, followed by anything sent since.
func (p *Proxy) Resume() {
	p.update(Both, func(s *dirState) { s.paused = false })
}

// SetLatency delays every chunk forwarded in direction d by delay plus a
// random extra in [0, jitter), measured from when the proxy read it. It is a
// delay line: chunks keep their order (a late one holds back those behind it)
// and the proxy goes on reading while they wait, with up to 512 KiB in flight
// per connection and direction, so a stream is delayed rather than slowed.
// Zero delay and jitter remove it; chunks already read keep their delay.
// Negative values count as zero. SetLatency does not block; it panics if d
// is not a Direction constant.
func (p *Proxy) SetLatency(d Direction, delay, jitter time.Duration) {
	p.update(d, func(s *dirState) {
		s.latency, s.jitter = max(delay, 0), max(jitter, 0)
	})
}

// SetBandwidth limits direction d to bytesPerSec, shared by all connections,
// with a token bucket whose burst is a twentieth of a second's worth. Zero
// (or a negative value) removes the limit, releasing writers that wait for
// tokens. SetBandwidth panics if d is not a Direction constant.
func (p *Proxy) SetBandwidth(d Direction, bytesPerSec int) {
	now := time.Now()
	p.update(d, func(s *dirState) { s.bucket.set(max(bytesPerSec, 0), now) })
}

func (p *Proxy) update(d Direction, f func(*dirState)) {
	dirs := d.each()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for _, d := range dirs {
		f(&p.dirs[d])
	}
	p.notifyLocked()
}

// delayLocked returns how long a chunk read now in direction d must wait.
func (p *Proxy) delayLocked(d Direction) time.Duration {
	s := &p.dirs[d]
	delay := s.latency
	if s.jitter > 0 {
		delay += rand.N(s.jitter)
	}
	return delay
}

// bucket is a token bucket. Tokens may go negative: a writer takes what it
// needs at once and then waits off the debt, so concurrent writers queue up
// fairly and the long-run rate is exact whatever the timer slack.
type bucket struct {
	rate   float64 // bytes per second; 0 means unlimited
	burst  float64
	tokens float64
	last   time.Time
}

func (b *bucket) set(bytesPerSec int, now time.Time) {
	b.rate = float64(bytesPerSec)
	b.burst = max(b.rate/20, 1)
	b.tokens = b.burst
	b.last = now
}

// take removes up to limit bytes' worth of tokens, at most one burst, and
// returns how many bytes it took and how long to wait before sending them.
func (b *bucket) take(limit int, now time.Time) (int, time.Duration) {
	if b.rate == 0 {
		return limit, 0
	}
	n := min(limit, int(b.burst))
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return n, 0
	}
	return n, time.Duration(-b.tokens / b.rate * float64(time.Second))
}
