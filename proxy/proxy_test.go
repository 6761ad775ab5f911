package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit/proxy"
)

func TestForwardsManyConns(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	require.Equal(t, p.Addr(), p.Addr())
	require.NotEmpty(t, p.Target())

	const conns, rounds = 20, 5
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = dial(t, p.Addr())
	}
	var sent int64
	for r := range rounds {
		for i, c := range cs {
			msg := fmt.Sprintf("conn %d round %d", i, r)
			roundTrip(t, c, msg)
			sent += int64(len(msg))
		}
	}

	eventuallyStats(t, p, func(s proxy.Stats) bool {
		return s.Conns == conns && s.Accepted == conns && s.BytesUp == sent && s.BytesDown == sent
	}, fmt.Sprintf("%d conns and %d bytes each way", conns, sent))

	for _, c := range cs {
		require.NoError(t, c.Close())
	}
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 0 }, "0 conns after the clients closed")
}

// TestForwardsHalfCloseAndLargeStreams sends 1 MiB, half-closes, and expects
// the whole stream back followed by io.EOF: the client's FIN must travel to
// the server and the server's back.
func TestForwardsHalfCloseAndLargeStreams(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	data := pattern(1 << 20)

	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "got %d bytes back, want the %d sent, intact", len(got), len(data))
	require.NoError(t, <-errc)
}

// TestCloseConns injects FIN through CloseConns: the client reads io.EOF and
// the proxy keeps accepting.
func TestCloseConns(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")

	p.CloseConns()
	requireEOF(t, c)

	fresh := dial(t, p.Addr())
	roundTrip(t, fresh, "again")
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 1 }, "only the fresh conn open")
}

// TestStopStart injects FIN plus a closed listener through Stop: the client
// reads io.EOF, new dials are refused, and Start brings the same address back.
func TestStopStart(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	addr := p.Addr()
	c := dial(t, addr)
	roundTrip(t, c, "hello")

	p.Stop()
	p.Stop()
	requireEOF(t, c)
	_, err := net.DialTimeout("tcp", addr, wait)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)

	require.NoError(t, p.Start())
	require.NoError(t, p.Start())
	require.Equal(t, addr, p.Addr())
	fresh := dial(t, addr)
	roundTrip(t, fresh, "again")
}

// TestResetConns injects RST through ResetConns: both peers see a connection
// reset, not a clean EOF.
func TestResetConns(t *testing.T) {
	t.Parallel()
	srv := startRawServer(t)
	p := newProxy(t, srv.addr)
	c, sc := srv.connect(t, p)

	p.ResetConns()
	for name, conn := range map[string]net.Conn{"client": c, "server": sc} {
		err := closed(t, conn)
		require.ErrorIs(t, err, syscall.ECONNRESET, "%s: got %v, want a reset", name, err)
		require.ErrorContains(t, err, "connection reset")
	}
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 0 }, "0 conns after the reset")
}

// TestBlackhole injects a silent link through Blackhole: no bytes and no close
// reach either peer. Unblackhole closes the conns whose streams were cut and
// leaves alone the ones that lost nothing.
func TestBlackhole(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	cut := dial(t, p.Addr())
	roundTrip(t, cut, "before")
	idle := dial(t, p.Addr())
	roundTrip(t, idle, "before")

	p.Blackhole(proxy.Both)
	write(t, cut, "lost")
	late := dial(t, p.Addr()) // accepted while blackholed, so blackholed too
	write(t, late, "late")
	silent(t, cut, 500*time.Millisecond)
	silent(t, late, 100*time.Millisecond)
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Dropped == int64(len("lost")+len("late")) },
		"both writes dropped")

	p.Unblackhole()
	requireCut(t, cut)
	requireCut(t, late)
	roundTrip(t, idle, "after")
	fresh := dial(t, p.Addr())
	roundTrip(t, fresh, "fresh")
}

