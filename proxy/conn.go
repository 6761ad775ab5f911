package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
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
// and, per direction, a reader goroutine feeding a writer goroutine through a
// queue of chunks.
type conn struct {
	p      *Proxy
	client *net.TCPConn
	server *net.TCPConn
	done   chan struct{} // closed by close
	once   sync.Once

	// lost marks a direction that dropped a byte: its stream has a hole, so
	// it never delivers again and Unblackhole closes the conn. Guarded by
	// p.mu.
	lost [2]bool
}

// chunk is bytes read from one socket, due for delivery at due (zero: now).
type chunk struct {
	b   []byte
	due time.Time
}

func newConn(p *Proxy, client, server *net.TCPConn) *conn {
	return &conn{p: p, client: client, server: server, done: make(chan struct{})}
}

// close closes both sockets, with RST if reset, and wakes every goroutine of
// the conn. Only the first call has an effect.
func (c *conn) close(reset bool) {
	c.once.Do(func() {
		if reset {
			c.client.SetLinger(0)
			c.server.SetLinger(0)
		}
		c.client.Close()
		c.server.Close()
		close(c.done)
	})
}

// run forwards both directions and returns when both are finished, with
// both sockets closed.
func (c *conn) run() {
	var wg sync.WaitGroup
	wg.Go(func() { c.pump(Upstream, c.client, c.server) })
	c.pump(Downstream, c.server, c.client)
	wg.Wait()
	c.close(false)
}

// pump forwards one direction until src's EOF has been passed on to dst or
// the conn is closed.
func (c *conn) pump(d Direction, src, dst *net.TCPConn) {
	q := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Go(func() { c.read(d, src, q) })
	c.write(d, dst, q)
	wg.Wait()
}

// read moves bytes from src into q, stamping each chunk with its due time.
// It closes q on EOF; any other error closes the conn, passing a reset on.
func (c *conn) read(d Direction, src *net.TCPConn, q chan<- chunk) {
	defer close(q)
	p := c.p
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
				c.close(isReset(err))
			}
			return
		}
	}
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

// write delivers chunks from q to dst in order, applying latency, bandwidth,
// pause and blackhole, and passes src's EOF on as a half-close.
func (c *conn) write(d Direction, dst *net.TCPConn, q <-chan chunk) {
	p := c.p
	for {
		var ch chunk
		var ok bool
		select {
		case ch, ok = <-q:
		case <-c.done:
			return
		}
		if !ok {
			if c.holdFIN(d) {
				dst.CloseWrite()
			}
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
			if _, err := dst.Write(piece); err != nil {
				c.close(isReset(err))
				return
			}
			p.delivered[d].Add(int64(n))
		}
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

// holdFIN waits until src's EOF may be passed on in direction d: a paused
// direction holds it like any byte, and a blackholed one carries no FIN
// either. It reports false, so that no FIN is sent, if the conn closed or
// the stream in d was cut.
func (c *conn) holdFIN(d Direction) bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	held := func() bool { return p.dirs[d].paused || p.dirs[d].blackholed }
	return p.waitLocked(held, c.done) && !c.lost[d]
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

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}
