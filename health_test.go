package etcdkit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

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

// follower returns a running member that does not lead.
func follower(t testing.TB, cl *etcdtest.Cluster, not ...*etcdtest.Server) *etcdtest.Server {
	t.Helper()
	lead := cl.WaitLeader(t)
	for _, m := range cl.Members() {
		if m != lead && m.Running() && !slices.Contains(not, m) {
			return m
		}
	}
	t.Fatal("no running follower")
	return nil
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

// TestHealthFaults drives a three-member cluster, each member behind a proxy,
// through the faults a readiness probe must tell apart: a member stopped
// (Degraded), two stopped (Unhealthy: no quorum), a member partitioned from
// its peers (Degraded: it has no leader and falls behind), and back.
func TestHealthFaults(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	c := testClient(t, cl.Endpoints(), "health")
	hm := testMonitor(t, c, etcdkit.WithMaxAppliedLag(10))
	lead := cl.WaitLeader(t)

	h := waitHealth(t, hm, "healthy", isStatus(etcdkit.Healthy))
	require.Empty(t, h.Reasons)
	require.Len(t, h.Members, 3)
	require.Equal(t, etcdkit.MemberID(lead.ID()), h.Leader, "got leader %s, want %s", h.Leader, lead.Name())
	require.Equal(t, lead.Name(), h.LeaderName)
	for i, m := range h.Members {
		want := cl.Members()[i]
		require.Equal(t, want.Name(), m.Name, "members are sorted by name")
		require.Equal(t, etcdkit.MemberID(want.ID()), m.ID)
		// The endpoints are proxies, not the members' advertised URLs: the
		// monitor maps them by asking each who it is.
		require.Equal(t, want.ProxyEndpoint(), m.Endpoint, "got endpoint %s for %s, want its proxy", m.Endpoint, m.Name)
		require.True(t, m.Reachable)
		require.NoError(t, m.Err)
		require.Equal(t, h.Leader, m.Leader)
		require.Equal(t, want == lead, m.IsLeader)
		require.Positive(t, m.ProbeLatency)
		require.Positive(t, m.RaftTerm)
		require.Positive(t, m.AppliedIndex)
		require.Positive(t, m.DBSize)
		require.NotEmpty(t, m.Version)
		require.Empty(t, m.Alarms)
	}
	code, body := serve(t, hm)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, etcdkit.Healthy, body.Status)
	require.Len(t, body.Members, 3)

	// Fault: one member stopped; its proxy stays up and closes every
	// connection. Without the monitor a client would keep working through
	// the other two and nobody would notice the lost redundancy.
	first := follower(t, cl)
	first.Stop()
	h = waitHealth(t, hm, "degraded naming "+first.Name(), isStatus(etcdkit.Degraded, "member "+first.Name()+" is unreachable"))
	m, ok := h.Member(first.Name())
	require.True(t, ok)
	require.False(t, m.Reachable)
	require.Error(t, m.Err)
	require.Equal(t, first.ProxyEndpoint(), m.Endpoint)
	code, body = serve(t, hm)
	require.Equal(t, http.StatusOK, code, "a degraded cluster still serves: ready")
	require.Equal(t, etcdkit.Degraded, body.Status)
	require.Contains(t, body.Reasons, "member "+first.Name()+" is unreachable")

	// A monitor started now has never seen the stopped member behind its
	// proxy, and the member list advertises direct URLs: it still names it.
	fresh, err := testMonitor(t, c, etcdkit.WithInterval(time.Hour)).Check(testContext(t, healthWait))
	require.NoError(t, err)
	require.Equal(t, etcdkit.Degraded, fresh.Status, describeHealth(fresh))
	require.Contains(t, fresh.Reasons, "member "+first.Name()+" is not reached by any configured endpoint")

	// Fault: a second member stopped. The last one cannot reach quorum:
	// every write would hang until its deadline.
	second := follower(t, cl, first)
	second.Stop()
	h = waitHealth(t, hm, "unhealthy without quorum", isStatus(etcdkit.Unhealthy,
		"no quorum: no member served a linearizable read",
		"member "+first.Name()+" is unreachable",
		"member "+second.Name()+" is unreachable"))
	code, body = serve(t, hm)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, etcdkit.Unhealthy, body.Status)

	require.NoError(t, first.Restart())
	require.NoError(t, second.Restart())
	cl.WaitLeader(t)
	waitHealth(t, hm, "healthy after restarts", isStatus(etcdkit.Healthy))

	// Fault: a follower cut off from its peers (raft traffic dropped), its
	// client port still open. It answers status requests but has no leader,
	// cannot serve linearizable reads and falls behind the writes below.
	cut := follower(t, cl)
	cut.Partition()
	h = waitHealth(t, hm, "degraded, "+cut.Name()+" without leader", isStatus(etcdkit.Degraded, "member "+cut.Name()+" has no leader"))
	m, _ = h.Member(cut.Name())
	require.True(t, m.Reachable)
	require.Zero(t, m.Leader)
	require.ErrorIs(t, m.Err, rpctypes.ErrNoLeader)
	ctx := testContext(t, healthWait)
	writer := cl.WaitLeader(t).Client(t) // not through the cut member
	for i := range 20 {
		_, err := writer.Put(ctx, fmt.Sprintf("health/lag/%d", i), "x")
		require.NoError(t, err)
	}
	waitHealth(t, hm, cut.Name()+" lagging", isStatus(etcdkit.Degraded, "member "+cut.Name()+" lags the leader by more than 10 applied entries"))
	cut.Heal()
	waitHealth(t, hm, "healthy after heal", isStatus(etcdkit.Healthy))
}

