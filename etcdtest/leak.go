package etcdtest

import "go.uber.org/goleak"

// LeakOptions returns the goleak options that a TestMain using etcdtest must
// pass to goleak.VerifyTestMain:
//
//	func TestMain(m *testing.M) {
//		goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
//	}
//
// The options may ignore only goroutines that embedded etcd and its
// dependencies start once per process and never stop; every goroutine of a
// member, proxy, peer link or client ends before the test's cleanup
// returns, and is reported if it leaks. With etcd v3.7 none are needed, so
// the list is empty; TestMains pass it anyway so that they keep working if
// a later etcd, gRPC or OpenTelemetry version adds such a goroutine.
func LeakOptions() []goleak.Option {
	return nil
}
