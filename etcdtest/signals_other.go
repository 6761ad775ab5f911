//go:build !unix

package etcdtest

import "os"

// Without unix signals a process member can only be killed, and Freeze
// reports that it is not supported.
var (
	termSignal   os.Signal = os.Kill
	freezeSignal os.Signal
	thawSignal   os.Signal
)
