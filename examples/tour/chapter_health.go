package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

func init() {
	register(60, "Cluster health: a readiness probe that names the member in trouble", healthChapter)
}

// healthWait bounds each wait for the monitor to see a change.
const healthWait = 30 * time.Second

func healthChapter(ctx context.Context, tr *tour) error {
	c, err := tr.client(ctx)
	if err != nil {
		return err
	}
	hm := etcdkit.NewHealthMonitor(c, etcdkit.WithInterval(200*time.Millisecond), etcdkit.WithProbeTimeout(time.Second))
	defer hm.Close()

	h, err := nextHealth(ctx, hm, func(h etcdkit.ClusterHealth) bool { return h.Status != etcdkit.HealthUnknown })
	if err != nil {
		return err
	}
	tr.say("A HealthMonitor asks every endpoint which member it reaches (the tour's endpoints are proxies, so their addresses")
	tr.say("are not the members' own), reads through each one linearizably, and finds the cluster %v with leader %s:", h.Status, h.LeaderName)
	for _, m := range h.Members {
		tr.say("  %s via %s: leader %s, term %d, applied %d (lag %d), linearizable read in %v, db %d KiB, etcd %s",
			m.Name, m.Endpoint, m.Leader, m.RaftTerm, m.AppliedIndex, m.AppliedLag, m.ProbeLatency.Round(time.Microsecond), m.DBSize>>10, m.Version)
	}

	// The monitor is an http.Handler: mount it where the orchestrator's
	// readiness probe looks.
	srv := httptest.NewServer(hm)
	defer srv.Close()
	code, body, err := probe(ctx, srv.URL)
	if err != nil {
		return err
	}
	tr.say("GET on its handler, as a readiness probe would: %d %s", code, body)

	if !tr.faults() {
		tr.say("Against a real cluster the tour stops no member. When one fails, Updates delivers Degraded with a reason")
		tr.say("naming it (the cluster still serves: the probe stays 200), then Healthy once it is back; without quorum,")
		tr.say("without a leader or with a NOSPACE alarm it is Unhealthy and the probe answers 503.")
		return nil
	}

	victim := aFollower(tr.cluster)
	tr.say("Fault: stopping member %s. Its proxy keeps listening and closes every connection, as a dead host behind a load balancer would.", victim.Name())
	victim.Stop()
	h, err = nextHealth(ctx, hm, func(h etcdkit.ClusterHealth) bool { return h.Status == etcdkit.Degraded })
	if err != nil {
		return err
	}
	tr.say("Updates: %v, because %q.", h.Status, h.Reasons)
	code, _, err = probe(ctx, srv.URL)
	if err != nil {
		return err
	}
	tr.say("The cluster still has quorum and serves writes, so the readiness probe still answers %d; the reason tells an operator what to fix.", code)

	if err := victim.Restart(); err != nil {
		return err
	}
	h, err = nextHealth(ctx, hm, func(h etcdkit.ClusterHealth) bool { return h.Status == etcdkit.Healthy })
	if err != nil {
		return err
	}
	tr.say("Member %s restarted; Updates: %v, no reasons. Updates carries only changes: the checks in between published nothing.", victim.Name(), h.Status)
	return nil
}

// nextHealth reads Updates until a result satisfies ok.
func nextHealth(ctx context.Context, hm *etcdkit.HealthMonitor, ok func(etcdkit.ClusterHealth) bool) (etcdkit.ClusterHealth, error) {
	ctx, cancel := context.WithTimeout(ctx, healthWait)
	defer cancel()
	for {
		select {
		case h, open := <-hm.Updates():
			if !open {
				return etcdkit.ClusterHealth{}, fmt.Errorf("health monitor ended: %w", hm.Err())
			}
			if ok(h) {
				return h, nil
			}
		case <-ctx.Done():
			cur := hm.Current()
			return cur, fmt.Errorf("health monitor still says %v %q: %w", cur.Status, cur.Reasons, ctx.Err())
		}
	}
}

// probe GETs url and returns the status code and the start of the body.
func probe(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 80))
	if err != nil {
		return 0, "", err
	}
	return resp.StatusCode, string(body) + "...", nil
}

// aFollower returns a running member that does not lead, so that stopping
// it costs no election.
func aFollower(cl *etcdtest.Cluster) *etcdtest.Server {
	lead := cl.Leader()
	for _, m := range cl.Members() {
		if m != lead && m.Running() {
			return m
		}
	}
	return cl.Members()[0]
}
