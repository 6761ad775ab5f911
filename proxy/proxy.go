package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrClosed is returned by [Proxy.Start] after [Proxy.Close].
var ErrClosed = errors.New("etcdkit: proxy closed")

const (
	// dialTimeout bounds the dial to the target for one connection.
	dialTimeout = 5 * time.Second
	// rebindTimeout bounds how long Start retries while the old address is
	// still in use.
	rebindTimeout = 3 * time.Second
)

// Proxy is a TCP proxy that forwards connections from [Proxy.Addr] to
// [Proxy.Target] and injects faults on demand. Create it with [New]; the zero
// value is not usable. All methods are safe for concurrent use. After
// [Proxy.Close], fault methods are no-ops and [Proxy.Start] returns ErrClosed.
type Proxy struct {
	target string
	addr   string

	// life serialises Start, Stop and Close so that two of them never race to
	// bind or close the listener.
	life sync.Mutex

	mu           sync.Mutex
	ln           *listener // nil while stopped
	closed       bool
	conns        map[*conn]struct{}
	pending      int
	dirs         [2]dirState
	acceptPaused bool
	// changed is closed and replaced whenever a fault changes, waking every
	// goroutine waiting for one.
	changed chan struct{}

	accepted   atomic.Int64
	dialErrors atomic.Int64
	delivered  [2]atomic.Int64
	dropped    atomic.Int64

	wg sync.WaitGroup
}

// listener is one generation of the listening socket, from Start to Stop.
// Cancelling ctx abandons connections still waiting to be forwarded.
type listener struct {
	ln     *net.TCPListener
	ctx    context.Context
	cancel context.CancelFunc
}

// Stats is a snapshot of a proxy's connections and traffic. The fields are
// read one by one, so a snapshot taken during traffic may be off by a chunk.
type Stats struct {
	// Conns is the number of open connection pairs (client and target both
	// connected): the connections the target sees.
	Conns int
	// Pending is the number of open accepted connections not connected to
	// the target: held by PauseAccept, waiting for the client's first bytes
	// (or FIN) to be due at the target, or dialling it.
	Pending int
	// Accepted counts every connection accepted since New.
	Accepted int64
	// DialErrors counts connections ended because the target could not be
	// dialled.
	DialErrors int64
	// BytesUp and BytesDown count bytes delivered to the target and to the
	// client.
	BytesUp, BytesDown int64
	// Dropped counts bytes discarded by Blackhole, in either direction.
	Dropped int64
}

// New starts a proxy listening on 127.0.0.1 on a free port that forwards
// every accepted connection to target (host:port), dialling target for a
// connection when the client's first bytes (or its FIN) are due there. New
// does not dial target; an unreachable target shows up as connections
// reset once the client sends something. The caller must call
// [Proxy.Close].
func New(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("etcdkit: proxy target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("etcdkit: proxy listen: %w", err)
	}
	p := &Proxy{
		target:  target,
		addr:    ln.Addr().String(),
		conns:   make(map[*conn]struct{}),
		changed: make(chan struct{}),
	}
	p.serve(ln.(*net.TCPListener))
	return p, nil
}

// Addr returns the host:port clients dial. It stays the same across Stop and
// Start.
func (p *Proxy) Addr() string { return p.addr }

// Target returns the address connections are forwarded to.
func (p *Proxy) Target() string { return p.target }

// Stop closes the listener, so new dials are refused, and closes every
// connection normally (FIN). It returns once the sockets are closed; the
// connections' goroutines finish shortly after. Stopping a stopped proxy
// does nothing. Faults stay set across Stop and Start.
func (p *Proxy) Stop() {
	p.life.Lock()
	defer p.life.Unlock()
	p.mu.Lock()
	l := p.detachLocked()
	conns := p.connsLocked()
	p.mu.Unlock()
	if l != nil {
		l.ln.Close()
	}
	for _, c := range conns {
		c.close(false)
	}
}

// Start listens again on Addr after Stop, retrying for a few seconds while
// the address is still in use. Starting a started proxy does nothing and
// returns nil; after Close it returns ErrClosed.
func (p *Proxy) Start() error {
	p.life.Lock()
	defer p.life.Unlock()
	p.mu.Lock()
	closed, started := p.closed, p.ln != nil
	p.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if started {
		return nil
	}
	ln, err := listenRetry(p.addr)
	if err != nil {
		return fmt.Errorf("etcdkit: proxy restart on %s: %w", p.addr, err)
	}
	p.serve(ln)
	return nil
}

