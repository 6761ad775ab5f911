package etcdkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"
)

// ResolverScheme is the URL scheme of the gRPC targets that the resolver of
// Client.ResolverBuilder resolves: "etcdkit:///<service>".
const ResolverScheme = "etcdkit"

// Target returns the gRPC target that dials the service through the
// resolver of Client.ResolverBuilder: "etcdkit:///" and the name, escaped
// as a URL path.
func (s *Service[M]) Target() string {
	return ResolverScheme + ":///" + (&url.URL{Path: s.name}).EscapedPath()
}

// ResolverAttributeKey is the key under which the resolver of
// Client.ResolverBuilder stores a ResolvedInstance in the Attributes of each
// resolver.Endpoint it hands to gRPC; ResolvedInstanceFrom reads it. It sits
// in the Endpoint's Attributes, which load-balancing policies read, not in
// its Address's, so that new metadata never makes gRPC reconnect.
type ResolverAttributeKey struct{}

// ResolvedInstance is what the resolver knows about one endpoint: the
// instance behind it, with its metadata as stored.
type ResolvedInstance struct {
	// Service is the service's name, ID and Addr the instance's.
	Service, ID, Addr string
	// Meta is the instance's metadata as its Service's codec encoded it
	// (JSON for JSON[M]), not decoded: the resolver does not know M. Decode
	// it with Service.DecodeResolved, or with the codec. It is shared: do not
	// modify it.
	Meta []byte
}

// Equal reports whether o is a ResolvedInstance with the same fields. gRPC
// compares attributes with it, so that an unchanged instance is recognised
// across resolver updates.
func (ri ResolvedInstance) Equal(o any) bool {
	oi, ok := o.(ResolvedInstance)
	return ok && ri.Service == oi.Service && ri.ID == oi.ID && ri.Addr == oi.Addr && bytes.Equal(ri.Meta, oi.Meta)
}

// ResolvedInstanceFrom returns the ResolvedInstance stored in attrs, the
// Attributes of a resolver.Endpoint made by the resolver, and whether there
// was one.
func ResolvedInstanceFrom(attrs *attributes.Attributes) (ResolvedInstance, bool) {
	if attrs == nil {
		return ResolvedInstance{}, false
	}
	ri, ok := attrs.Value(ResolverAttributeKey{}).(ResolvedInstance)
	return ri, ok
}

// DecodeResolved returns the instance behind ri, an endpoint of this
// service's resolver, with its Meta decoded by the service's codec. It
// fails with a *DecodeError if the metadata does not decode.
func (s *Service[M]) DecodeResolved(ri ResolvedInstance) (Instance[M], error) {
	if s.err != nil {
		return Instance[M]{}, s.err
	}
	meta, err := s.codec.Decode(ri.Meta)
	if err != nil {
		return Instance[M]{}, &DecodeError{Key: joinName(s.p.name, ri.ID), Err: fmt.Errorf("meta: %w", err)}
	}
	return Instance[M]{ID: ri.ID, Addr: ri.Addr, Meta: meta}, nil
}

// ResolverBuilder returns a gRPC resolver builder for the scheme "etcdkit",
// which resolves the target "etcdkit:///<service>" ([Service.Target]) to the
// instances of the service of that name in the client's namespace. Pass it
// to grpc.NewClient with grpc.WithResolvers, and pick a balancer with the
// service config, for example:
//
//	conn, err := grpc.NewClient("etcdkit:///api",
//		grpc.WithResolvers(c.ResolverBuilder()),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
//		grpc.WithTransportCredentials(creds))
//
// On every change, each resolver hands gRPC the complete list of endpoints,
// in ID order, one per instance, each with a [ResolvedInstance] under
// [ResolverAttributeKey] in its Attributes. The builder may be used for any
// number of targets; each resolver ends when gRPC closes it or the Client is
// closed.
//
// Each resolver runs a [Tracker] of the service. It is not generic: it reads
// each instance's address and the raw bytes of its metadata from the stored
// object (see [Service]) without decoding them, so it serves services of any
// metadata type; decode the metadata with [Service.DecodeResolved] where a
// balancer needs it. An instance whose stored object is unreadable is left
// out; an empty service resolves to no endpoints, which gRPC reports as a
// resolver that produced zero addresses. Failures reach gRPC through
// ReportError: when the resolver cannot get a first view, when its view has
// been stale for half of [Config.StallTimeout] (the watch itself is
// declared Suspended after a StallTimeout of silence), and when its tracker
// ends (the Client was closed). While the view is stale, gRPC keeps using
// the endpoints it has; once the view is fresh again the resolver sends it
// again. ResolveNow does nothing: the view follows every change as it is
// made.
func (c *Client) ResolverBuilder() resolver.Builder { return resolverBuilder{c: c} }