// TestOneDirection injects a fault in one direction and checks the other keeps
// flowing, using a server that sends on its own. Healing a pause delivers the
// held bytes; healing a blackhole closes the conn whose stream was cut.
func TestOneDirection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		dir   proxy.Direction
		fault func(*proxy.Proxy, proxy.Direction)
		heal  func(*proxy.Proxy)
		lossy bool
	}{
		{"blackhole upstream", proxy.Upstream, (*proxy.Proxy).Blackhole, (*proxy.Proxy).Unblackhole, true},
		{"blackhole downstream", proxy.Downstream, (*proxy.Proxy).Blackhole, (*proxy.Proxy).Unblackhole, true},
		{"pause upstream", proxy.Upstream, (*proxy.Proxy).Pause, (*proxy.Proxy).Resume, false},
		{"pause downstream", proxy.Downstream, (*proxy.Proxy).Pause, (*proxy.Proxy).Resume, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startRawServer(t)
			p := newProxy(t, srv.addr)
			c, sc := srv.connect(t, p)

			// from sends into the faulty direction; to receives from it.
			from, to, back, forth := c, sc, sc, c
			if tt.dir == proxy.Downstream {
				from, to, back, forth = sc, c, c, sc
			}
			tt.fault(p, tt.dir)
			write(t, from, "held")
			silent(t, to, 300*time.Millisecond)
			write(t, back, "flowing")
			expect(t, forth, "flowing")

			tt.heal(p)
			if tt.lossy {
				requireCut(t, to)
				return
			}
			expect(t, to, "held")
		})
	}
}

// TestPauseLosesNothing writes 1 MiB while the direction is paused: none of
// it arrives, and after Resume all of it arrives intact and in order.
func TestPauseLosesNothing(t *testing.T) {
	t.Parallel()
	for _, dir := range []proxy.Direction{proxy.Upstream, proxy.Downstream} {
		t.Run(dir.String(), func(t *testing.T) {
			t.Parallel()
			srv := startRawServer(t)
			p := newProxy(t, srv.addr)
			c, sc := srv.connect(t, p)
			sender, receiver := c, sc
			if dir == proxy.Downstream {
				sender, receiver = sc, c
			}

			p.Pause(dir)
			data := pattern(1 << 20)
			errc := make(chan error, 1)
			go func() {
				_, err := sender.Write(data)
				errc <- err
			}()
			before := p.Stats()
			silent(t, receiver, 300*time.Millisecond)
			after := p.Stats()
			require.Equal(t, before.BytesUp+before.BytesDown, after.BytesUp+after.BytesDown, "got bytes delivered while paused")

			p.Resume()
			got := read(t, receiver, len(data))
			require.True(t, bytes.Equal(data, got), "got %d bytes altered, want them intact and in order", len(got))
			select {
			case err := <-errc:
				require.NoError(t, err)
			case <-time.After(wait):
				t.Fatal("sender still blocked after Resume")
			}
		})
	}
}

// TestOverlappingFaults sets latency with jitter, a bandwidth limit and a
// pause at once and checks the stream still arrives intact and in order.
func TestOverlappingFaults(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	p.SetLatency(proxy.Both, 5*time.Millisecond, 20*time.Millisecond)
	p.SetBandwidth(proxy.Upstream, 4<<20)
	p.Pause(proxy.Upstream)

	data := pattern(256 << 10)
	errc := make(chan error, 1)
	go func() {
		var err error
		for b := data; len(b) > 0 && err == nil; b = b[min(len(b), 1000):] {
			_, err = c.Write(b[:min(len(b), 1000)])
		}
		errc <- err
	}()
	silent(t, c, 200*time.Millisecond)
	p.Resume()
	got := read(t, c, len(data))
	require.True(t, bytes.Equal(data, got), "got the stream altered, want it intact and in order")
	require.NoError(t, <-errc)
}

