//go:build !linux

package etcdtest

import "syscall"

// processAttr has nothing to set where the kernel cannot tie a child's life
// to its parent's; the test's cleanup still kills every member process.
func processAttr() *syscall.SysProcAttr {
	return nil
}
