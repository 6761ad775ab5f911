// Package proxy is a TCP fault-injection proxy for tests.
//
// A [Proxy] listens on 127.0.0.1 and forwards every accepted connection to one
// target address, over a connection of its own to the target for each. A
// test points its client at [Proxy.Addr] instead of the server and then
// breaks the link in the ways real networks break, while both ends keep
// running:
//
//	p, err := proxy.New(serverAddr)
//	if err != nil { ... }
//	defer p.Close()
//	conn, err := net.Dial("tcp", p.Addr())
//	p.Blackhole(proxy.Both) // the link goes silent
//	p.Unblackhole()         // heal; conns that lost bytes are closed
//
// The package imports only the standard library and never dials anything but
// the target.
//
// # Faults and what a peer sees
//
// Each fault below says what the client (the side that dialled [Proxy.Addr])
// and the server (the target) observe. Faults that take a [Direction] act on
// [Upstream] (client to server), [Downstream] (server to client) or [Both];
// a fault in one direction leaves the other flowing. Faults overlap freely:
// latency, bandwidth, pause and blackhole can all be set at once.
//
//   - [Proxy.CloseConns]: every connection is closed normally. Both peers read
//     io.EOF (a socket that still holds unread input is closed by the kernel
//     with RST instead, as TCP requires). The proxy keeps accepting.
//   - [Proxy.Stop]: as CloseConns, and the listener is closed too, so new dials
//     are refused. [Proxy.Start] listens again on the same address.
//   - [Proxy.ResetConns]: every connection is aborted with RST. Both peers get
//     "connection reset by peer" (syscall.ECONNRESET) on their next read or
//     write.
//   - [Proxy.Blackhole]: the link goes silent. Writes succeed, but every byte in
//     that direction is read and dropped; nothing arrives and no close is ever
//     seen, exactly like a partitioned network. New connections are blackholed
//     too. [Proxy.Unblackhole] heals: a connection that lost any byte has a cut
//     stream, so it is closed at that moment (the peers see EOF or a reset)
//     rather than resumed with a hole in it; a connection that lost nothing
//     keeps flowing.
//   - [Proxy.Pause]: forwarding stops without loss. The proxy stops reading,
//     so the sender's writes eventually block on TCP backpressure; the receiver
//     sees neither bytes nor a close. [Proxy.Resume] delivers everything
//     intact and in order.
//   - [Proxy.PauseAccept]: new dials complete at the TCP level (the kernel
//     accepts them) but are not forwarded, so the server never sees them and
//     the client gets no reply. Existing connections keep flowing.
//     [Proxy.ResumeAccept] forwards the waiting connections.
//   - [Proxy.SetLatency]: every chunk is delivered a fixed delay (plus random
//     jitter) after it was read, in order. It is a delay line, not a sleep per
//     read: a steady stream arrives late but not slower.
//   - [Proxy.SetBandwidth]: a token bucket limits the direction to a number of
//     bytes per second, shared by all connections.
//   - Unreachable target: when the client's first bytes are due at the
//     target, the dial fails and the refusal travels back as a reset, under
//     the Downstream faults: the client gets "connection reset by peer".
//
// Whatever one peer does reaches the other only through its direction, in
// order and under that direction's faults: its bytes, its FIN (a
// half-close) and its reset alike. So a server that closes or resets its
// connections behind a blackholed or paused Downstream is not seen closing
// until that direction heals, as behind a real silent network; behind a
// healthy one the client sees the close at once.
//
// # When the server sees a connection
//
// The proxy dials the target for a connection when the client's first bytes
// (or its FIN) are due there, as the client's SYN would cross the link, not
// when it accepts the connection. A connection made while Upstream is
// blackholed or paused therefore never reaches the server, just as its SYN
// would not have: the server never holds an idle connection that a real
// silent network would have kept from it (etcd, for one, waits for every
// connection it accepted to send its first bytes before it can shut down).
// The server sees a connection
// only once the client has sent something: the proxy suits protocols in
// which the client speaks first, as HTTP, gRPC and etcd's do, and a server
// that greets first waits for the client's first bytes.
//
// [Proxy.Stats] reports open connections, those the target sees and those it
// does not yet, and the bytes delivered and dropped, so a test can wait for
// a condition instead of sleeping.
//
// [Proxy.Close] ends everything: the listener, every connection and every
// goroutine the proxy started.
package proxy
