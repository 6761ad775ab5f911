package etcdkit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// serviceRoot is the reserved name, under the client's namespace, below
// which every service keeps its instances.
const serviceRoot = "_etcdkit/service"

// Instance is one member of a Service: a process reachable at Addr.
type Instance[M any] struct {
	// ID names the instance within its service, uniquely among the live
	// ones: a name of one segment (no "/"; see ErrInvalidName for the other
	// rules), such as a host name or "api-7f9c".
	ID string
	// Addr is where the instance serves, "host:port" with a non-empty host
	// and a port in 1..65535, for example "10.0.0.7:8080" or
	// "api-1.internal:443".
	Addr string
	// Meta is whatever else the instance publishes about itself (version,
	// zone, weight...), stored through the service's codec.
	Meta M
}

// Service is a typed handle on a set of instances that register themselves
// under one name and are discovered by clients: the typed, lease-backed
// replacement for hand-rolled "heartbeat key with a TTL, refreshed every few
// seconds, and a prefix watch" schemes. Instances call Register; clients
// call Track, List, or dial the service through the gRPC resolver
// (Client.ResolverBuilder, target "etcdkit:///<name>").
//
// # Keys
//
// Each instance is one key, attached to a lease of its own:
// <namespace>/_etcdkit/service/<name>/<ID>, where <name> is the service's
// name path-escaped into one segment (so that service "a" never sees the
// instances of service "a/b"). The "_etcdkit/" root of a namespace is
// reserved to the library. The value is a JSON object:
//
//	{"addr":"10.0.0.7:8080","meta":{"zone":"eu-1","weight":3}}
//
// "meta" holds the bytes the service's codec produced, verbatim, when they
// are a JSON value (JSON[M] always). Other bytes (Proto[M], a String that is
// not JSON, no bytes at all) are stored base64-encoded under "metaBytes"
// instead. An object with neither (written by another tool) is an instance
// whose Meta is M's zero value. Readers ignore fields they do not know, so
// later versions can add some.
//
// A Service holds no state besides its configuration: it is cheap to make
// and safe for concurrent use. An invalid name or a nil codec does not
// panic: every method returns the error, as Err does.
type Service[M any] struct {
	c     *Client
	name  string
	codec Codec[M]
	p     *Prefix[record[M]]
	err   error
}

// NewService returns the service called name among the clients of c's
// namespace, whose instances' Meta is encoded with codec. The name follows
// the rules of names (see ErrInvalidName) and may contain "/".
func NewService[M any](c *Client, name string, codec Codec[M]) *Service[M] {
	s := &Service[M]{c: c, name: name, codec: codec}
	switch {
	case c == nil:
		s.err = errors.New("etcdkit: NewService: nil client")
	case codec == nil:
		s.err = fmt.Errorf("etcdkit: NewService %q: nil codec", name)
	default:
		if err := validateName(name); err != nil {
			s.err = errorf("NewService: %w", err)
			break
		}
		s.p = NewPrefix[record[M]](c, serviceRoot+"/"+url.PathEscape(name), recordCodec[M]{meta: codec})
		s.err = s.p.Err()
	}
	return s
}

// Name returns the service's name.
func (s *Service[M]) Name() string { return s.name }

// Err returns the error that makes the handle unusable, or nil.
func (s *Service[M]) Err() error { return s.err }