type resolverBuilder struct{ c *Client }

func (resolverBuilder) Scheme() string { return ResolverScheme }

func (b resolverBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	if target.URL.Host != "" {
		return nil, fmt.Errorf("etcdkit: resolver: target %q names an authority; want %s:///<service>", target.URL.String(), ResolverScheme)
	}
	svc := NewService(b.c, target.Endpoint(), Bytes())
	if err := svc.Validate(); err != nil {
		return nil, errorf("resolver: target %q: %w", target.URL.String(), err)
	}
	tr, err := svc.Track(context.Background())
	if err != nil {
		return nil, errorf("resolver: %w", err)
	}
	r := &grpcResolver{c: b.c, name: svc.Name(), tr: tr, cc: cc, exited: make(chan struct{})}
	if !b.c.spawn(r.run) {
		_ = tr.Close()
		return nil, errorf("resolver: %w", ErrClosed)
	}
	return r, nil
}

// grpcResolver feeds one gRPC channel with the views of a Tracker.
type grpcResolver struct {
	c       *Client
	name    string
	tr      *Tracker[[]byte]
	cc      resolver.ClientConn
	closing atomic.Bool
	exited  chan struct{}
}

func (r *grpcResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the resolver and waits for its goroutine; gRPC hears nothing
// more from it.
func (r *grpcResolver) Close() {
	r.closing.Store(true)
	_ = r.tr.Close()
	<-r.exited
}

func (r *grpcResolver) run() {
	defer close(r.exited)
	// The watch is Suspended only after a StallTimeout of silence; a short
	// grace more keeps a quick reconnect (a closed connection, a member
	// moving) from reaching gRPC as an error.
	grace := r.c.cfg.StallTimeout / 2
	tick := time.NewTicker(grace / 4)
	defer tick.Stop()
	var (
		last       *resolver.State
		staleSince time.Time
		reported   bool // an error was reported since the last state
	)
	for {
		select {
		case list, ok := <-r.tr.Updates():
			if !ok {
				if !r.closing.Load() {
					r.cc.ReportError(errorf("resolver %q: %w", r.name, r.tr.Err()))
				}
				return
			}
			st := r.state(list)
			last, reported = &st, false
			_ = r.cc.UpdateState(st)
		case now := <-tick.C:
			if !r.tr.Stale() {
				staleSince = time.Time{}
				if reported && last != nil {
					reported = false
					_ = r.cc.UpdateState(*last)
				}
				continue
			}
			if staleSince.IsZero() {
				staleSince = now
			}
			if reported || now.Sub(staleSince) < grace {
				continue
			}
			reported = true
			if last == nil {
				r.cc.ReportError(errorf("resolver %q: no view of the service's instances yet: %w",
					r.name, r.staleness()))
			} else {
				r.cc.ReportError(errorf("resolver %q: the view of the service's instances may be stale: %w",
					r.name, r.staleness()))
			}
		}
	}
}

// errUnreachable is what the resolver reports while its view is stale.
var errUnreachable = errors.New("etcdkit: the cluster is out of reach")

func (r *grpcResolver) staleness() error {
	return fmt.Errorf("%w (watch %v)", errUnreachable, r.tr.State())
}

// state makes the gRPC state of a view.
func (r *grpcResolver) state(list []Instance[[]byte]) resolver.State {
	st := resolver.State{Endpoints: make([]resolver.Endpoint, 0, len(list)), Addresses: make([]resolver.Address, 0, len(list))}
	for _, in := range list {
		ri := ResolvedInstance{Service: r.name, ID: in.ID, Addr: in.Addr, Meta: in.Meta}
		st.Endpoints = append(st.Endpoints, resolver.Endpoint{
			Addresses:  []resolver.Address{{Addr: in.Addr}},
			Attributes: attributes.New(ResolverAttributeKey{}, ri),
		})
		st.Addresses = append(st.Addresses, resolver.Address{Addr: in.Addr})
	}
	return st
}
