package etcdtest

import "syscall"

// processAttr makes the kernel kill a member's process if the test process
// dies without cleaning up, as on a panic or a -timeout, so that no etcd
// outlives the test that started it.
func processAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
