package robustness_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/tests/robustness"
)

func holderPut(rev int64, key string) robustness.Change {
	return robustness.Change{Rev: rev, Type: etcdkit.Put, Key: key, Value: "id", CreateRev: rev}
}

// holdingHistory is a valid history of one mutex: a holds (token 11) and
// writes twice, hands over to b (token 12), which writes once.
func holdingHistory() *robustness.History {
	return &robustness.History{
		Seed: 1, Namespace: "test", StartRev: 10, FinalRev: 19,
		Changes: []robustness.Change{
			holderPut(11, "_etcdkit/mutex/h/a"),
			holderPut(12, "_etcdkit/mutex/h/b"),
			put(13, "mutex/counter", "1"), put(13, "mutex/last", "a 11 1"),
			put(14, "mutex/counter", "2"), put(14, "mutex/last", "a 11 2"),
			del(15, "_etcdkit/mutex/h/a"),
			put(16, "mutex/counter", "3"), put(16, "mutex/last", "b 12 3"),
			del(17, "_etcdkit/mutex/h/b"),
		},
		Holdings: []*robustness.HoldingRecord{{
			Kind: "mutex", Name: "h", Limit: 1, Holders: "_etcdkit/mutex/h/", Counter: "mutex/counter", Last: "mutex/last",
			Holdings: []robustness.LeaderRecord{
				{ID: "a", Token: 11, Won: ms(10), Lost: ms(50)},
				{ID: "b", Token: 12, Won: ms(60), Lost: ms(90)},
			},
			Acked: 2, Unknown: 1,
		}},
	}
}

func TestCheckerHoldings(t *testing.T) {
	require.Empty(t, robustness.Check(holdingHistory()))
	for _, tc := range []struct {
		name   string
		break_ func(h *robustness.History)
		want   string
	}{
		{"a guarded write by a holder that was not first", func(h *robustness.History) {
			h.Changes[3].Value = "b 12 1"
		}, "with token 12, but the holders at that revision had tokens [11]"},
		{"two holdings overlap in time", func(h *robustness.History) {
			h.Holdings[0].Holdings[0].Lost = 0
		}, "2 holdings at once when b won"},
		{"a holding told it lost after the next won", func(h *robustness.History) {
			h.Holdings[0].Holdings[0].Lost = ms(300)
		}, "2 holdings at once"},
		{"a lost update", func(h *robustness.History) {
			h.Holdings[0].Acked, h.Holdings[0].Unknown = 4, 0
		}, "the counter ends at 3 after 4 acknowledged"},
		{"a counter that skips", func(h *robustness.History) {
			h.Changes[4].Value = "3"
		}, "the counter went from 1 to \"3\""},
		{"three permits of a semaphore of two", func(h *robustness.History) {
			hr := h.Holdings[0]
			hr.Kind, hr.Limit = "semaphore", 2
			hr.Holdings = append(hr.Holdings, robustness.LeaderRecord{ID: "c", Token: 13, Won: ms(20), Lost: ms(300)})
			hr.Holdings[0].Lost = 0
		}, "3 holdings at once when b won"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := holdingHistory()
			tc.break_(h)
			vs := robustness.Check(h)
			require.NotEmpty(t, vs)
			found := false
			for _, v := range vs {
				found = found || strings.Contains(v.Msg, tc.want)
			}
			assert.True(t, found, "want a violation saying %q, got %v", tc.want, vs)
		})
	}
}
