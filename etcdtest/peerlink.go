package etcdtest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
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
//
// For process members the link also makes partitions: with allow set, it
// reads the first request on each connection to learn the sending member
// from the X-PeerURLs header etcd's raft transport puts on every request,
// and forwards only connections that allow accepts, now and whenever
// recheck runs. A raft transport keeps each connection to one peer, so the
// first request names the sender for the connection's life. Connections
// whose first request names no sender (version probes, lease forwarding)
// count as coming from no member in particular.
type peerLink struct {
	ln     net.Listener
	target string
	allow  func(from string) bool // nil: forward everything, unread

	mu sync.Mutex
	// conns maps each open connection, accepted or dialled, to the peer
	// URLs of the member that sent it ("" while unknown).
	conns  map[net.Conn]string
	down   bool // the member is stopping or stopped
	closed bool
	wg     sync.WaitGroup
}

// newPeerLink starts forwarding connections accepted by ln to target,
// filtered by allow if it is not nil. The link takes ownership of ln.
func newPeerLink(ln net.Listener, target string, allow func(from string) bool) *peerLink {
	l := &peerLink{ln: ln, target: target, allow: allow, conns: make(map[net.Conn]string)}
	l.wg.Go(l.accept)
	return l
}

func (l *peerLink) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		if !l.track(c, "") {
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
	var head []byte
	from := ""
	if l.allow != nil {
		var err error
		if from, head, err = readSender(c); err != nil || !l.retag(c, from) {
			return
		}
	}
	up, err := net.DialTimeout("tcp", l.target, 5*time.Second)
	if err != nil {
		return
	}
	if !l.track(up, from) {
		up.Close()
		return
	}
	defer l.untrackClose(up)
	if _, err := up.Write(head); err != nil {
		return
	}
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

// readSender reads the head of the first request on c and returns the
// sender's peer URLs from it, with every byte read, to be forwarded first.
func readSender(c net.Conn) (from string, head []byte, err error) {
	var read bytes.Buffer
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(io.TeeReader(c, &read)))
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		return "", nil, err
	}
	return req.Header.Get("X-PeerURLs"), read.Bytes(), nil
}

func (l *peerLink) track(c net.Conn, from string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = from
	return true
}

// retag records the sender of an accepted connection, or reports false if
// the connection is not allowed.
func (l *peerLink) retag(c net.Conn, from string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || !l.allow(from) {
		return false
	}
	l.conns[c] = from
	return true
}

// recheck closes every connection that allow no longer accepts, after a
// partition changed.
func (l *peerLink) recheck() {
	if l.allow == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for c, from := range l.conns {
		if !l.allow(from) {
			c.Close()
		}
	}
}

// sentBy reports whether the X-PeerURLs value from names url.
func sentBy(from, url string) bool {
	for u := range strings.SplitSeq(from, ",") {
		if u == url {
			return true
		}
	}
	return false
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