// TestPauseAccept holds a new dial with PauseAccept: its data does not reach
// the server until ResumeAccept, while an existing conn keeps flowing.
func TestPauseAccept(t *testing.T) {
	t.Parallel()
	srv := startRawServer(t)
	p := newProxy(t, srv.addr)
	old, oldServer := srv.connect(t, p)

	p.PauseAccept()
	held := dial(t, p.Addr())
	write(t, held, "hello")
	srv.none(t, 300*time.Millisecond)
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Pending == 1 && s.Conns == 1 }, "1 pending and 1 open conn")
	write(t, old, "up")
	expect(t, oldServer, "up")
	write(t, oldServer, "down")
	expect(t, old, "down")

	p.ResumeAccept()
	expect(t, srv.next(t), "hello")
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Pending == 0 && s.Conns == 2 }, "2 open conns")
}

// TestLatency delays upstream traffic with SetLatency: each round trip takes
// at least the delay, pipelined writes are not serialised behind it, and
// removing it restores the round trip time.
func TestLatency(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	rtt(t, c)

	const delay = 100 * time.Millisecond
	p.SetLatency(proxy.Upstream, delay, 0)
	for range 3 {
		got := rtt(t, c)
		require.GreaterOrEqual(t, got, delay, "got RTT %v, want at least %v", got, delay)
	}

	// Ten writes in a row: a delay line delivers them all about one delay
	// later, where a sleep per read would take ten delays.
	start := time.Now()
	for i := range 10 {
		write(t, c, fmt.Sprintf("%02d", i))
		time.Sleep(5 * time.Millisecond) // spread the writes so they are read as separate chunks
	}
	expect(t, c, "00010203040506070809")
	elapsed := time.Since(start)
	require.GreaterOrEqual(t, elapsed, delay)
	require.Less(t, elapsed, 5*delay, "got %v for 10 pipelined writes, want about one delay", elapsed)

	p.SetLatency(proxy.Upstream, 0, 0)
	fastest := time.Hour
	for range 5 {
		fastest = min(fastest, rtt(t, c))
	}
	require.Less(t, fastest, delay/2, "got RTT %v after removing latency, want well under %v", fastest, delay)
}

// TestLatencyJitterKeepsOrder sends many small writes through latency with
// jitter larger than the delay: chunks must still arrive in order.
func TestLatencyJitterKeepsOrder(t *testing.T) {
	t.Parallel()
	p := newProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	p.SetLatency(proxy.Both, 2*time.Millisecond, 20*time.Millisecond)

	var want bytes.Buffer
	for i := range 100 {
		msg := fmt.Sprintf("<%03d>", i)
		want.WriteString(msg)
		write(t, c, msg)
		if i%10 == 0 {
			time.Sleep(time.Millisecond) // let some writes be read as chunks of their own
		}
	}
	require.Equal(t, want.String(), string(read(t, c, want.Len())))
}

// TestBandwidth limits each direction with SetBandwidth and measures the
// throughput of about 1.5 s of transfer.
func TestBandwidth(t *testing.T) {
	t.Parallel()
	const rate = 256 << 10
	for _, dir := range []proxy.Direction{proxy.Upstream, proxy.Downstream} {
		t.Run(dir.String(), func(t *testing.T) {
			t.Parallel()
			srv := startRawServer(t)
			p := newProxy(t, srv.addr)
			c, sc := srv.connect(t, p)
			sender, receiver := c, sc
			if dir == proxy.Downstream {
				sender, receiver = sc, c
			}
			p.SetBandwidth(dir, rate)

			data := pattern(rate * 3 / 2)
			start := time.Now()
			errc := make(chan error, 1)
			go func() {
				_, err := sender.Write(data)
				errc <- err
			}()
			got := read(t, receiver, len(data))
			elapsed := time.Since(start)
			require.True(t, bytes.Equal(data, got), "got the stream altered, want it intact")
			require.NoError(t, <-errc)

			measured := float64(len(data)) / elapsed.Seconds()
			require.InDelta(t, 1.0, measured/rate, 0.2,
				"got %.0f B/s over %v, want %d B/s within 20%%", measured, elapsed, rate)

			// Removing the limit lets the same amount through far faster.
			p.SetBandwidth(dir, 0)
			start = time.Now()
			go func() {
				_, err := sender.Write(data)
				errc <- err
			}()
			read(t, receiver, len(data))
			require.NoError(t, <-errc)
			require.Less(t, time.Since(start), elapsed/2)
		})
	}
}

