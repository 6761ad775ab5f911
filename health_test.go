package etcdkit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// healthWait bounds every wait for the monitor to see a change: a stop,
// restart or election on a loaded machine under -race takes seconds.
const healthWait = 25 * time.Second

// testMonitor starts a monitor that checks every 100ms, closed by the test's
// cleanup.
func testMonitor(t testing.TB, c *etcdkit.Client, opts ...etcdkit.HealthOption) *etcdkit.HealthMonitor {
	t.Helper()
	opts = append([]etcdkit.HealthOption{etcdkit.WithInterval(100 * time.Millisecond), etcdkit.WithProbeTimeout(time.Second)}, opts...)
	hm := etcdkit.NewHealthMonitor(c, opts...)
	t.Cleanup(func() { _ = hm.Close() })
	return hm
}

// waitHealth waits until the monitor's current result satisfies ok and
// returns it; on timeout it fails with the last result.
func waitHealth(t testing.TB, hm *etcdkit.HealthMonitor, what string, ok func(etcdkit.ClusterHealth) bool) etcdkit.ClusterHealth {
	t.Helper()
	var last etcdkit.ClusterHealth
	deadline := time.Now().Add(healthWait)
	for time.Now().Before(deadline) {
		last = hm.Current()
		if ok(last) {
			return last
		}
		select {
		case <-hm.Done():
			t.Fatalf("monitor ended while waiting for %s: %v", what, hm.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("got %s, want %s", describeHealth(last), what)
	return last
}

func isStatus(want etcdkit.HealthStatus, reasons ...string) func(etcdkit.ClusterHealth) bool {
	return func(h etcdkit.ClusterHealth) bool {
		if h.Status != want {
			return false
		}
		for _, r := range reasons {
			if !slices.Contains(h.Reasons, r) {
				return false
			}
		}
		return true
	}
}

func describeHealth(h etcdkit.ClusterHealth) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v %q; members:", h.Status, h.Reasons)
	for _, m := range h.Members {
		fmt.Fprintf(&b, " [%s reachable=%v leader=%s err=%v]", m.Name, m.Reachable, m.Leader, m.Err)
	}
	return b.String()
}

// serve runs the monitor's handler once and decodes its JSON.
func serve(t testing.TB, hm *etcdkit.HealthMonitor) (int, etcdkit.ClusterHealth) {
	t.Helper()
	rec := httptest.NewRecorder()
	hm.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var h etcdkit.ClusterHealth
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &h), "body: %s", rec.Body.String())
	return rec.Code, h
}

// TestHealthUpdates checks that Updates carries a result only when the state
// changes, keeps the latest for a slow reader, and never holds up the
// checks.
func TestHealthUpdates(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "health")
	hm := testMonitor(t, c)

	first := receive(t, hm)
	require.Equal(t, etcdkit.Healthy, first.Status, describeHealth(first))

	// Many more checks of an unchanged cluster publish nothing.
	waitChecks(t, hm, 5)
	select {
	case h := <-hm.Updates():
		t.Fatalf("got update %s with no change, want none", describeHealth(h))
	default:
	}

	// Fault: the only member stopped. Nobody reads Updates meanwhile: the
	// checks go on and the channel keeps the newest result.
	srv.Stop()
	waitHealth(t, hm, "unhealthy", isStatus(etcdkit.Unhealthy))
	waitChecks(t, hm, 3)
	h := receive(t, hm)
	require.Equal(t, etcdkit.Unhealthy, h.Status, describeHealth(h))
	require.Contains(t, h.Reasons, "member m0 is unreachable")

	require.NoError(t, srv.Restart())
	h = receive(t, hm)
	for h.Status != etcdkit.Healthy {
		prev := h
		h = receive(t, hm)
		require.False(t, prev.Status == h.Status && slices.Equal(prev.Reasons, h.Reasons), "got the same state twice: %s", describeHealth(h))
	}
}

// receive waits for the next update.
func receive(t testing.TB, hm *etcdkit.HealthMonitor) etcdkit.ClusterHealth {
	t.Helper()
	select {
	case h, ok := <-hm.Updates():
		require.True(t, ok, "Updates closed: %v", hm.Err())
		return h
	case <-time.After(healthWait):
		t.Fatalf("no update within %v; current: %s", healthWait, describeHealth(hm.Current()))
		return etcdkit.ClusterHealth{}
	}
}

