// Command discovery is a gateway that routes HTTP requests to the live nodes
// of a service, which register themselves in etcd. It replaces the pattern
// every team writes by hand (each node puts a "heartbeat|TYPE|url" key with
// a 10s TTL and refreshes it every 5s; the gateway watches the prefix and
// picks a random node) with Service.Register on the nodes and Service.Track
// in the gateway.
//
// Everything runs in one process, over 127.0.0.1: three nodes register, the
// gateway routes requests to them, one node dies silently (its HTTP server
// stops and its link to etcd goes dark, without a goodbye) and disappears
// from the gateway's view within its TTL, a new node appears and gets
// traffic, and a node that shuts down cleanly is gone at once:
//
//	go run ./examples/discovery
//
// By default it starts an embedded etcd cluster; with -endpoints it uses an
// existing one, under -namespace. The node that dies reaches etcd through a
// fault-injection proxy of its own, which is how its link goes dark. The
// program exits by itself, within -timeout at most.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// NodeInfo is what a node publishes about itself besides its address.
type NodeInfo struct {
	Version string `json:"version"`
	Zone    string `json:"zone"`
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded cluster")
	namespace := flag.String("namespace", fmt.Sprintf("discovery-demo-%d", time.Now().UnixNano()), "namespace of the service's keys")
	ttl := flag.Duration("ttl", 2*time.Second, "TTL of the nodes' registrations, a whole number of seconds")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()
	if err := run(*endpoints, *namespace, *ttl, *timeout, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "discovery:", err)
		os.Exit(1)
	}
}