// TestUpstreamUnreachable points the proxy at a closed port: once the client
// sends something, its connection is reset at once, as a refused dial would
// be, and nothing is left open.
func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	ln := listen(t)
	target := ln.Addr().String()
	require.NoError(t, ln.Close())

	p := newProxy(t, target)
	c := dial(t, p.Addr())
	start := time.Now()
	write(t, c, "hello")
	err := closed(t, c)
	require.ErrorIs(t, err, syscall.ECONNRESET, "got %v, want a reset", err)
	require.Less(t, time.Since(start), 2*time.Second, "got the reset late, want it at once")
	eventuallyStats(t, p, func(s proxy.Stats) bool {
		return s.Conns == 0 && s.Pending == 0 && s.Accepted == 1 && s.DialErrors == 1
	}, "1 dial error and nothing open")
}

// TestClose closes a proxy with conns in every state: flowing, paused, not
// yet connected to the target, throttled, blackholed and held by
// PauseAccept. Every client sees its connection end, Close is idempotent,
// and the proxy is inert afterwards. TestMain's goleak check proves no
// goroutine outlives it.
func TestClose(t *testing.T) {
	t.Parallel()
	p, err := proxy.New(echoServer(t))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })

	flowing := dial(t, p.Addr())
	roundTrip(t, flowing, "hello")
	paused := dial(t, p.Addr())
	roundTrip(t, paused, "hello")
	p.Pause(proxy.Upstream)
	write(t, paused, "held")
	undialled := dial(t, p.Addr())
	write(t, undialled, "held")
	// A dial completes in the kernel before the proxy forwards it; wait for
	// the forward so PauseAccept below does not catch this conn.
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 2 && s.Pending == 1 },
		"2 open conns and 1 waiting for its bytes to be due at the target")
	p.SetBandwidth(proxy.Downstream, 1)
	p.Blackhole(proxy.Downstream)
	p.PauseAccept()
	pending := dial(t, p.Addr())
	eventuallyStats(t, p, func(s proxy.Stats) bool { return s.Conns == 2 && s.Pending == 2 }, "2 open and 2 pending conns")

	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	for _, c := range []net.Conn{flowing, paused, undialled, pending} {
		requireCut(t, c)
	}
	require.Equal(t, proxy.Stats{}, zeroCounters(p.Stats()))

	require.ErrorIs(t, p.Start(), proxy.ErrClosed)
	p.Stop()
	p.CloseConns()
	p.ResetConns()
	p.Blackhole(proxy.Both)
	p.Unblackhole()
	p.Pause(proxy.Both)
	p.Resume()
	p.PauseAccept()
	p.ResumeAccept()
	p.SetLatency(proxy.Both, time.Second, 0)
	p.SetBandwidth(proxy.Both, 1)
	_, err = net.DialTimeout("tcp", p.Addr(), wait)
	require.Error(t, err, "got a dial through a closed proxy accepted, want it refused")
}

// zeroCounters keeps only the gauges of s, which must be zero after Close.
func zeroCounters(s proxy.Stats) proxy.Stats {
	return proxy.Stats{Conns: s.Conns, Pending: s.Pending}
}

func TestInvalidDirectionPanics(t *testing.T) {
	t.Parallel()
	p := newProxy(t, "127.0.0.1:1")
	require.Panics(t, func() { p.Pause(proxy.Direction(7)) })
	require.Equal(t, "both", proxy.Both.String())
}

func TestNewRejectsBadTarget(t *testing.T) {
	t.Parallel()
	_, err := proxy.New("no-port")
	require.Error(t, err)
}
