package etcdkit_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}
