package etcdtest_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// stopTimeout bounds one Stop or Kill. Both take milliseconds, a stop at
// most a second more while clients finish; the margin covers a leader's
// handover on a loaded machine, which etcd bounds by its request timeout
// (6s with DefaultElection).
const stopTimeout = 10 * time.Second

// quietFor is how long a client behind a silent proxy must see nothing.
const quietFor = 300 * time.Millisecond

// silentFault is a fault injected through a member's proxy: a Blackhole or
// a Pause in one direction or both, or none.
type silentFault struct {
	pause bool // Pause rather than Blackhole
	dir   proxy.Direction
	none  bool
}

var silentFaults = []silentFault{
	{none: true},
	{dir: proxy.Upstream}, {dir: proxy.Downstream}, {dir: proxy.Both},
	{pause: true, dir: proxy.Upstream}, {pause: true, dir: proxy.Downstream}, {pause: true, dir: proxy.Both},
}

func (f silentFault) String() string {
	switch {
	case f.none:
		return "healthy"
	case f.pause:
		return "pause " + f.dir.String()
	}
	return "blackhole " + f.dir.String()
}

func (f silentFault) inject(p *proxy.Proxy) {
	switch {
	case f.none:
	case f.pause:
		p.Pause(f.dir)
	default:
		p.Blackhole(f.dir)
	}
}

func (f silentFault) heal(p *proxy.Proxy) {
	switch {
	case f.none:
	case f.pause:
		p.Resume()
	default:
		p.Unblackhole()
	}
}

// dealtWith reports whether the proxy has dealt with n more bytes sent
// upstream between the stats before and now: delivered them, dropped them,
// or, paused, left them unread.
func (f silentFault) dealtWith(before, now proxy.Stats, n int) bool {
	switch {
	case !f.silences(proxy.Upstream):
		return now.BytesUp >= before.BytesUp+int64(n)
	case f.pause:
		return true
	}
	return now.Dropped >= before.Dropped+int64(n)
}

// silences reports whether the fault drops or holds what travels in d.
func (f silentFault) silences(d proxy.Direction) bool {
	return !f.none && (f.dir == d || f.dir == proxy.Both)
}

// TestRegressionStopBehindSilentProxy: Stop and Kill of a member hung while
// its proxy blackholed or paused a fresh client connection. etcd's shutdown
// (embed Etcd.Close) waits for its client listener's cmux, and cmux waits,
// without a deadline, for every accepted connection to send the bytes that
// tell HTTP/1 from HTTP/2; the proxy had dialled the member for the
// connection at once but forwarded nothing, so Stop and Kill returned only
// once the proxy healed. The proxy now dials the member only when the
// client's first bytes are due there.
//
// Each case injects a fault through the member's proxy (Blackhole or Pause,
// in each direction), opens a fresh connection that sends the HTTP/2
// preface, and stops or kills the member. The call must return at once, and
// the clients on the proxy, the fresh one and one that had been talking to
// the member, must learn of it only as through a real network: at once
// where the member's side reaches them, and not before the fault heals
// where it is silent.
func TestRegressionStopBehindSilentProxy(t *testing.T) {
	ops := []struct {
		name string
		stop func(*etcdtest.Server)
	}{
		{"kill", (*etcdtest.Server).Kill},
		{"stop", (*etcdtest.Server).Stop},
	}
	t.Run("single", func(t *testing.T) {
		s := etcdtest.Start(t, etcdtest.WithProxy())
		for _, op := range ops {
			for _, f := range silentFaults {
				t.Run(op.name+"/"+f.String(), func(t *testing.T) {
					// A case that failed may have left the member stopped.
					if !s.Running() {
						require.NoError(t, s.Restart())
					}
					stopBehind(t, s, op.name, op.stop, f)
				})
			}
		}
	})
	t.Run("cluster", func(t *testing.T) {
		c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
		ms := c.Members()
		i := 0
		for _, op := range ops {
			for _, f := range silentFaults {
				// Each case takes the next member, so that some stop the
				// leader; the one before is restarted first.
				prev, m := ms[(i+len(ms)-1)%len(ms)], ms[i%len(ms)]
				i++
				t.Run(op.name+"/"+f.String(), func(t *testing.T) {
					for _, r := range []*etcdtest.Server{prev, m} {
						if !r.Running() {
							require.NoError(t, r.Restart())
						}
					}
					c.WaitLeader(t)
					stopBehind(t, m, op.name, op.stop, f)
				})
			}
		}
	})
}