// Register publishes inst under a new lease of the given TTL and keeps it
// published until the Registration ends: it is an Ephemeral (see
// NewEphemeral and Client.NewSession for the TTL's rules, the states and the
// options), so a silent process disappears from its service within about
// the TTL, and an instance whose lease was lost is published again once its
// link comes back.
//
// The ID must be free: if a key with that ID exists (another live process
// registered it, or a crashed predecessor whose lease has not expired yet,
// which takes at most its TTL), Register fails with a
// *ConflictError[Instance[M]] matching ErrExists that carries the present
// instance (its Key is the ID), and publishes nothing. An invalid ID or address fails with
// ErrInvalidInstance, Meta too large for Config.MaxValueSize with
// ErrTooLarge, before anything is sent.
//
// ctx bounds the call and the life of the Registration, as for
// NewEphemeral: when it ends the instance is withdrawn.
func (s *Service[M]) Register(ctx context.Context, inst Instance[M], ttl time.Duration, opts ...SessionOption) (*Registration[M], error) {
	if s.err != nil {
		return nil, s.err
	}
	if err := validateID(inst.ID); err != nil {
		return nil, errorf("register in service %q: %w", s.name, err)
	}
	if err := validateAddr(inst.Addr); err != nil {
		return nil, errorf("register %q in service %q: %w", inst.ID, s.name, err)
	}
	rec := record[M]{addr: inst.Addr, meta: inst.Meta}
	// Encoded here too so that a failure names the instance, not the key
	// the library keeps it at.
	if _, err := encodeValue(s.c, inst.ID, s.p.codec, rec); err != nil {
		return nil, errorf("register %q in service %q: %w", inst.ID, s.name, err)
	}
	opts = append(slices.Clone(opts), WithCreateOnly())
	e, err := NewEphemeral(ctx, s.p.Key(inst.ID), rec, ttl, opts...)
	if err != nil {
		var ce *ConflictError[record[M]]
		if errors.As(err, &ce) {
			return nil, s.taken(inst.ID, ce)
		}
		// The Ephemeral's own context names the internal key.
		return nil, errorf("register %q in service %q: %w", inst.ID, s.name, detail(err))
	}
	return &Registration[M]{e: e, svc: s.name, inst: inst}, nil
}

// taken turns the conflict of a refused registration into one about
// instances.
func (s *Service[M]) taken(id string, ce *ConflictError[record[M]]) error {
	cur := ce.Current
	out := &ConflictError[Instance[M]]{Key: id, Exists: ce.Exists, DecodeErr: ce.DecodeErr, Revision: ce.Revision,
		kind: ErrExists, Current: Value[Instance[M]]{Data: cur.Data.instance(id), Revision: cur.Revision,
			CreateRevision: cur.CreateRevision, Version: cur.Version, Lease: cur.Lease}}
	holder := "an undecodable value"
	if ce.DecodeErr == nil {
		holder = strconv.Quote(cur.Data.addr)
	}
	return errorf("register %q in service %q: the ID is held by %s under lease %x: %w",
		id, s.name, holder, cur.Lease, out)
}

// List reads the service's instances at one revision and returns them
// sorted by ID, with that revision. An instance that does not decode does
// not hide the others: List returns every instance that did, and an error
// joining one *DecodeError per bad key. Any other error returns no
// instances.
func (s *Service[M]) List(ctx context.Context) ([]Instance[M], int64, error) {
	if s.err != nil {
		return nil, 0, s.err
	}
	entries, rev, err := s.p.List(ctx)
	if len(entries) == 0 && err != nil && !isDecodeErrors(err) {
		return nil, 0, err
	}
	errs := []error{err}
	list := make([]Instance[M], 0, len(entries))
	for _, e := range entries {
		if bad := validateID(e.Name); bad != nil {
			errs = append(errs, &DecodeError{Key: joinName(s.p.name, e.Name), Revision: e.Revision, Err: bad})
			continue
		}
		list = append(list, e.Data.instance(e.Name))
	}
	return list, rev, errors.Join(errs...)
}

// isDecodeErrors reports whether err is a *DecodeError or a join of them.
func isDecodeErrors(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !isDecodeErrors(e) {
				return false
			}
		}
		return true
	}
	var de *DecodeError
	return errors.As(err, &de)
}

