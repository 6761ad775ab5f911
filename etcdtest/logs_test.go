package etcdtest_test

import (
	"strings"
	"testing"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/stretchr/testify/require"
)

// failedT records what a test helper logs and reports the test as failed,
// so that the members' log dump can be observed.
type failedT struct {
	exampleT
	logged []string
}

func (t *failedT) Failed() bool                    { return true }
func (t *failedT) Logf(format string, args ...any) { t.logged = append(t.logged, format) }

func TestLogsPrintedOnlyForFailedTestsThatAskForThem(t *testing.T) {
	t.Setenv("ETCDKIT_TEST_LOGS", "")
	for _, tc := range []struct {
		name string
		opts []etcdtest.Option
		want bool
	}{
		{"quiet by default", nil, false},
		{"WithLogs", []etcdtest.Option{etcdtest.WithLogs()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &failedT{}
			etcdtest.Start(ft, tc.opts...)
			ft.finish()
			got := strings.Join(ft.logged, "\n")
			require.Equal(t, tc.want, strings.Contains(got, "etcd member %s log"), "got logs %q", got)
		})
	}
}
