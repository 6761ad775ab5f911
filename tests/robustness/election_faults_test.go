package robustness_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
	"github.com/etcdkit/etcdkit/tests/robustness"
)

// TestElectionRandomizedFaults runs three candidates, each on its own
// member's proxy, that increment a counter with guarded writes while faults
// hit them: resignations, revoked leases (a session killed), FIN and RST on
// a candidate's connections, short blackholes that only suspend a session,
// long ones that depose the leader, and a leader's requests held by its
// proxy past the TTL and delivered once another leader has written (the
// deposed leader's late writes). Each increment reads the counter and
// writes counter+1 together with a log key of its own, guarded by its
// token. Whatever the faults, the log must show the counter going 1, 2, 3...
// in revision order (no write ever based on a stale read, so no two leaders
// at once), every acknowledged write present, and tokens that never go
// backwards.
//
// Unlike TestRobustness, whose Elections workload runs under a generated
// schedule and is checked from the recorded history, this test drives its
// own faults at the election (resigning and revoking leases as well as
// proxy faults) and checks the guarded counter directly.
//
// The seed is printed; ETCDKIT_ELECTION_SEED replays a sequence of faults
// (their timing relative to the candidates' work still varies), and
// ETCDKIT_ELECTION_ROUNDS changes the number of rounds (default 200).
func TestElectionRandomizedFaults(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("ETCDKIT_ELECTION_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseInt(s, 10, 64)
		require.NoError(t, err, "ETCDKIT_ELECTION_SEED")
	}
	rounds := 200
	if s := os.Getenv("ETCDKIT_ELECTION_ROUNDS"); s != "" {
		var err error
		rounds, err = strconv.Atoi(s)
		require.NoError(t, err, "ETCDKIT_ELECTION_ROUNDS")
	}
	t.Logf("seed %d, %d rounds", seed, rounds)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay with ETCDKIT_ELECTION_SEED=%d", seed)
		}
	})
	rng := robustness.RandSource{Rand: robustness.NewRand(seed, "election faults")}

	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	members := cl.Members()
	raw := cl.Client(t)
	const ns, ttl = "rnd", 2 * time.Second
	clients := memberClients(t, cl, etcdkit.Config{Namespace: ns, RequestTimeout: time.Second})
	judge := etcdkit.NewElection(newClient(t, etcdkit.Config{Endpoints: cl.DirectEndpoints(), Namespace: ns}), "svc", ttl)
	counterKey := ns + "/counter"
	// The candidate keys of election "svc", as documented on Election.
	candidatesPrefix := ns + "/_etcdkit/election/svc/"

	type attempt struct {
		key string
		ok  bool
	}
	var (
		mu       sync.Mutex
		attempts []attempt
	)
	resign := make([]chan struct{}, len(clients))
	runErrs := make([]error, len(clients))
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for i, c := range clients {
		resign[i] = make(chan struct{}, 1)
		e := etcdkit.NewElection(c, "svc", ttl)
		seq := 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace := time.NewTimer(0)
			defer pace.Stop()
			runErrs[i] = e.Run(ctx, fmt.Sprintf("c%d", i), func(lctx context.Context) error {
				l := etcdkit.LeadershipFrom(lctx)
				for {
					pace.Reset(2 * time.Millisecond) // pacing, to leave the CPU to the cluster
					select {
					case <-lctx.Done():
						return lctx.Err()
					case <-resign[i]:
						return nil
					case <-pace.C:
					}
					rctx, cancel := context.WithTimeout(lctx, time.Second)
					resp, err := c.Raw().Get(rctx, counterKey)
					cancel()
					if err != nil {
						continue
					}
					n := 0
					if len(resp.Kvs) > 0 {
						n, _ = strconv.Atoi(string(resp.Kvs[0].Value))
					}
					seq++
					logKey := fmt.Sprintf("%s/log/c%d-%06d", ns, i, seq)
					_, err = l.Txn(context.Background(),
						clientv3.OpPut(counterKey, strconv.Itoa(n+1)),
						clientv3.OpPut(logKey, fmt.Sprintf("%d %d", n+1, l.Token())))
					mu.Lock()
					attempts = append(attempts, attempt{key: logKey, ok: err == nil})
					mu.Unlock()
				}
			})
		}()
	}

	leader := func() int {
		lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		li, err := judge.Leader(lctx)
		if err != nil {
			return -1
		}
		return candidateIndex(t, li.ID)
	}
	// Sleeps below are part of the fault schedule, not synchronisation.
	between := rng.Duration
	type fault struct {
		name   string
		weight int
		do     func()
	}
	faults := []fault{
		{"resign", 15, func() {
			if i := leader(); i >= 0 {
				select {
				case resign[i] <- struct{}{}:
				default:
				}
			}
		}},
		{"revoke the leader's lease", 10, func() {
			lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if li, err := judge.Leader(lctx); err == nil {
				_, _ = raw.Revoke(lctx, clientv3.LeaseID(li.Lease))
			}
		}},
		{"revoke a waiting candidate's lease", 8, func() {
			lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			resp, err := raw.Get(lctx, candidatesPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
			if err == nil && len(resp.Kvs) > 1 {
				kv := resp.Kvs[1+rng.IntN(len(resp.Kvs)-1)]
				_, _ = raw.Revoke(lctx, clientv3.LeaseID(kv.Lease))
			}
		}},
		{"close a candidate's connections (FIN)", 12, func() { members[rng.IntN(3)].Proxy().CloseConns() }},
		{"reset a candidate's connections (RST)", 10, func() { members[rng.IntN(3)].Proxy().ResetConns() }},
		{"short blackhole", 25, func() {
			p := members[rng.IntN(3)].Proxy()
			p.Blackhole(proxy.Both)
			time.Sleep(between(50*time.Millisecond, 400*time.Millisecond))
			p.Unblackhole()
		}},
		{"blackhole the leader past its TTL", 2, func() {
			i := leader()
			if i < 0 {
				return
			}
			p := members[i].Proxy()
			p.Blackhole(proxy.Both)
			time.Sleep(between(ttl+200*time.Millisecond, ttl+800*time.Millisecond))
			p.Unblackhole()
		}},
		{"hold the leader's requests past its TTL, then deliver them", 2, func() {
			// Proxy Pause loses nothing: requests the leader sent while
			// cut off reach the cluster after another leader has written.
			i := leader()
			if i < 0 {
				return
			}
			p := members[i].Proxy()
			p.Pause(proxy.Upstream)
			time.Sleep(between(ttl+500*time.Millisecond, ttl+time.Second))
			p.Resume()
		}},
		{"pause", 10, func() { time.Sleep(between(50*time.Millisecond, 150*time.Millisecond)) }},
	}
	total := 0
	for _, f := range faults {
		total += f.weight
	}
	counts := map[string]int{}
	start := time.Now()
	for range rounds {
		pick := rng.IntN(total)
		for _, f := range faults {
			if pick < f.weight {
				counts[f.name]++
				f.do()
				break
			}
			pick -= f.weight
		}
		time.Sleep(between(10*time.Millisecond, 100*time.Millisecond))
	}
	stop()
	wg.Wait()
	t.Logf("%d rounds in %v: %v", rounds, time.Since(start).Round(time.Millisecond), counts)
	for i, err := range runErrs {
		assert.ErrorIs(t, err, context.Canceled, "Run of c%d", i)
	}

	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := raw.Get(rctx, counterKey)
	require.NoError(t, err)
	counter := 0
	if len(resp.Kvs) > 0 {
		counter, err = strconv.Atoi(string(resp.Kvs[0].Value))
		require.NoError(t, err)
	}
	logs, err := raw.Get(rctx, ns+"/log/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend))
	require.NoError(t, err)
	require.Equal(t, counter, len(logs.Kvs), "the counter equals the number of guarded writes that applied: lost updates")
	landed := map[string]bool{}
	tokens := map[int64]bool{}
	var prev int64
	for j, kv := range logs.Kvs {
		var n int
		var token int64
		_, err := fmt.Sscanf(string(kv.Value), "%d %d", &n, &token)
		require.NoError(t, err)
		require.Equal(t, j+1, n, "write %s at revision %d was based on a stale read: two leaders wrote at once", kv.Key, kv.ModRevision)
		require.GreaterOrEqual(t, token, prev, "write %s at revision %d carries token %d after token %d", kv.Key, kv.ModRevision, token, prev)
		prev = token
		tokens[token] = true
		landed[string(kv.Key)] = true
	}
	mu.Lock()
	defer mu.Unlock()
	acked, failed, failedLanded := 0, 0, 0
	tried := map[string]bool{}
	for _, a := range attempts {
		tried[a.key] = true
		switch {
		case a.ok:
			acked++
			assert.True(t, landed[a.key], "acknowledged write %s is missing", a.key)
		case landed[a.key]:
			failed++
			failedLanded++
		default:
			failed++
		}
	}
	for k := range landed {
		assert.True(t, tried[k], "write %s was never attempted", k)
	}
	t.Logf("counter %d: %d acknowledged guarded writes, %d failed (%d of them applied: outcome unknown to the writer), %d leaderships wrote",
		counter, acked, failed, failedLanded, len(tokens))
	assert.Equal(t, counter, acked+failedLanded)
	assert.Positive(t, acked)
	assert.Greater(t, len(tokens), 5, "faults changed the leader several times")
}

// newClient connects an etcdkit client with cfg and closes it when the test
// ends.
func newClient(t testing.TB, cfg etcdkit.Config) *etcdkit.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := etcdkit.New(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// memberClients returns one client per member of cl, each whose only
// endpoint is that member's proxy, so that a fault on one proxy cuts off
// exactly one client.
func memberClients(t testing.TB, cl *etcdtest.Cluster, cfg etcdkit.Config) []*etcdkit.Client {
	t.Helper()
	var cs []*etcdkit.Client
	for _, m := range cl.Members() {
		cfg := cfg
		cfg.Endpoints = []string{m.ProxyEndpoint()}
		cs = append(cs, newClient(t, cfg))
	}
	return cs
}

// candidateIndex returns the candidate index of id "c<i>".
func candidateIndex(t testing.TB, id string) int {
	t.Helper()
	var i int
	_, err := fmt.Sscanf(id, "c%d", &i)
	require.NoError(t, err)
	return i
}
