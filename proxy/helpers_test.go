package proxy_test

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit/proxy"
)

// wait bounds every condition a test waits for; it is generous because it
// only matters when something is broken.
const wait = 10 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newProxy starts a proxy in front of target, closed when the test ends.
func newProxy(t testing.TB, target string) *proxy.Proxy {
	t.Helper()
	p, err := proxy.New(target)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// listen opens a listener on a free port of 127.0.0.1.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// echoServer starts a TCP server that writes back everything it reads and
// half-closes when the peer does. It returns the server's address.
func echoServer(t testing.TB) string {
	t.Helper()
	ln := listen(t)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				if _, err := io.Copy(c, c); err == nil {
					c.(*net.TCPConn).CloseWrite()
					io.Copy(io.Discard, c)
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// rawServer hands every connection it accepts to the test, so the test can
// play the server's side by hand.
type rawServer struct {
	addr  string
	conns chan net.Conn
}

func startRawServer(t testing.TB) *rawServer {
	t.Helper()
	ln := listen(t)
	s := &rawServer{addr: ln.Addr().String(), conns: make(chan net.Conn, 64)}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(s.conns)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

// next returns the next connection the server accepted.
func (s *rawServer) next(t testing.TB) net.Conn {
	t.Helper()
	select {
	case c, ok := <-s.conns:
		require.True(t, ok, "server closed")
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(wait):
		t.Fatalf("got no connection at the server within %v, want one", wait)
		return nil
	}
}

// connect dials the proxy and returns the client's connection and the
// server's. The client speaks first, since the proxy dials the target only
// once there is something to deliver there.
func (s *rawServer) connect(t testing.TB, p *proxy.Proxy) (client, server net.Conn) {
	t.Helper()
	client = dial(t, p.Addr())
	write(t, client, "hi")
	server = s.next(t)
	expect(t, server, "hi")
	return client, server
}

// none asserts the server accepts no connection for d.
func (s *rawServer) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case c := <-s.conns:
		c.Close()
		t.Fatalf("got a connection at the server, want none within %v", d)
	case <-time.After(d):
	}
}

// dial connects to addr; the connection is closed when the test ends.
func dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func write(t testing.TB, c net.Conn, s string) {
	t.Helper()
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(wait)))
	_, err := c.Write([]byte(s))
	require.NoError(t, err)
}

// read reads exactly n bytes.
func read(t testing.TB, c net.Conn, n int) []byte {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	require.NoError(t, err)
	return b
}

// expect reads len(want) bytes and checks they are want.
func expect(t testing.TB, c net.Conn, want string) {
	t.Helper()
	require.Equal(t, want, string(read(t, c, len(want))))
}

// roundTrip sends msg through an echo server and checks it comes back.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	write(t, c, msg)
	expect(t, c, msg)
}

// rtt measures one round trip of a small message through an echo server.
func rtt(t testing.TB, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	roundTrip(t, c, "ping")
	return time.Since(start)
}

// silent asserts that c yields neither data nor a close for d: the read must
// end by its deadline.
func silent(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(d)))
	var b [1]byte
	n, err := c.Read(b[:])
	require.Zero(t, n, "got data, want none within %v", d)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "got %v, want no data and no close within %v", err, d)
}

// closed reads from c until it ends and returns the error it ended with. It
// fails if c yields any data first: a closed stream must not resume.
func closed(t testing.TB, c net.Conn) error {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	var b [1]byte
	n, err := c.Read(b[:])
	require.Zero(t, n, "got data, want the connection closed")
	require.Error(t, err)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded, "got no close within %v", wait)
	return err
}

// requireEOF asserts c was closed normally.
func requireEOF(t testing.TB, c net.Conn) {
	t.Helper()
	err := closed(t, c)
	require.ErrorIs(t, err, io.EOF, "got %v, want io.EOF", err)
}

// requireCut asserts c was closed, normally or by a reset.
func requireCut(t testing.TB, c net.Conn) {
	t.Helper()
	requireCutErr(t, closed(t, c))
}

// requireCutErr asserts err is what a read gets from a connection closed
// normally or by a reset.
func requireCutErr(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("got %v, want io.EOF or a connection reset", err)
	}
}

// pattern returns n bytes that differ from any shifted copy of themselves,
// so lost, doubled or reordered chunks show up.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// eventuallyStats waits until the proxy's stats satisfy ok.
func eventuallyStats(t testing.TB, p *proxy.Proxy, ok func(proxy.Stats) bool, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		s := p.Stats()
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got stats %+v, want %s", s, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
