package etcdtest

import (
	"io"
	"net"
	"sync"
	"time"
)

// A peerLink owns a member's advertised peer address and forwards every
// connection to the port the member really listens on. It exists for
// shutdown: etcd's peer HTTP server can leave a finished connection blocked
// in a read for its 5-second read timeout after Close, and the peers' idle
// keep-alive connections to it stay open as long as that. Closing the link's
// connections ends both sides at once, so a cluster's goroutines are gone
// when the test's cleanup returns.
type peerLink struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	down   bool // the member is stopping or stopped
	closed bool
	wg     sync.WaitGroup
}

// newPeerLink starts forwarding connections accepted by ln to target. The
// link takes ownership of ln.
func newPeerLink(ln net.Listener, target string) *peerLink {
	l := &peerLink{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	l.wg.Go(l.accept)
	return l
}

func (l *peerLink) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		if !l.track(c) {
			c.Close()
			return
		}
		l.wg.Go(func() { l.forward(c) })
	}
}

func (l *peerLink) forward(c net.Conn) {
	defer l.untrackClose(c)
	l.mu.Lock()
	down := l.down
	l.mu.Unlock()
	// The peer of a stopped member sees its connection closed at once,
	// much as if the address had refused it.
	if down {
		return
	}
	up, err := net.DialTimeout("tcp", l.target, 5*time.Second)
	if err != nil {
		return
	}
	if !l.track(up) {
		up.Close()
		return
	}
	defer l.untrackClose(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	// Either side ending ends the pair; then both copies return.
	<-done
	c.Close()
	up.Close()
	<-done
}

func (l *peerLink) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *peerLink) untrackClose(c net.Conn) {
	c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// setDown marks the member as stopping, closing every forwarded connection
// and each new one, or as started again.
func (l *peerLink) setDown(down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = down
	if down {
		l.closeConnsLocked()
	}
}

func (l *peerLink) closeConnsLocked() {
	for c := range l.conns {
		c.Close()
	}
}

// close stops accepting, closes every connection and waits for the
// forwarding goroutines to end.
func (l *peerLink) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.ln.Close()
	l.mu.Lock()
	l.closeConnsLocked()
	l.mu.Unlock()
	l.wg.Wait()
}
