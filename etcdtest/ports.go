package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
)

// listenFree opens n listeners on free ports of 127.0.0.1. Holding them
// while the proxies and peer links bind keeps those off the ports picked for
// etcd. Once a listener is closed for etcd to bind its port, another process
// may take the port first, which is why starting retries on "address already
// in use".
func listenFree(n int) ([]net.Listener, error) {
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closeAll(ls)
			return nil, fmt.Errorf("etcdtest: pick a free port: %w", err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		if l != nil {
			l.Close()
		}
	}
}

func port(l net.Listener) int {
	return l.Addr().(*net.TCPAddr).Port
}

// isAddrInUse reports whether err comes from binding a port that another
// listener took in the meantime.
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || (err != nil && strings.Contains(err.Error(), "address already in use"))
}