// stopBehind runs one case of TestRegressionStopBehindSilentProxy on the
// running member s and leaves it stopped, with its proxy healed.
func stopBehind(t *testing.T, s *etcdtest.Server, opName string, stop func(*etcdtest.Server), f silentFault) {
	p := s.Proxy()
	// The previous case's connections end once it healed; wait for them so
	// the counts below are this case's.
	eventuallyProxy(t, p, func(st proxy.Stats) bool { return st.Conns == 0 && st.Pending == 0 }, "no connection open")

	established := dialProxy(t, s)
	handshake(t, established)
	f.inject(p)
	t.Cleanup(func() { f.heal(p) })
	before := p.Stats()
	fresh := dialProxy(t, s)
	writeAll(t, fresh, clientPreface)
	// Wait until the proxy has taken the fresh connection on and dealt with
	// its bytes.
	eventuallyProxy(t, p, func(st proxy.Stats) bool {
		return st.Conns+st.Pending == 2 && f.dealtWith(before, st, len(clientPreface))
	}, "the fresh connection taken on")

	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		stop(s)
	}()
	select {
	case <-done:
		t.Logf("%s %s returned in %v", opName, s.Name(), time.Since(start).Round(time.Microsecond))
	case <-time.After(stopTimeout):
		f.heal(p)
		<-done
		t.Fatalf("%s %s did not return within %v while its proxy had a fresh connection under %v; it returned %v after the proxy healed",
			opName, s.Name(), stopTimeout, f, time.Since(start).Round(time.Millisecond))
	}

	// Through a silent downstream, the client must not see the member
	// close, not even when it writes on and a stopped member would answer
	// with a reset.
	var quiet []net.Conn
	if f.silences(proxy.Downstream) {
		quiet = append(quiet, established, fresh)
		// A stopped member's socket answers the first bytes it gets with a
		// reset, which the proxy meets on its next write there.
		before := p.Stats()
		for _, c := range quiet {
			writeAll(t, c, pingFrame)
		}
		eventuallyProxy(t, p, func(st proxy.Stats) bool { return f.dealtWith(before, st, 2*len(pingFrame)) },
			"the first pings dealt with")
		for _, c := range quiet {
			writeAll(t, c, pingFrame)
		}
	} else {
		requireClosed(t, established, "the established connection, right after the "+opName)
		if f.silences(proxy.Upstream) {
			// Its first bytes never reached the member, as its SYN would
			// not have: there is nothing for the member to close.
			quiet = append(quiet, fresh)
		} else {
			requireClosed(t, fresh, "the fresh connection, right after the "+opName)
		}
	}
	requireQuiet(t, fmt.Sprintf("connections behind %v, after the %s", f, opName), quiet...)

	f.heal(p)
	for _, c := range quiet {
		requireClosed(t, c, "a connection once the proxy healed")
	}
}

// clientPreface is what an HTTP/2 client, gRPC's included, sends first: the
// connection preface and an empty SETTINGS frame.
var clientPreface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 0x4, 0, 0, 0, 0, 0)

// pingFrame is an HTTP/2 PING frame on stream 0 with eight bytes of data.
var pingFrame = []byte{0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}

func dialProxy(t *testing.T, s *etcdtest.Server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.ProxyEndpoint(), waitFor)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func writeAll(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(waitFor)))
	_, err := c.Write(b)
	require.NoError(t, err)
}

// handshake opens an HTTP/2 connection to the member on c and reads frames
// until the member acknowledges the client's settings, after which the
// member sends nothing unasked.
func handshake(t *testing.T, c net.Conn) {
	t.Helper()
	writeAll(t, c, clientPreface)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
	var h [9]byte
	for {
		_, err := io.ReadFull(c, h[:])
		require.NoError(t, err, "reading the member's HTTP/2 frames")
		n := int64(h[0])<<16 | int64(binary.BigEndian.Uint16(h[1:3]))
		_, err = io.CopyN(io.Discard, c, n)
		require.NoError(t, err)
		const settings, ack = 0x4, 0x1
		if h[3] == settings && h[4]&ack != 0 {
			return
		}
	}
}

// requireClosed reads c until it ends, closed or reset, skipping whatever
// the member sent before.
func requireClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
	_, err := io.Copy(io.Discard, c)
	if err == nil || errors.Is(err, syscall.ECONNRESET) {
		return
	}
	t.Fatalf("%s: got %v, want it closed or reset within %v", what, err, waitFor)
}

// requireQuiet asserts that the connections yield neither data nor a close
// for quietFor.
func requireQuiet(t *testing.T, what string, conns ...net.Conn) {
	t.Helper()
	deadline := time.Now().Add(quietFor)
	for _, c := range conns {
		require.NoError(t, c.SetReadDeadline(deadline))
	}
	for _, c := range conns {
		var b [1]byte
		n, err := c.Read(b[:])
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: got %d bytes and %v, want no data and no close within %v", what, n, err, quietFor)
		}
	}
}

// eventuallyProxy waits until p's stats satisfy ok.
func eventuallyProxy(t *testing.T, p *proxy.Proxy, ok func(proxy.Stats) bool, want string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		st := p.Stats()
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got proxy stats %+v, want %s", st, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
