// Command etcd is the etcd 3.5 server, built from the Go module proxy so that
// the etcdkit test suite can run against real server processes of that
// release (see .ci/etcd-binaries). The pinned version is in go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
