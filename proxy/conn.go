package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

const (
	// chunkSize is the most one read takes from a socket.
	chunkSize = 32 << 10
	// queueLen is how many chunks a direction holds between its reader and
	// its writer; with latency set it is the depth of the delay line.
	queueLen = 16
)

// conn is one forwarded connection: the client's socket, the target's socket
// once dialled and, per direction, a reader goroutine feeding a writer
// goroutine through a queue of chunks.
//
// Whatever one peer does reaches the other only through its direction, in
// order and under that direction's faults: its bytes, its FIN and its reset
// alike. The target is dialled when the first thing the client sends is
// due there, as a SYN crossing the link would be.
type conn struct {
	p      *Proxy
	client *net.TCPConn
	ctx    context.Context // cancelled by close; bounds the dial
	cancel context.CancelFunc
	done   <-chan struct{} // ctx.Done()
	once   sync.Once
	// dialled is closed once the dial of the target has been tried, by the
	// upstream writer: then server is set, or the target is unreachable.
	dialled chan struct{}

	// The fields below are guarded by p.mu.

	// server is the target's socket, nil until dialled.
	server *net.TCPConn
	// closed is set by close, so that a dial finishing later drops its
	// socket.
	closed bool
	// lost marks a direction that dropped a byte: its stream has a hole, so
	// it never delivers again and Unblackhole closes the conn.
	lost [2]bool
	// reset marks a direction whose stream ends with a reset instead of a
	// FIN: its sender reset, or the receiver of the other direction is gone
	// (a real one would answer the bytes it gets with RST).
	reset [2]bool
	// ended marks a direction whose end has been passed on.
	ended [2]bool
}

// chunk is bytes read from one socket, due for delivery at due (zero: now).
type chunk struct {
	b   []byte
	due time.Time
}

func newConn(p *Proxy, client *net.TCPConn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{p: p, client: client, ctx: ctx, cancel: cancel, done: ctx.Done(), dialled: make(chan struct{})}
}

// close closes both sockets, with RST if reset, and wakes every goroutine of
// the conn. Only the first call has an effect. The caller must not hold p.mu.
func (c *conn) close(reset bool) {
	c.once.Do(func() {
		p := c.p
		p.mu.Lock()
		c.closed = true
		server := c.server
		p.mu.Unlock()
		if reset {
			c.client.SetLinger(0)
			if server != nil {
				server.SetLinger(0)
			}
		}
		c.client.Close()
		if server != nil {
			server.Close()
		}
		c.cancel()
	})
}

// run forwards both directions and returns when both are finished, with
// both sockets closed.
func (c *conn) run() {
	var wg sync.WaitGroup
	wg.Go(func() { c.pump(Upstream) })
	c.pump(Downstream)
	wg.Wait()
	c.close(false)
}

// pump forwards one direction until its end has been passed on or the conn
// is closed.
func (c *conn) pump(d Direction) {
	q := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Go(func() { c.read(d, q) })
	c.write(d, q)
	wg.Wait()
}

// read moves bytes from d's sender into q, stamping each chunk with its due
// time. It closes q when the sender's stream ends, marking a reset as such.
func (c *conn) read(d Direction, q chan<- chunk) {
	defer close(q)
	p := c.p
	src := c.client
	if d == Downstream {
		if src = c.target(); src == nil {
			return
		}
	}
	buf := make([]byte, chunkSize)
	for {
		// Not reading while paused is what builds backpressure at the sender.
		p.mu.Lock()
		ok := p.waitLocked(func() bool { return p.dirs[d].paused }, c.done)
		p.mu.Unlock()
		if !ok {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			ch, keep := c.admit(d, buf[:n])
			if keep {
				select {
				case q <- ch:
				case <-c.done:
					return
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.markReset(d)
			}
			return
		}
	}
}

// target waits for the upstream writer to dial the target and returns its
// socket, or nil if the target is unreachable or the conn closed first.
func (c *conn) target() *net.TCPConn {
	select {
	case <-c.dialled:
	case <-c.done:
		return nil
	}
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.server
}

// admit turns freshly read bytes into a chunk, or drops them if the
// direction is blackholed (and not paused, since pause wins).
func (c *conn) admit(d Direction, b []byte) (chunk, bool) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &p.dirs[d]
	if !s.paused && (s.blackholed || c.lost[d]) {
		c.dropLocked(d, len(b))
		return chunk{}, false
	}
	ch := chunk{b: bytes.Clone(b)}
	if delay := p.delayLocked(d); delay > 0 {
		ch.due = time.Now().Add(delay)
	}
	return ch, true
}

func (c *conn) dropLocked(d Direction, n int) {
	c.lost[d] = true
	c.p.dropped.Add(int64(n))
}

func (c *conn) markReset(d Direction) {
	c.p.mu.Lock()
	c.reset[d] = true
	c.p.mu.Unlock()
}

