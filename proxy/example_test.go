package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit/proxy"
)

// ExampleNew puts a proxy in front of an echo server, silences the link with
// Blackhole and heals it.
func ExampleNew() {
	// Any TCP server will do; this one echoes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	})

	p, err := proxy.New(ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	// The client dials the proxy instead of the server.
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 64)
	fmt.Fprint(conn, "hello")
	n, _ := conn.Read(buf)
	fmt.Println(string(buf[:n]))

	// A silent link: the write succeeds, nothing comes back, nothing closes.
	p.Blackhole(proxy.Both)
	fmt.Fprint(conn, "anyone there?")
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := conn.Read(buf); errors.Is(err, os.ErrDeadlineExceeded) {
		fmt.Println("blackholed: no reply")
	}

	// Healing closes the connection whose bytes were dropped; new ones work.
	p.Unblackhole()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err != nil {
		fmt.Println("cut connection closed")
	}
	fresh, err := net.Dial("tcp", p.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer fresh.Close()
	fmt.Fprint(fresh, "hello again")
	n, _ = io.ReadFull(fresh, buf[:len("hello again")])
	fmt.Println(string(buf[:n]))

	// Output:
	// hello
	// blackholed: no reply
	// cut connection closed
	// hello again
}
