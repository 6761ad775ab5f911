package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/proxy"
)

func init() {
	register(40, "Service discovery: instances register, a tracker follows them, gRPC balances over them through the resolver", discoveryChapter)
}

// discoveryWait bounds each wait for a view or a call in the chapter.
const discoveryWait = 30 * time.Second

// APIInfo is what an API instance publishes besides its address.
type APIInfo struct {
	Version string `json:"version"`
	Zone    string `json:"zone"`
}

// apiServer is one instance: a gRPC server on 127.0.0.1 and its
// registration.
type apiServer struct {
	id   string
	addr string
	srv  *grpc.Server
	done chan struct{}
	reg  *etcdkit.Registration[APIInfo]
}

func (a *apiServer) stop() {
	a.srv.Stop()
	<-a.done
	if a.reg != nil {
		_ = a.reg.Close()
	}
}

func discoveryChapter(ctx context.Context, tr *tour) error {
	const ttl = 2 * time.Second
	const name = "discovery/api"
	// The instances reach the cluster through the first two members'
	// proxies; api-3, which will die silently, through the third alone, so
	// that cutting that proxy cuts off api-3 and nobody else. The gateway
	// side (tracker and gRPC client) goes around the proxies.
	nodeEps, mortalEps := tr.endpoints, tr.endpoints
	if tr.faults() {
		m := tr.cluster.Members()
		nodeEps, mortalEps = []string{m[0].ProxyEndpoint(), m[1].ProxyEndpoint()}, []string{m[2].ProxyEndpoint()}
	}
	nodes, err := tr.dial(ctx, nodeEps)
	if err != nil {
		return err
	}
	mortal, err := tr.dial(ctx, mortalEps)
	if err != nil {
		return err
	}
	gateway, err := tr.directClient(ctx)
	if err != nil {
		return err
	}

	byAddr := map[string]string{}
	var servers []*apiServer
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	start := func(c *etcdkit.Client, id string, info APIInfo) (*apiServer, error) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		s := &apiServer{id: id, addr: lis.Addr().String(), srv: grpc.NewServer(), done: make(chan struct{})}
		healthpb.RegisterHealthServer(s.srv, health.NewServer())
		go func() {
			defer close(s.done)
			_ = s.srv.Serve(lis)
		}()
		servers = append(servers, s)
		byAddr[s.addr] = id
		s.reg, err = etcdkit.NewService(c, name, etcdkit.JSON[APIInfo]()).Register(ctx,
			etcdkit.Instance[APIInfo]{ID: id, Addr: s.addr, Meta: info}, ttl)
		return s, err
	}

	svc := etcdkit.NewService(gateway, name, etcdkit.JSON[APIInfo]())
	tracker, err := svc.Track(ctx)
	if err != nil {
		return err
	}
	defer tracker.Close()

	if _, err := start(nodes, "api-1", APIInfo{Version: "v1", Zone: "zone-a"}); err != nil {
		return err
	}
	api2, err := start(nodes, "api-2", APIInfo{Version: "v1", Zone: "zone-b"})
	if err != nil {
		return err
	}
	api3, err := start(mortal, "api-3", APIInfo{Version: "v1", Zone: "zone-c"})
	if err != nil {
		return err
	}
	view, _, err := discoveryView(ctx, tracker, "api-1", "api-2", "api-3")
	if err != nil {
		return err
	}
	tr.say("Three gRPC servers on 127.0.0.1 Register as %q with a %v TTL: each is an Ephemeral key of its own,", name, ttl)
	tr.say("created only if the ID is free. A Tracker on the gateway's side sees %s.", discoveryDescribe(view))

	conn, err := grpc.NewClient(svc.Target(),
		grpc.WithResolvers(gateway.ResolverBuilder()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	calls, err := discoveryUntil(ctx, hc, byAddr, 6, "api-1", "api-2", "api-3")
	if err != nil {
		return err
	}
	tr.say("A gRPC client dials %s with the resolver from Client.ResolverBuilder and round_robin.", svc.Target())
	tr.say("Once it has connected to all three, 6 health checks are answered by %s. Each endpoint also carries", calls)
	tr.say("the instance's metadata, under ResolverAttributeKey, for a balancer that wants it.")

	other, err := tr.directClient(ctx)
	if err != nil {
		return err
	}
	_, err = etcdkit.NewService(other, name, etcdkit.JSON[APIInfo]()).Register(ctx,
		etcdkit.Instance[APIInfo]{ID: "api-2", Addr: "127.0.0.1:9", Meta: APIInfo{Version: "v0"}}, ttl)
	if err == nil {
		return fmt.Errorf("a second api-2 was registered")
	}
	tr.say("A misconfigured process registers api-2 again and is refused, instead of overwriting the live one:")
	tr.say("  %v", err)

	closed := time.Now()
	if err := api2.reg.Close(); err != nil {
		return err
	}
	if _, _, err := discoveryView(ctx, tracker, "api-1", "api-3"); err != nil {
		return err
	}
	seen := time.Since(closed)
	if calls, err = discoveryAfter(ctx, hc, byAddr, "api-2", 6); err != nil {
		return err
	}
	tr.say("api-2 shuts down: Close revokes its lease, the tracker drops it %v later, and gRPC stops", seen.Round(time.Millisecond))
	tr.say("sending it calls: %s.", calls)

	if tr.faults() {
		tr.say("Fault: api-3's machine freezes. Its gRPC server stops and its link to etcd goes silent (blackhole):")
		tr.say("no goodbye, no error, no FIN.")
		died := time.Now()
		api3.srv.Stop()
		<-api3.done
		link := tr.cluster.Members()[2].Proxy()
		link.Blackhole(proxy.Both)
		if calls, err = discoveryCalls(ctx, hc, byAddr, 6); err != nil {
			link.Unblackhole()
			return err
		}
		tr.say("gRPC itself routes around the dead connection at once: %s.", calls)
		if _, _, err := discoveryView(ctx, tracker, "api-1"); err != nil {
			link.Unblackhole()
			return err
		}
		tr.say("%v after the freeze the server expires api-3's lease and the tracker drops it; nothing refreshed a",
			time.Since(died).Round(10*time.Millisecond))
		tr.say("heartbeat by hand, and the gateway never had to notice a failed call to forget the instance.")
		// Once the link heals, a live Registration would publish api-3
		// again; this one is gone for good.
		_ = api3.reg.Close()
		link.Unblackhole()
	} else {
		tr.say("Against a real cluster the tour cuts no link. An instance whose machine freezes disappears from the")
		tr.say("tracker and the resolver within its TTL, when the server expires its lease; here api-3 just leaves.")
		if err := api3.reg.Close(); err != nil {
			return err
		}
		if _, _, err := discoveryView(ctx, tracker, "api-1"); err != nil {
			return err
		}
	}

	if _, err := start(nodes, "api-4", APIInfo{Version: "v2", Zone: "zone-c"}); err != nil {
		return err
	}
	if view, _, err = discoveryView(ctx, tracker, "api-1", "api-4"); err != nil {
		return err
	}
	if calls, err = discoveryUntil(ctx, hc, byAddr, 6, "api-4"); err != nil {
		return err
	}
	tr.say("api-4 registers: the tracker sees %s,", discoveryDescribe(view))
	tr.say("and the next calls reach it: %s.", calls)
	return nil
}

// discoveryView waits until the tracker's view holds exactly ids and
// returns it with how long that took.
func discoveryView(ctx context.Context, tracker *etcdkit.Tracker[APIInfo], ids ...string) ([]etcdkit.Instance[APIInfo], time.Duration, error) {
	start := time.Now()
	timeout := time.After(discoveryWait)
	for {
		view := tracker.Instances()
		got := make([]string, len(view))
		for i, in := range view {
			got[i] = in.ID
		}
		if slices.Equal(got, ids) {
			return view, time.Since(start), nil
		}
		select {
		case _, ok := <-tracker.Updates():
			if !ok {
				return nil, 0, fmt.Errorf("tracker ended: %w", tracker.Err())
			}
		case <-timeout:
			return nil, 0, fmt.Errorf("tracker view %v, want %v after %v", got, ids, discoveryWait)
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

func discoveryDescribe(view []etcdkit.Instance[APIInfo]) string {
	var parts []string
	for _, in := range view {
		parts = append(parts, fmt.Sprintf("%s at %s %+v", in.ID, in.Addr, in.Meta))
	}
	return strings.Join(parts, ", ")
}

// discoveryCall makes one health check and returns which instance answered.
// A call that was already on its way to an instance whose server just
// stopped fails with Unavailable before gRPC has seen the connection close;
// like any client with a retry policy, it is made again.
func discoveryCall(ctx context.Context, hc healthpb.HealthClient, byAddr map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, discoveryWait)
	defer cancel()
	for {
		var p peer.Peer
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
		if err == nil {
			return byAddr[p.Addr.String()], nil
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return "", err
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return "", err
		}
	}
}

// discoveryCalls makes n calls and says who answered how many.
func discoveryCalls(ctx context.Context, hc healthpb.HealthClient, byAddr map[string]string, n int) (string, error) {
	counts := map[string]int{}
	for range n {
		id, err := discoveryCall(ctx, hc, byAddr)
		if err != nil {
			return "", err
		}
		counts[id]++
	}
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s×%d", id, counts[id]))
	}
	return strings.Join(parts, " "), nil
}

// discoveryAfter waits until the balancer has dropped gone (the resolver's
// update reaches it a moment after the tracker's), then makes n calls.
func discoveryAfter(ctx context.Context, hc healthpb.HealthClient, byAddr map[string]string, gone string, n int) (string, error) {
	deadline := time.Now().Add(discoveryWait)
	for run := 0; run < n; {
		if time.Now().After(deadline) {
			return "", fmt.Errorf("calls still reach %s after %v", gone, discoveryWait)
		}
		id, err := discoveryCall(ctx, hc, byAddr)
		if err != nil {
			return "", err
		}
		if id == gone {
			run = 0
		} else {
			run++
		}
	}
	return discoveryCalls(ctx, hc, byAddr, n)
}

// discoveryUntil calls until each of want has answered, then makes n calls.
func discoveryUntil(ctx context.Context, hc healthpb.HealthClient, byAddr map[string]string, n int, want ...string) (string, error) {
	deadline := time.Now().Add(discoveryWait)
	for missing := slices.Clone(want); len(missing) > 0; {
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no call reached %v within %v", missing, discoveryWait)
		}
		id, err := discoveryCall(ctx, hc, byAddr)
		if err != nil {
			return "", err
		}
		missing = slices.DeleteFunc(missing, func(m string) bool { return m == id })
	}
	return discoveryCalls(ctx, hc, byAddr, n)
}