// write delivers chunks from q to d's receiver in order, applying latency,
// bandwidth, pause and blackhole, and then passes the sender's end on. The
// upstream writer dials the target when its first byte or the client's FIN
// is due there.
func (c *conn) write(d Direction, q <-chan chunk) {
	var dst *net.TCPConn
	if d == Downstream {
		dst = c.client
	}
	for {
		var ch chunk
		var ok bool
		select {
		case ch, ok = <-q:
		case <-c.done:
			return
		}
		if !ok {
			c.end(d, dst)
			return
		}
		if !c.sleepUntil(ch.due) {
			return
		}
		for b := ch.b; len(b) > 0; {
			n, ok := c.throttle(d, len(b))
			if !ok {
				return
			}
			piece := b[:n]
			b = b[n:]
			deliver, ok := c.gate(d, n)
			if !ok {
				return
			}
			if !deliver {
				continue
			}
			if dst == nil {
				if dst = c.dial(); dst == nil {
					return
				}
			}
			if _, err := dst.Write(piece); err != nil {
				c.receiverGone(d)
				return
			}
			c.p.delivered[d].Add(int64(n))
		}
	}
}

// dial connects to the target on behalf of the upstream writer. It returns
// nil if the conn closed meanwhile, or if the target is unreachable: then
// the refusal travels back to the client as a reset, as a refused SYN
// would.
func (c *conn) dial() *net.TCPConn {
	p := c.p
	defer close(c.dialled)
	ctx, cancel := context.WithTimeout(c.ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", p.target)
	p.mu.Lock()
	closed := c.closed
	if err == nil && !closed {
		c.server = nc.(*net.TCPConn)
	}
	if err != nil && !closed {
		c.reset[Downstream] = true
	}
	p.mu.Unlock()
	switch {
	case err != nil:
		if !closed {
			p.dialErrors.Add(1)
		}
		return nil
	case closed:
		nc.Close()
		return nil
	}
	return nc.(*net.TCPConn)
}

// end passes the end of d's stream on once d's faults let it through: a
// reset aborts the conn, a FIN half-closes the receiver's side. A client
// that half-closes before sending anything gets the target dialled first,
// so the target sees the connection end as it would have.
func (c *conn) end(d Direction, dst *net.TCPConn) {
	reset, ok := c.holdEnd(d)
	switch {
	case !ok:
	case reset:
		c.close(true)
	case dst != nil:
		dst.CloseWrite()
	default:
		if dst = c.dial(); dst != nil {
			dst.CloseWrite()
		}
	}
}

// receiverGone handles a failed write in direction d: d's receiver is gone
// (it reset, or it had closed and answered more bytes with RST), so a reset
// travels back the other way. If that way has not ended yet, its reader
// meets the dead socket and its writer passes the reset on after what it
// holds; if it has, the reset follows its FIN under its faults.
func (c *conn) receiverGone(d Direction) {
	back := Upstream
	if d == Upstream {
		back = Downstream
	}
	p := c.p
	p.mu.Lock()
	c.reset[back] = true
	ended := c.ended[back]
	p.mu.Unlock()
	if !ended {
		return
	}
	if _, ok := c.holdEnd(back); ok {
		c.close(true)
	}
}

// gate waits while d is paused, then reports whether n bytes may be
// delivered or must be dropped. ok is false once the conn is closed.
func (c *conn) gate(d Direction, n int) (deliver, ok bool) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.waitLocked(func() bool { return p.dirs[d].paused }, c.done) {
		return false, false
	}
	if p.dirs[d].blackholed || c.lost[d] {
		c.dropLocked(d, n)
		return false, true
	}
	return true, true
}

// holdEnd waits until the end of d's stream may be passed on: a paused
// direction holds it like any byte, and a blackholed one carries neither a
// FIN nor a reset until it heals. It reports whether the end is a reset,
// and ok false, so that nothing is passed on, if the conn closed or the
// stream in d was cut.
func (c *conn) holdEnd(d Direction) (reset, ok bool) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	held := func() bool { return p.dirs[d].paused || p.dirs[d].blackholed }
	if !p.waitLocked(held, c.done) || c.lost[d] {
		return false, false
	}
	c.ended[d] = true
	return c.reset[d], true
}

// sleepUntil waits for due; it returns false if the conn closed first.
func (c *conn) sleepUntil(due time.Time) bool {
	wait := time.Until(due)
	if due.IsZero() || wait <= 0 {
		return true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.done:
		return false
	}
}

// throttle takes tokens for up to limit bytes from d's bucket and waits until
// they may be sent. It returns early if the limit is removed meanwhile, and
// ok false if the conn closed.
func (c *conn) throttle(d Direction, limit int) (n int, ok bool) {
	p := c.p
	p.mu.Lock()
	n, wait := p.dirs[d].bucket.take(limit, time.Now())
	changed := p.changed
	p.mu.Unlock()
	if wait <= 0 {
		return n, true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return n, true
		case <-c.done:
			return 0, false
		case <-changed:
			p.mu.Lock()
			unlimited := p.dirs[d].bucket.rate == 0
			changed = p.changed
			p.mu.Unlock()
			if unlimited {
				return n, true
			}
		}
	}
}