// validateID checks an instance ID: a valid name of one segment.
func validateID(id string) error {
	if err := validateName(id); err != nil {
		return errorf("%w: ID: %w", ErrInvalidInstance, err)
	}
	if strings.Contains(id, "/") {
		return errorf("%w: ID %q: %w: an ID is one segment, without \"/\"", ErrInvalidInstance, id, ErrInvalidName)
	}
	return nil
}

// validateAddr checks an instance address: "host:port", a non-empty host
// and a port number, nothing gRPC or an HTTP client would choke on.
func validateAddr(addr string) error {
	if strings.ContainsFunc(addr, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("%w: address %q contains white space or control characters", ErrInvalidInstance, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: address %q is not host:port: %v", ErrInvalidInstance, addr, err)
	}
	if host == "" {
		return fmt.Errorf("%w: address %q has no host", ErrInvalidInstance, addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: address %q: port %q is not a number in 1..65535", ErrInvalidInstance, addr, port)
	}
	return nil
}

// record is an instance as stored: the key holds the ID, the value the rest.
type record[M any] struct {
	addr string
	meta M
	raw  []byte // the stored bytes (set by Decode): tells a change from a rewrite
}

func (r record[M]) instance(id string) Instance[M] {
	return Instance[M]{ID: id, Addr: r.addr, Meta: r.meta}
}

// recordCodec stores a record as the JSON object described for Service.
type recordCodec[M any] struct{ meta Codec[M] }

// envelope is the stored JSON object, for decoding.
type envelope struct {
	Addr      string          `json:"addr"`
	Meta      json.RawMessage `json:"meta"`
	MetaBytes []byte          `json:"metaBytes"`
}

func (rc recordCodec[M]) Encode(r record[M]) ([]byte, error) {
	mb, err := rc.meta.Encode(r.meta)
	if err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	addr, err := json.Marshal(r.addr)
	if err != nil {
		return nil, err
	}
	// Built by hand so that the meta bytes are stored verbatim: encoding/json
	// would compact and HTML-escape a RawMessage, and the codec's bytes must
	// come back as they were.
	b := append([]byte(`{"addr":`), addr...)
	switch {
	case len(mb) == 0:
		b = append(b, `,"metaBytes":""`...)
	case isBareJSON(mb):
		b = append(append(b, `,"meta":`...), mb...)
	default:
		enc, err := json.Marshal(mb) // base64
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"metaBytes":`...), enc...)
	}
	return append(b, '}'), nil
}

// isBareJSON reports whether b is one JSON value without surrounding white
// space, which a RawMessage gives back byte for byte.
func isBareJSON(b []byte) bool {
	return len(b) > 0 && json.Valid(b) && len(bytes.TrimSpace(b)) == len(b)
}

func (rc recordCodec[M]) Decode(b []byte) (record[M], error) {
	var r record[M]
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return r, fmt.Errorf("instance: %w", err)
	}
	if len(env.Meta) > 0 && len(env.MetaBytes) > 0 {
		return r, errors.New("instance: both meta and metaBytes are set")
	}
	if err := validateAddr(env.Addr); err != nil {
		return r, err
	}
	r = record[M]{addr: env.Addr, raw: bytes.Clone(b)}
	mb := []byte(env.Meta)
	if len(mb) == 0 {
		mb = env.MetaBytes
	}
	if mb == nil {
		return r, nil // no meta: the zero value
	}
	meta, err := rc.meta.Decode(mb)
	if err != nil {
		return record[M]{}, fmt.Errorf("meta: %w", err)
	}
	r.meta = meta
	return r, nil
}

// Registration is an instance published by Service.Register. It is an
// Ephemeral underneath and shares its shape: State and States say whether
// the instance is known to be published (Live), may be (Suspended) or must
// be presumed withdrawn (Lost); Done and Err say when and why it ended;
// Close withdraws it at once. A Registration is safe for concurrent use.
type Registration[M any] struct {
	e   *Ephemeral[record[M]]
	svc string // the service's name

	update sync.Mutex // orders Updates, so that inst is the last one written
	mu     sync.Mutex
	inst   Instance[M]
}

// Instance returns the instance as registered, with the Meta of the last
// successful Update.
func (r *Registration[M]) Instance() Instance[M] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inst
}

// Update publishes new metadata for the instance, keeping its ID, address
// and lease; trackers see the change. ctx bounds the call (with
// Config.RequestTimeout). It fails as Ephemeral.Update does: while the
// lease is Lost with ErrLeaseLost, after the Registration ended with its
// cause. As with Ephemeral.Update, the new meta is kept even if Update
// fails and is written by the Registration's later restores; call Update
// again until it succeeds to know it was.
func (r *Registration[M]) Update(ctx context.Context, meta M) error {
	r.update.Lock()
	defer r.update.Unlock()
	inst := r.Instance()
	rec := record[M]{addr: inst.Addr, meta: meta}
	// As in Register: errors name the instance, not the key it is kept at.
	if _, err := encodeValue(r.e.key.c, inst.ID, r.e.key.codec, rec); err != nil {
		return r.fail("update", err)
	}
	if err := r.e.Update(ctx, rec); err != nil {
		return r.fail("update", detail(err))
	}
	r.mu.Lock()
	r.inst.Meta = meta
	r.mu.Unlock()
	return nil
}

// State returns the current state: Live, Suspended or Lost (see
// Ephemeral.State).
func (r *Registration[M]) State() SessionState { return r.e.State() }

// States returns the channel of the Registration's state transitions, as
// Ephemeral.States: it never blocks the Registration, holds the latest 16
// states and is closed after Done.
func (r *Registration[M]) States() <-chan SessionState { return r.e.States() }

// Lease returns the ID of the lease the instance's key is attached to; it
// changes when the Registration recovers from Lost.
func (r *Registration[M]) Lease() clientv3.LeaseID { return r.e.Lease() }

// Remaining returns how long, at least, the instance stays published
// without a successful keepalive; see Session.Remaining.
func (r *Registration[M]) Remaining() time.Duration { return r.e.Remaining() }

// Done returns a channel that is closed when the Registration has ended
// for good: after Close, when the ctx given to Register ended, or when the
// client was closed. The instance is then withdrawn, or expires with its
// lease.
func (r *Registration[M]) Done() <-chan struct{} { return r.e.Done() }

// Err returns nil while the Registration runs and, once Done is closed, why
// it ended: ErrClosed (Close, or the client was closed) or an error wrapping
// the error of the ctx given to Register.
func (r *Registration[M]) Err() error { return r.e.Err() }

// Close withdraws the instance at once (its lease is revoked, which deletes
// its key in the same step, so trackers see it go right away rather than a
// TTL later) and waits for the Registration's goroutines. It returns the
// revoke's error, if any; the instance then expires with its lease. Close
// is idempotent.
func (r *Registration[M]) Close() error {
	if err := r.e.Close(); err != nil {
		return r.fail("deregister", detail(err))
	}
	return nil
}

// fail names the instance and its service in the error of op.
func (r *Registration[M]) fail(op string, err error) error {
	return errorf("%s %q in service %q: %w", op, r.inst.ID, r.svc, err)
}

// Tracker is a live, local view of a service's instances, kept by a Cache
// of the service's keys: it survives broken and silent links, member
// failures and compactions as a Cache does. Make one with Service.Track.
//
// Instances returns the current view; Updates delivers each new view as a
// snapshot. Both are empty until Synced is closed. An instance whose stored
// value does not decode is left out of the view and reported by Invalid; it
// never hides the others.
//
// The view can only be as fresh as the tracker's link to the cluster: while
// that link is down, State is not WatchConnected and Stale reports true, and
// instances that went away meanwhile are still listed. They are removed as
// soon as the link is back.
//
// A Tracker ends when the ctx given to Track ends, when Close or
// Client.Close is called, or on a failure that retrying cannot cure (a
// permission denied); then Err is set, Updates is closed, and Done is
// closed. Its view stays readable. A Tracker is safe for concurrent use;
// the Meta values it returns are shared between readers and must not be
// modified.
type Tracker[M any] struct {
	s       *Service[M]
	ca      *Cache[record[M]]
	w       *Watch[record[M]]
	cancel  context.CancelCauseFunc
	updates chan []Instance[M]
	synced  chan struct{}
	done    chan struct{}
	err     error // set before done is closed

	mu  sync.Mutex
	cur []Instance[M]
	raw [][]byte                // the stored bytes of cur's instances
	bad map[string]*DecodeError // by entry name
}

// Track starts a Tracker of the service and returns at once; Synced says
// when its view holds the service's instances. ctx bounds the life of the
// Tracker, not the call. It fails only for an invalid service, a closed
// Client or an ended ctx.
func (s *Service[M]) Track(ctx context.Context) (*Tracker[M], error) {
	if s.err != nil {
		return nil, s.err
	}
	t := &Tracker[M]{s: s, updates: make(chan []Instance[M], 1), synced: make(chan struct{}),
		done: make(chan struct{}), bad: make(map[string]*DecodeError)}
	tctx, cancel := context.WithCancelCause(ctx)
	t.cancel = cancel
	ca, err := s.p.Cache(tctx)
	if err != nil {
		cancel(err)
		return nil, errorf("track service %q: %w", s.name, err)
	}
	t.ca = ca
	t.w = ca.Subscribe(WithInitial())
	if !s.c.spawn(t.run) {
		cancel(ErrClosed)
		_ = t.w.Close()
		_ = ca.Close()
		return nil, errorf("track service %q: %w", s.name, ErrClosed)
	}
	return t, nil
}

// Instances returns the current view, sorted by ID. The slice is the
// caller's.
func (t *Tracker[M]) Instances() []Instance[M] {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.cur)
}

// Updates returns the channel of the tracker's views: the first once the
// tracker is synced (even if the service is empty), then one each time an
// instance appears, goes, or changes its address or metadata. A slow reader
// never holds the tracker up and never gets a backlog: the channel holds one
// view, and a newer one replaces it, so what the reader receives is always
// the latest. It is closed after Err is set, when the tracker ends. There
// is one channel per tracker: concurrent readers share the views.
func (t *Tracker[M]) Updates() <-chan []Instance[M] { return t.updates }

// Synced is closed once the view holds the service's instances, or, like
// Watch.Ready, when the tracker ends before that: a caller waiting on it is
// never left hanging. In that case Done is closed first and Err says why the
// tracker ended; the view stays empty and Stale reports true.
func (t *Tracker[M]) Synced() <-chan struct{} { return t.synced }

// Invalid returns the keys under the service whose values do not decode
// (or whose name is not a valid instance ID), one *DecodeError each, sorted
// by key. They are not in the view.
func (t *Tracker[M]) Invalid() []*DecodeError {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*DecodeError, 0, len(t.bad))
	for _, e := range t.bad {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *DecodeError) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// Revision returns the revision the view reflects; see Cache.Revision.
func (t *Tracker[M]) Revision() int64 { return t.ca.Revision() }

// State reports the state of the watch behind the view: WatchConnected
// while changes flow, WatchConnecting before the first contact,
// WatchSuspended while the link is being re-established, WatchClosed once
// the tracker ended.
func (t *Tracker[M]) State() WatchState {
	select {
	case <-t.done:
		return WatchClosed
	default:
		return t.ca.State()
	}
}

// Stale reports whether the view may be out of date: the tracker is not
// synced yet, its watch is not connected, or it ended.
func (t *Tracker[M]) Stale() bool {
	select {
	case <-t.synced:
	default:
		return true
	}
	return t.State() != WatchConnected
}

// Done is closed when the tracker has stopped following the service, after
// Err is set and Updates is closed.
func (t *Tracker[M]) Done() <-chan struct{} { return t.done }

// Err returns why the tracker ended once Done is closed, nil before: the
// ctx's cause, ErrClosed after Close or Client.Close, or the failure that
// ended it.
func (t *Tracker[M]) Err() error {
	select {
	case <-t.done:
		return t.err
	default:
		return nil
	}
}

// Close stops the tracker and returns once its goroutines have finished.
// It is idempotent and returns nil.
func (t *Tracker[M]) Close() error {
	t.cancel(ErrClosed)
	<-t.done
	return nil
}

func (t *Tracker[M]) run() {
	defer t.finish()
	synced := t.ca.Synced()
	for {
		select {
		case <-synced:
			synced = nil
			if t.ca.Revision() == 0 {
				// A cache that ended before it synced may close Synced
				// too; its Revision stays 0. The tracker ends with it.
				return
			}
			t.publish()
			close(t.synced)
		case ev, ok := <-t.w.Events():
			if !ok {
				return
			}
			t.note(ev)
			// Fold whatever else is waiting into one view.
			for more := true; more; {
				select {
				case ev, ok = <-t.w.Events():
					if !ok {
						return
					}
					t.note(ev)
				default:
					more = false
				}
			}
			if synced == nil {
				t.publish()
			}
		}
	}
}

// note keeps the set of undecodable keys up to date with one change.
func (t *Tracker[M]) note(ev Event[record[M]]) {
	var bad *DecodeError
	if ev.Type == Put {
		if ev.Err != nil {
			if !errors.As(ev.Err, &bad) {
				bad = &DecodeError{Key: joinName(t.s.p.name, ev.Name), Revision: ev.Revision, Err: ev.Err}
			}
		} else if err := validateID(ev.Name); err != nil {
			bad = &DecodeError{Key: joinName(t.s.p.name, ev.Name), Revision: ev.Revision, Err: err}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if bad == nil {
		delete(t.bad, ev.Name)
		return
	}
	if old, ok := t.bad[ev.Name]; !ok || old.Revision != bad.Revision {
		t.s.c.log.Warn("service instance ignored", zap.String("service", t.s.name), zap.Error(bad))
	}
	t.bad[ev.Name] = bad
}

// publish makes the cache's contents the view and offers it on Updates if
// it differs from the previous one.
func (t *Tracker[M]) publish() {
	entries := t.ca.List()
	list := make([]Instance[M], 0, len(entries))
	raw := make([][]byte, 0, len(entries))
	for _, e := range entries {
		if validateID(e.Name) != nil {
			continue
		}
		list = append(list, e.Data.instance(e.Name))
		raw = append(raw, e.Data.raw)
	}
	t.mu.Lock()
	first := t.cur == nil
	same := !first && slices.EqualFunc(t.cur, list, func(a, b Instance[M]) bool { return a.ID == b.ID }) &&
		slices.EqualFunc(t.raw, raw, bytes.Equal)
	if same {
		t.mu.Unlock()
		return
	}
	t.cur, t.raw = list, raw
	t.mu.Unlock()
	// Only this goroutine sends, so once the unread view is taken out the
	// send cannot block.
	select {
	case <-t.updates:
	default:
	}
	t.updates <- slices.Clone(list)
}

// finish records why the tracker ended, then closes Updates, Done and, if
// the tracker never synced, Synced, so that whoever it releases finds Err
// set.
func (t *Tracker[M]) finish() {
	_ = t.w.Close()
	_ = t.ca.Close()
	err := t.ca.Err()
	if err == nil {
		err = ErrClosed
	}
	t.cancel(err)
	t.err = err
	close(t.updates)
	close(t.done)
	// Only run, whose end this is, closes synced.
	select {
	case <-t.synced:
	default:
		close(t.synced)
	}
}
