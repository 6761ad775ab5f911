package etcdtest_test

import (
	"testing"

	"github.com/etcdkit/etcdkit/etcdtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}