// TestHealthUnreachedMember configures a client with two of three members:
// the third is in the member list but no endpoint reaches it.
func TestHealthUnreachedMember(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3)
	cl.WaitLeader(t)
	c := testClient(t, cl.Endpoints()[:2], "health")
	hm := testMonitor(t, c)
	h, err := hm.Check(testContext(t, healthWait))
	require.NoError(t, err)
	require.Equal(t, etcdkit.Degraded, h.Status, describeHealth(h))
	require.Equal(t, []string{"member m2 is not reached by any configured endpoint"}, h.Reasons)
	m, ok := h.Member("m2")
	require.True(t, ok)
	require.False(t, m.Reachable)
	require.Empty(t, m.Endpoint)
	require.Error(t, m.Err)
}

// TestHealthNoSpace fills a cluster whose members have a tiny backend quota
// until etcd raises the NOSPACE alarm: from then on every write fails, so
// the cluster is Unhealthy even though all members are up. Disarming the
// alarm makes it Healthy again.
func TestHealthNoSpace(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithQuotaBackendBytes(1<<20))
	cl.WaitLeader(t)
	c := testClient(t, cl.Endpoints(), "health")
	hm := testMonitor(t, c)
	waitHealth(t, hm, "healthy", isStatus(etcdkit.Healthy))

	ctx := testContext(t, healthWait)
	value := strings.Repeat("x", 64<<10)
	var err error
	for i := 0; err == nil; i++ {
		require.Less(t, i, 200, "quota never exceeded")
		_, err = c.Raw().Put(ctx, fmt.Sprintf("health/fill/%d", i), value)
	}
	require.ErrorIs(t, err, rpctypes.ErrNoSpace, "got %v, want mvcc: database space exceeded", err)

	h := waitHealth(t, hm, "unhealthy with NOSPACE", func(h etcdkit.ClusterHealth) bool {
		return h.Status == etcdkit.Unhealthy && slices.ContainsFunc(h.Reasons, func(r string) bool { return strings.Contains(r, "NOSPACE") })
	})
	var alarmed []string
	for _, m := range h.Members {
		if slices.Contains(m.Alarms, "NOSPACE") {
			alarmed = append(alarmed, m.Name)
			require.Contains(t, h.Reasons, "member "+m.Name+" raised a NOSPACE alarm: the cluster refuses writes until it is disarmed")
		}
	}
	require.NotEmpty(t, alarmed, describeHealth(h))
	code, body := serve(t, hm)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, etcdkit.Unhealthy, body.Status)

	_, err = c.Raw().AlarmDisarm(ctx, &clientv3.AlarmMember{})
	require.NoError(t, err)
	waitHealth(t, hm, "healthy after disarm", isStatus(etcdkit.Healthy))
	code, _ = serve(t, hm)
	require.Equal(t, http.StatusOK, code)
}

// TestHealthUpdates checks that Updates carries a result only when the state
// changes, keeps the latest for a slow reader, and never holds up the
// checks.
func TestHealthUpdates(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClient(t, []string{srv.ProxyEndpoint()}, "health")
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

// A service mounts the monitor as its readiness probe and logs every change
// of the cluster's health.
func ExampleNewHealthMonitor() {
	ctx := context.Background()
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:2379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	hm := etcdkit.NewHealthMonitor(c, etcdkit.WithInterval(5*time.Second))
	defer hm.Close()
	http.Handle("/readyz", hm)
	go func() {
		for h := range hm.Updates() {
			log.Printf("etcd is %v: %s", h.Status, strings.Join(h.Reasons, "; "))
		}
	}()
}

// A monitor made without a Client has ended with an error that says so; its
// methods answer without a panic.
func TestHealthMonitorNilClient(t *testing.T) {
	hm := etcdkit.NewHealthMonitor(nil)
	waitDone(t, hm.Done(), "monitor")
	require.ErrorContains(t, hm.Err(), "nil client")
	_, err := hm.Check(context.Background())
	require.ErrorContains(t, err, "nil client")
	_ = hm.Current()
	_, open := <-hm.Updates()
	require.False(t, open)
	require.NoError(t, hm.Close())
}
