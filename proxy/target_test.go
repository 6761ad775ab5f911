package proxy_test

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit/proxy"
)

// TestDialsWhenClientBytesAreDue checks when the target sees a connection:
// once the client's first bytes (or its FIN) are due there, not when the
// proxy accepts it. A connection made while Upstream is paused or
// blackholed must not reach the target, as its SYN would not have through
// a real silent link; a server such as etcd would otherwise hold an idle
// connection it waits on for ever.
func TestDialsWhenClientBytesAreDue(t *testing.T) {
	t.Parallel()
	notSeen := func(s proxy.Stats) bool { return s.Conns == 0 && s.Pending == 1 }
	const notSeenWant = "0 conns at the target and 1 pending"

	t.Run("healthy", func(t *testing.T) {
		t.Parallel()
		srv := startRawServer(t)
		p := newProxy(t, srv.addr)
		c := dial(t, p.Addr())
		eventuallyStats(t, p, notSeen, notSeenWant)
		srv.none(t, 100*time.Millisecond)

		write(t, c, "hello")
		expect(t, srv.next(t), "hello")
		eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 1 && s.Pending == 0 }, "1 conn at the target")
	})

	t.Run("half-close first", func(t *testing.T) {
		t.Parallel()
		srv := startRawServer(t)
		p := newProxy(t, srv.addr)
		c := dial(t, p.Addr())
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		sc := srv.next(t)
		require.NoError(t, sc.SetReadDeadline(time.Now().Add(wait)))
		n, err := sc.Read(make([]byte, 1))
		require.Zero(t, n)
		require.ErrorIs(t, err, io.EOF, "got %v at the server, want the client's FIN", err)
	})

	t.Run("paused upstream", func(t *testing.T) {
		t.Parallel()
		srv := startRawServer(t)
		p := newProxy(t, srv.addr)
		p.Pause(proxy.Upstream)
		c := dial(t, p.Addr())
		write(t, c, "held")
		eventuallyStats(t, p, notSeen, notSeenWant)
		srv.none(t, 300*time.Millisecond)

		p.Resume()
		sc := srv.next(t)
		expect(t, sc, "held")
		write(t, sc, "back")
		expect(t, c, "back")
	})

	t.Run("blackholed upstream", func(t *testing.T) {
		t.Parallel()
		srv := startRawServer(t)
		p := newProxy(t, srv.addr)
		p.Blackhole(proxy.Upstream)
		c := dial(t, p.Addr())
		write(t, c, "lost")
		eventuallyStats(t, p, func(s proxy.Stats) bool { return notSeen(s) && s.Dropped == int64(len("lost")) },
			notSeenWant+", 4 bytes dropped")
		srv.none(t, 300*time.Millisecond)

		// The stream was cut before it reached the target: healing closes
		// the client's side, and the target never sees it.
		p.Unblackhole()
		requireCut(t, c)
		eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 0 && s.Pending == 0 }, "nothing open")
		srv.none(t, 100*time.Millisecond)
	})
}

// TestTargetEndFollowsDownstream ends the target's side of a connection (a
// close, a close answered with RST when the client writes on, or a reset)
// and checks the client learns of it only through the Downstream
// direction: at once when it is healthy, and only on healing when it is
// paused or blackholed. Without that, a client behind a silent link would
// see its server go away, which no real partition shows it.
func TestTargetEndFollowsDownstream(t *testing.T) {
	t.Parallel()
	ends := []struct {
		name string
		// end ends the target's side; the client may write on after it.
		end  func(t *testing.T, p *proxy.Proxy, c, sc net.Conn)
		want error
	}{
		{"close", func(t *testing.T, p *proxy.Proxy, c, sc net.Conn) { require.NoError(t, sc.Close()) }, io.EOF},
		{"close then client writes", func(t *testing.T, p *proxy.Proxy, c, sc net.Conn) {
			require.NoError(t, sc.Close())
			// The first write reaches the closed socket, which answers with
			// RST; the next one fails at the proxy.
			up := p.Stats().BytesUp
			write(t, c, "a")
			eventuallyStats(t, p, func(s proxy.Stats) bool { return s.BytesUp == up+1 }, "the first write delivered")
			write(t, c, "b")
		}, syscall.ECONNRESET},
		{"reset", func(t *testing.T, p *proxy.Proxy, c, sc net.Conn) {
			require.NoError(t, sc.(*net.TCPConn).SetLinger(0))
			require.NoError(t, sc.Close())
		}, syscall.ECONNRESET},
	}
	faults := []struct {
		name        string
		fault, heal func(*proxy.Proxy)
	}{
		{"healthy", func(*proxy.Proxy) {}, nil},
		{"paused downstream", func(p *proxy.Proxy) { p.Pause(proxy.Downstream) }, (*proxy.Proxy).Resume},
		{"blackholed downstream", func(p *proxy.Proxy) { p.Blackhole(proxy.Downstream) }, (*proxy.Proxy).Unblackhole},
	}
	for _, f := range faults {
		for _, e := range ends {
			t.Run(f.name+"/"+e.name, func(t *testing.T) {
				t.Parallel()
				srv := startRawServer(t)
				p := newProxy(t, srv.addr)
				c, sc := srv.connect(t, p)
				f.fault(p)
				e.end(t, p, c, sc)
				if f.heal != nil {
					silent(t, c, 300*time.Millisecond)
					f.heal(p)
				}
				err := closed(t, c)
				if e.want == io.EOF || f.heal != nil {
					require.ErrorIs(t, err, e.want, "got %v, want %v", err, e.want)
				} else {
					// A healthy link delivers the target's FIN before the
					// RST that follows it, and the kernel may report either.
					requireCutErr(t, err)
				}
				// After a FIN the client may still send; once it closes too,
				// nothing is left open.
				require.NoError(t, c.Close())
				eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 0 }, "0 conns")
			})
		}
	}
}