// demo holds what the story needs: where etcd is and what runs.
type demo struct {
	out       io.Writer
	endpoints []string
	namespace string
	ttl       time.Duration
	start     time.Time

	mu    sync.Mutex
	nodes []*node
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "%5.2fs  %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func run(endpoints, namespace string, ttl, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := &demo{out: out, namespace: namespace, ttl: ttl, start: time.Now()}
	if endpoints == "" {
		d.say("starting an embedded etcd cluster on 127.0.0.1")
		cl, err := etcdtest.NewCluster(1)
		if err != nil {
			return fmt.Errorf("embedded cluster: %w", err)
		}
		defer cl.Close()
		d.endpoints = cl.Endpoints()
	} else {
		d.endpoints = strings.Split(endpoints, ",")
	}
	defer d.stopNodes()

	gw, err := newGateway(ctx, d)
	if err != nil {
		return err
	}
	defer gw.close()

	for _, id := range []string{"node-1", "node-2"} {
		if _, err := d.startNode(ctx, id, false); err != nil {
			return err
		}
	}
	doomed, err := d.startNode(ctx, "node-3", true)
	if err != nil {
		return err
	}
	if err := gw.waitFor(ctx, "node-1", "node-2", "node-3"); err != nil {
		return err
	}
	gw.route(ctx, 9)

	d.say("node-3 dies silently: its HTTP server stops and its link to etcd goes dark (blackhole)")
	died := time.Now()
	doomed.die()
	// Requests keep flowing meanwhile: one that hits the dead node fails
	// over to another.
	clear(gw.served)
	sent := 0
	for gw.has("node-3") {
		gw.sendOne(ctx)
		sent++
		if !sleep(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
	gw.report(sent)
	d.say("the gateway dropped node-3 %v after it died: its lease (TTL %v) expired on the server", time.Since(died).Round(10*time.Millisecond), d.ttl)

	if _, err := d.startNode(ctx, "node-4", false); err != nil {
		return err
	}
	if err := gw.waitFor(ctx, "node-1", "node-2", "node-4"); err != nil {
		return err
	}
	gw.route(ctx, 30)

	d.say("node-1 shuts down cleanly: Close withdraws its registration")
	left := time.Now()
	d.node("node-1").stop()
	if err := gw.waitFor(ctx, "node-2", "node-4"); err != nil {
		return err
	}
	d.say("the gateway dropped node-1 %v after Close, not a TTL later", time.Since(left).Round(time.Millisecond))
	gw.route(ctx, 6)
	d.say("done")
	return nil
}

// node is one instance of the service: an HTTP server and its registration.
type node struct {
	d    *demo
	id   string
	srv  *http.Server
	done chan struct{} // closed when the server has stopped
	c    *etcdkit.Client
	reg  *etcdkit.Registration[NodeInfo]
	link *proxy.Proxy // the node's own path to etcd, if it is to die silently

	stopOnce sync.Once
}

// startNode starts a node's HTTP server on 127.0.0.1 and registers it.
// A node made mortal reaches etcd through a proxy of its own.
func (d *demo) startNode(ctx context.Context, id string, mortal bool) (*node, error) {
	n := &node{d: d, id: id, done: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s", id) })
	n.srv = &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}
	go func() {
		defer close(n.done)
		_ = n.srv.Serve(lis)
	}()
	d.mu.Lock()
	d.nodes = append(d.nodes, n)
	d.mu.Unlock()

	eps := d.endpoints
	if mortal {
		if n.link, err = proxy.New(d.endpoints[0]); err != nil {
			return nil, err
		}
		eps = []string{n.link.Addr()}
	}
	if n.c, err = etcdkit.New(ctx, etcdkit.Config{Endpoints: eps, Namespace: d.namespace}); err != nil {
		return nil, err
	}
	svc := etcdkit.NewService(n.c, "web", etcdkit.JSON[NodeInfo]())
	inst := etcdkit.Instance[NodeInfo]{ID: id, Addr: lis.Addr().String(), Meta: NodeInfo{Version: "v1", Zone: "zone-" + id[len(id)-1:]}}
	d.say("%s serves on %s and registers (TTL %v)", id, inst.Addr, d.ttl)
	if n.reg, err = svc.Register(ctx, inst, d.ttl); err != nil {
		return nil, err
	}
	return n, nil
}

func (d *demo) node(id string) *node {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

func (d *demo) stopNodes() {
	d.mu.Lock()
	nodes := slices.Clone(d.nodes)
	d.mu.Unlock()
	for _, n := range nodes {
		n.stop()
	}
}

// die stops the node without a word to etcd: its HTTP server closes and
// its link to etcd drops every byte, as when a machine freezes or its
// network goes away.
func (n *node) die() {
	_ = n.srv.Close()
	<-n.done
	n.link.Blackhole(proxy.Both)
}

// stop shuts the node down cleanly: deregister, then stop serving.
func (n *node) stop() {
	n.stopOnce.Do(func() {
		if n.link != nil {
			// A dead node's link stays dead; closing it makes the client's
			// goodbye fail at once instead of waiting out its timeout.
			_ = n.link.Close()
		}
		if n.reg != nil {
			_ = n.reg.Close()
		}
		if n.c != nil {
			_ = n.c.Close()
		}
		_ = n.srv.Close()
		<-n.done
	})
}

// gateway routes requests to the instances its Tracker sees.
type gateway struct {
	d      *demo
	c      *etcdkit.Client
	tr     *etcdkit.Tracker[NodeInfo]
	http   *http.Client
	done   chan struct{}
	served map[string]int
}

func newGateway(ctx context.Context, d *demo) (*gateway, error) {
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: d.endpoints, Namespace: d.namespace})
	if err != nil {
		return nil, err
	}
	tr, err := etcdkit.NewService(c, "web", etcdkit.JSON[NodeInfo]()).Track(ctx)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	gw := &gateway{d: d, c: c, tr: tr, done: make(chan struct{}), served: map[string]int{},
		http: &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	go gw.follow()
	return gw, nil
}

// follow prints every new view of the service.
func (gw *gateway) follow() {
	defer close(gw.done)
	for view := range gw.tr.Updates() {
		var ids []string
		for _, in := range view {
			ids = append(ids, fmt.Sprintf("%s(%s,%s)", in.ID, in.Meta.Version, in.Meta.Zone))
		}
		gw.d.say("gateway: live nodes [%s]", strings.Join(ids, " "))
	}
}

func (gw *gateway) close() {
	_ = gw.tr.Close()
	<-gw.done
	_ = gw.c.Close()
}

func (gw *gateway) has(id string) bool {
	return slices.ContainsFunc(gw.tr.Instances(), func(in etcdkit.Instance[NodeInfo]) bool { return in.ID == id })
}

// waitFor waits until the gateway's view holds exactly ids.
func (gw *gateway) waitFor(ctx context.Context, ids ...string) error {
	for {
		var got []string
		for _, in := range gw.tr.Instances() {
			got = append(got, in.ID)
		}
		if slices.Equal(got, ids) {
			return nil
		}
		if !sleep(ctx, 20*time.Millisecond) {
			return fmt.Errorf("gateway view %v, want %v: %w", got, ids, ctx.Err())
		}
	}
}

// route sends n requests, each to a random live node, failing over to
// another when one does not answer, and prints who served them.
func (gw *gateway) route(ctx context.Context, n int) {
	clear(gw.served)
	for range n {
		gw.sendOne(ctx)
	}
	gw.report(n)
}

func (gw *gateway) sendOne(ctx context.Context) {
	if who, err := gw.send(ctx); err != nil {
		gw.d.say("gateway: request failed: %v", err)
	} else {
		gw.served[who]++
	}
}

// report prints who served the last n requests.
func (gw *gateway) report(n int) {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(gw.served)) {
		parts = append(parts, fmt.Sprintf("%s×%d", id, gw.served[id]))
	}
	gw.d.say("gateway: %d requests served by %s", n, strings.Join(parts, " "))
}

func (gw *gateway) send(ctx context.Context) (string, error) {
	live := gw.tr.Instances()
	rand.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	for _, in := range live {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.Addr+"/hello", nil)
		if err != nil {
			return "", err
		}
		resp, err := gw.http.Do(req)
		if err != nil {
			gw.d.say("gateway: %s at %s does not answer, trying another node", in.ID, in.Addr)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			continue
		}
		return strings.TrimPrefix(string(body), "hello from "), nil
	}
	return "", errors.New("no live node answered")
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
