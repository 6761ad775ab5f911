//go:build unix

package etcdtest

import (
	"os"
	"syscall"
)

var (
	termSignal   os.Signal = syscall.SIGTERM
	freezeSignal os.Signal = syscall.SIGSTOP
	thawSignal   os.Signal = syscall.SIGCONT
)