// CloseConns closes every connection normally (FIN) and keeps listening.
func (p *Proxy) CloseConns() {
	for _, c := range p.snapshot() {
		c.close(false)
	}
}

// ResetConns aborts every connection with RST: the client's socket and,
// where it was dialled, the target's socket are closed with SO_LINGER 0, so
// both peers see "connection reset by peer". The proxy keeps listening.
func (p *Proxy) ResetConns() {
	for _, c := range p.snapshot() {
		c.close(true)
	}
}

// PauseAccept holds new connections: they complete the TCP handshake (the
// kernel accepts them) but are not forwarded until ResumeAccept, so the
// proxy reads nothing from them and the target never sees them. A dial that
// completed just before PauseAccept but was not yet forwarded is held too.
// Existing connections keep flowing. Stop and Close close held connections.
func (p *Proxy) PauseAccept() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.acceptPaused = true
	p.notifyLocked()
}

// ResumeAccept forwards the connections held by PauseAccept, and every new
// one, to the target.
func (p *Proxy) ResumeAccept() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.acceptPaused = false
	p.notifyLocked()
}

// Stats returns a snapshot of the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	conns, pending := 0, p.pending
	for c := range p.conns {
		if c.server != nil {
			conns++
		} else {
			pending++
		}
	}
	p.mu.Unlock()
	return Stats{
		Conns:      conns,
		Pending:    pending,
		Accepted:   p.accepted.Load(),
		DialErrors: p.dialErrors.Load(),
		BytesUp:    p.delivered[Upstream].Load(),
		BytesDown:  p.delivered[Downstream].Load(),
		Dropped:    p.dropped.Load(),
	}
}

// Close closes the listener and every connection (FIN) and waits for every
// goroutine the proxy started to return. It is idempotent and always returns
// nil.
func (p *Proxy) Close() error {
	p.life.Lock()
	p.mu.Lock()
	p.closed = true
	l := p.detachLocked()
	conns := p.connsLocked()
	p.notifyLocked()
	p.mu.Unlock()
	p.life.Unlock()
	if l != nil {
		l.ln.Close()
	}
	for _, c := range conns {
		c.close(false)
	}
	p.wg.Wait()
	return nil
}

// serve installs ln as the current listener and starts accepting on it.
func (p *Proxy) serve(ln *net.TCPListener) {
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{ln: ln, ctx: ctx, cancel: cancel}
	p.mu.Lock()
	p.ln = l
	p.mu.Unlock()
	p.wg.Go(func() { p.accept(l) })
}

// detachLocked removes the current listener and abandons the connections it
// has not forwarded yet. The caller closes the returned listener.
func (p *Proxy) detachLocked() *listener {
	l := p.ln
	p.ln = nil
	if l != nil {
		l.cancel()
	}
	return l
}

func (p *Proxy) accept(l *listener) {
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure such as EMFILE: back off rather than spin.
			t := time.NewTimer(10 * time.Millisecond)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		p.accepted.Add(1)
		p.wg.Go(func() { p.forward(l, c) })
	}
}

// forward waits out PauseAccept and runs the connection until both
// directions are done. The target is dialled later, by the conn itself.
func (p *Proxy) forward(l *listener, client *net.TCPConn) {
	p.mu.Lock()
	p.pending++
	ok := p.waitLocked(func() bool { return p.acceptPaused }, l.ctx.Done())
	p.pending--
	// Registration and the Stop check share one critical section, so Stop
	// either sees this conn in conns or this conn sees the listener
	// cancelled.
	if !ok {
		p.mu.Unlock()
		client.Close()
		return
	}
	c := newConn(p, client)
	p.conns[c] = struct{}{}
	p.mu.Unlock()

	c.run()

	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) snapshot() []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.connsLocked()
}

func (p *Proxy) connsLocked() []*conn {
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

// notifyLocked wakes every goroutine waiting for a fault to change.
func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// waitLocked blocks while blocked reports true, re-checking it after every
// fault change. It is called with p.mu held and returns with p.mu held; it
// returns false if done was closed first.
func (p *Proxy) waitLocked(blocked func() bool, done <-chan struct{}) bool {
	for blocked() {
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-done:
			p.mu.Lock()
			return false
		}
		p.mu.Lock()
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// listenRetry listens on addr, retrying while the address is still held by
// the previous listener's sockets.
func listenRetry(addr string) (*net.TCPListener, error) {
	deadline := time.Now().Add(rebindTimeout)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln.(*net.TCPListener), nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