// waitChecks waits until the background loop has completed n more checks.
func waitChecks(t testing.TB, hm *etcdkit.HealthMonitor, n int) {
	t.Helper()
	last := hm.Current().CheckedAt
	for range n {
		waitHealth(t, hm, "another check", func(h etcdkit.ClusterHealth) bool { return h.CheckedAt.After(last) })
		last = hm.Current().CheckedAt
	}
}

// TestHealthClose checks how a monitor ends: by Close or by closing its
// client, with Done, Err, Updates, Check and the HTTP handler agreeing.
func TestHealthClose(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "health")

	hm := testMonitor(t, c)
	receive(t, hm)
	require.NoError(t, hm.Close())
	require.NoError(t, hm.Close(), "Close is idempotent")
	<-hm.Done()
	require.ErrorIs(t, hm.Err(), etcdkit.ErrClosed)
	_, open := <-hm.Updates()
	require.False(t, open, "Updates still open after Close")
	_, err := hm.Check(testContext(t, healthWait))
	require.ErrorIs(t, err, etcdkit.ErrClosed)
	code, body := serve(t, hm)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, etcdkit.HealthUnknown, body.Status)

	// Closing the client ends its monitors, even in the middle of a check.
	c2 := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	hm2 := testMonitor(t, c2)
	errs := make(chan error, 1)
	go func() {
		_, err := hm2.Check(context.Background())
		errs <- err
	}()
	require.NoError(t, c2.Close())
	select {
	case <-hm2.Done():
	case <-time.After(healthWait):
		t.Fatal("monitor still running after its client was closed")
	}
	require.ErrorIs(t, hm2.Err(), etcdkit.ErrClosed)
	err = <-errs
	require.True(t, err == nil || errors.Is(err, etcdkit.ErrClosed), "got %v, want nil or ErrClosed", err)

	// A monitor on a closed client has ended from the start.
	hm3 := etcdkit.NewHealthMonitor(c2)
	<-hm3.Done()
	require.ErrorIs(t, hm3.Err(), etcdkit.ErrClosed)
}

func TestHealthInvalidOptions(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "")
	for name, opt := range map[string]etcdkit.HealthOption{
		"zero interval":          etcdkit.WithInterval(0),
		"negative probe timeout": etcdkit.WithProbeTimeout(-time.Second),
		"nil":                    nil,
	} {
		t.Run(name, func(t *testing.T) {
			hm := etcdkit.NewHealthMonitor(c, opt)
			<-hm.Done()
			require.Error(t, hm.Err())
			require.NotErrorIs(t, hm.Err(), etcdkit.ErrClosed)
			_, err := hm.Check(context.Background())
			require.Equal(t, hm.Err(), err)
			code, _ := serve(t, hm)
			require.Equal(t, http.StatusServiceUnavailable, code)
			require.NoError(t, hm.Close())
		})
	}
}

func TestHealthJSON(t *testing.T) {
	in := etcdkit.ClusterHealth{
		Status:     etcdkit.Degraded,
		Reasons:    []string{"member m1 is unreachable"},
		Leader:     0x8e9e05c52164694d,
		LeaderName: "m0",
		Members: []etcdkit.MemberHealth{
			{ID: 0x8e9e05c52164694d, Name: "m0", Reachable: true, Leader: 0x8e9e05c52164694d, IsLeader: true, Alarms: []string{"CORRUPT"}},
			{ID: 0x1, Name: "m1", Err: errors.New("connection refused")},
		},
	}
	b, err := json.Marshal(in)
	require.NoError(t, err)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	require.Equal(t, "degraded", raw["status"])
	require.Equal(t, "8e9e05c52164694d", raw["leader"])
	members := raw["members"].([]any)
	require.Equal(t, "connection refused", members[1].(map[string]any)["error"])
	require.NotContains(t, members[0].(map[string]any), "error")

	var out etcdkit.ClusterHealth
	require.NoError(t, json.Unmarshal(b, &out))
	require.Equal(t, in.Status, out.Status)
	require.Equal(t, in.Leader, out.Leader)
	require.EqualError(t, out.Members[1].Err, "connection refused")
	require.Equal(t, []string{"CORRUPT"}, out.Members[0].Alarms)
}
