package etcdkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// liveChangesBuffer is how many changes a Live or LiveMap holds for a slow
// reader of Events before the oldest are dropped.
const liveChangesBuffer = 64

// ErrOlderThanSnapshot is the error of a Rejection whose value is older
// (has a lower revision) than the snapshot the handle serves: the cluster
// was restored from a backup, or replaced, since the snapshot was written.
// See Snapshot and cluster, under [Live].
var ErrOlderThanSnapshot = errors.New("etcdkit: cluster value older than the snapshot")

// LiveSource says where a Live's current value comes from.
type LiveSource int

const (
	// SourceDefault: nothing is known yet (neither a snapshot nor the
	// cluster has said whether the key holds a value); Data is the default
	// and Present false.
	SourceDefault LiveSource = iota + 1
	// SourceSnapshot: what Data and Present say was read from the snapshot
	// file, and the cluster has not confirmed or replaced it yet.
	SourceSnapshot
	// SourceCluster: what Data and Present say comes from the cluster: its
	// value, or, with Present false, the default because the key is absent
	// there.
	SourceCluster
)

// String returns "default", "snapshot" or "cluster".
func (s LiveSource) String() string {
	switch s {
	case SourceDefault:
		return "default"
	case SourceSnapshot:
		return "snapshot"
	case SourceCluster:
		return "cluster"
	}
	return "LiveSource(invalid)"
}

// LiveValue is the state a Live serves.
type LiveValue[T any] struct {
	// Data is what Get returns: the last good value, or the default.
	Data T
	// Present reports whether the key holds Data; false when Data is the
	// default (the key is absent, or nothing is known yet).
	Present bool
	// Revision is the revision of the state: the mod revision of the value,
	// or the revision at which the key was seen absent (deleted, or read
	// while absent); 0 while nothing is known. It never decreases.
	Revision int64
	// Source says where the state comes from.
	Source LiveSource
}

// LiveEvent is one change of the value a Live or LiveMap serves.
type LiveEvent[T any] struct {
	// Name is the key's name for a Live, the entry's name (relative to the
	// prefix) for a LiveMap.
	Name string
	// Old and New are the values served before and after the change; a
	// default when the key was, or is now, absent.
	Old, New T
	// Deleted reports that the key is absent now: New is the default.
	Deleted bool
	// Revision is the revision of the new state (see LiveValue.Revision).
	Revision int64
}

// Rejection is a value the cluster held that a Live or LiveMap refused to
// serve.
type Rejection struct {
	// Name is the key's name for a Live, the entry's name (relative to the
	// prefix) for a LiveMap.
	Name string
	// Revision is the mod revision of the refused value; 0 when the
	// cluster refused to let the client read the key, so no value was seen.
	Revision int64
	// Err says why: a *DecodeError, a *ValidationError, or
	// ErrOlderThanSnapshot; or, with Revision 0, the error of the refused
	// read, such as etcd's permission denied (rpctypes.ErrPermissionDenied)
	// for a user whose role may not read the key.
	Err error
	// At is when the value was refused.
	At time.Time
}

// liveDecoder turns stored bytes into a good value, or says why not.
type liveDecoder[T any] struct {
	codec    Codec[T]
	validate func(T) error
	// base is the JSON of the default to decode over (MergeDefault), by
	// entry name, with "" for the default of every other name; nil without
	// MergeDefault.
	base map[string][]byte
}

func newLiveDecoder[T any](codec Codec[T], s liveSettings[T]) (*liveDecoder[T], error) {
	d := &liveDecoder[T]{codec: codec, validate: s.validate}
	if !s.merge {
		return d, nil
	}
	d.base = map[string][]byte{}
	b, err := json.Marshal(s.def)
	if err != nil {
		return nil, errorf("live: MergeDefault: encode the default: %w", err)
	}
	d.base[""] = b
	for name, v := range s.defs {
		if d.base[name], err = json.Marshal(v); err != nil {
			return nil, errorf("live: MergeDefault: encode the default of %q: %w", name, err)
		}
	}
	return d, nil
}

// decode decodes data, the value at rev of the key name (a Live's key) or
// name/entry (an entry of a LiveMap over prefix name), and validates it.
func (d *liveDecoder[T]) decode(name, entry string, rev int64, data []byte) (T, error) {
	var v T
	var err error
	if base, ok := d.base[entry]; ok || d.base != nil {
		if !ok {
			base = d.base[""]
		}
		// Decoding the default's JSON first gives a copy that shares no map
		// or slice with the default, so the value decoded over it cannot
		// change the default.
		if err = json.Unmarshal(base, &v); err == nil {
			err = json.Unmarshal(data, &v)
		}
		if err != nil {
			err = fmt.Errorf("json: %w", err)
		}
	} else {
		v, err = d.codec.Decode(data)
	}
	if err != nil {
		var zero T
		return zero, &DecodeError{Key: keyName(name, entry), Revision: rev, Err: err}
	}
	if d.validate != nil {
		if err := d.validate(v); err != nil {
			var zero T
			return zero, &ValidationError{Key: keyName(name, entry), Revision: rev, Err: err}
		}
	}
	return v, nil
}

// keyName is the name of a Live's key (entry "") or of a LiveMap's entry.
func keyName(name, entry string) string {
	if entry == "" {
		return name
	}
	return joinName(name, entry)
}

// Live is a runtime configuration value: the typed value of one key, kept
// up to date by a watch and readable at any time, without waiting, by Get.
// Make one with [NewLive].
//
// Get returns the last good value, with one atomic load and no I/O: one
// that decoded and passed the validator ([WithValidator]). A value that
// does not is never served: it is reported by Rejected (the error, a
// [*DecodeError] or a [*ValidationError], its revision and when), logged,
// and counted ([MetricLiveRejections]), Events never carries it, and Get
// keeps returning the value before it until a good one is written. While
// the key is absent, never written or deleted, Get returns the default
// ([WithDefault], else T's zero value); so it does before anything is
// known, unless a snapshot ([WithSnapshot]) gives the last good value of a
// previous run. With [MergeDefault], the fields a stored JSON value leaves
// out take the default's values.
//
// The value follows the key through the client's watch engine
// ([Key.Watch]), with its guarantees: every change is seen in revision
// order, across broken and silent links, restarted servers and failed
// members, and after a compaction the current state is read again, of
// which only the current value is applied (values the compaction erased are
// never seen, so never applied). Events delivers every change of the served
// value; Synced is closed once the key's state has come from the cluster,
// and Stale reports true before that and while the watch's link is
// suspended. While the cluster refuses to let the client read the key (a
// permission denied), Rejected reports the refusal (Revision 0), it is
// logged once, and [LiveReadiness] fails with it.
//
// Snapshot and cluster. The snapshot and the cluster are compared by
// revision. A cluster state with a higher revision than the snapshot's (a
// value written, or the key deleted, meanwhile) wins and replaces the file;
// the same revision confirms it. A lower one cannot come from the same
// cluster history, whose revisions only grow: it comes from a cluster
// restored from a backup or rebuilt, and it never replaces the snapshot. It
// is refused with [ErrOlderThanSnapshot], and the Live keeps serving the
// snapshot, Stale and not Synced, until the cluster writes the key at a
// revision above the snapshot's. To avoid that after a restore, restore
// with etcdutl's --bump-revision (which etcd advises anyway, since every
// watcher is in the same position) or delete the snapshot files of the
// services.
//
// A Live ends when the ctx given to NewLive ends, or when Close or
// Client.Close is called; never because of the network, and not when the
// watch beneath it fails for another reason (such as a permission
// denied): that is logged and the watch is started again, with backoff,
// while Get keeps serving. Once it has ended, Err says why, Events and
// Done are closed, and Get keeps returning the last value it had. A Live
// is safe for concurrent use. Values are shared between readers: do not
// modify a value returned by Get.
type Live[T any] struct {
	lifetime
	events   chan LiveEvent[T] // closed after Err is set, before Done
	cur      atomic.Pointer[LiveValue[T]]
	key      *Key[T]
	raw      *Key[[]byte] // the same key, undecoded: the snapshot keeps the stored bytes
	dec      *liveDecoder[T]
	def      T
	snapPath string
	snapID   snapshotID
	snapRev  int64 // the revision of the snapshot on disk, 0 for none

	w        atomic.Pointer[Watch[[]byte]]
	rejected atomic.Pointer[Rejection]
	refused  refusal
	synced   chan struct{}
	syncOnce sync.Once
	isSynced atomic.Bool
}

// NewLive starts following key and returns at once: with a snapshot
// (WithSnapshot) that can be read, Get serves its value right away,
// whether or not the cluster can be reached; otherwise the default, until
// the cluster answers. ctx bounds the life of the Live, not the call. A nil
// or invalid key, an invalid option, a closed Client or an ended ctx gives
// a Live that has already ended with the error and serves the default.
func NewLive[T any](ctx context.Context, key *Key[T], opts ...LiveOption[T]) *Live[T] {
	l := &Live[T]{synced: make(chan struct{})}
	if key == nil {
		return l.endNow(errors.New("etcdkit: NewLive: nil key"))
	}
	if key.err != nil {
		return l.endNow(key.err)
	}
	set, err := newLiveConfig(opts, LiveOption[T].applyLive).check(key.codec)
	l.def = set.def // the default, if it was valid, even when another option is not
	if err != nil {
		return l.endNow(err)
	}
	l.cur.Store(&LiveValue[T]{Data: set.def, Source: SourceDefault})
	if l.dec, err = newLiveDecoder(key.codec, set); err != nil {
		return l.endNow(err)
	}
	if err := ctx.Err(); err != nil {
		return l.endNow(context.Cause(ctx))
	}
	l.key, l.raw = key, NewKey(key.c, key.name, Bytes())
	l.snapPath, l.snapID = set.snapshot, snapshotID{kind: "key", path: key.path, typ: typeName[T]()}
	if l.snapPath != "" {
		l.restore()
	}
	if !startLife(&l.lifetime, &l.events, ctx, key.c, l.run) {
		l.markSynced()
	}
	return l
}

// startLife starts the life of a Live or LiveMap, the one place where
// they set up their lifecycle: bounded by ctx and c, with run as the
// goroutine that sends the changes. It reports whether run was started;
// if not, the handle has ended with ErrClosed.
func startLife[E any](l *lifetime, events *chan E, ctx context.Context, c *Client, run func()) bool {
	if !beginEvents(l, events, ctx, c, liveChangesBuffer) {
		endedEvents(l, events, ErrClosed)
		return false
	}
	l.spawn(run)
	l.arm()
	return true
}

// endNow makes l a Live that has already ended with err.
func (l *Live[T]) endNow(err error) *Live[T] {
	if l.cur.Load() == nil {
		l.cur.Store(&LiveValue[T]{Data: l.def, Source: SourceDefault})
	}
	endedEvents(&l.lifetime, &l.events, err)
	l.markSynced()
	return l
}

// Get returns the value to use now: the last good value, or the default.
// It never blocks and does no I/O: one atomic load.
func (l *Live[T]) Get() T { return l.cur.Load().Data }

// Current returns the value Get returns together with its revision and
// source, read at once (one atomic load), so that they belong together.
func (l *Live[T]) Current() LiveValue[T] { return *l.cur.Load() }

// Synced is closed once the state of the key has come from the cluster: a
// value applied, the key seen absent, or a first value rejected (Get then
// keeps the snapshot's value or the default). A value older than the
// snapshot does not count (see ErrOlderThanSnapshot). Synced is also
// closed when the Live ends before that, so that a caller waiting on it
// never hangs; then Done closes too, and Err says why.
func (l *Live[T]) Synced() <-chan struct{} { return l.synced }

func (l *Live[T]) markSynced() { l.syncOnce.Do(func() { close(l.synced) }) }

// Stale reports whether the value may be out of date: the Live is not
// synced yet (it serves a snapshot or the default), the watch that follows
// the key is not connected (the link is suspended or being set up again),
// or the Live has ended.
func (l *Live[T]) Stale() bool {
	if !l.isSynced.Load() {
		return true
	}
	w := l.w.Load()
	return w == nil || w.State() != WatchConnected || l.cause() != nil
}

// Rejected returns the last value that was refused, and false if none was.
// It stays set after a good value is applied: compare its Revision with
// Current's to know whether it is still the key's value. While the cluster
// refuses to let the client read the key (a permission denied, for a user
// whose role may not read it), Rejected returns that refusal instead, with
// Revision 0, until a read succeeds; the Live keeps trying meanwhile, and
// stays Stale.
func (l *Live[T]) Rejected() (Rejection, bool) {
	if r := l.refused.get(); r != nil {
		return *r, true
	}
	if r := l.rejected.Load(); r != nil {
		return *r, true
	}
	return Rejection{}, false
}

// Events returns the channel of changes of the served value, in revision
// order: one when a good value is applied or the key is deleted, none for
// a rejected value. It holds 64 changes; a reader further behind loses the
// oldest ones, never the latest, so the last change received is always
// the current state. It is closed when the Live ends, after Err is set.
func (l *Live[T]) Events() <-chan LiveEvent[T] { return l.events }

// Done is closed when the Live has ended, after Err is set and Events is
// closed.
func (l *Live[T]) Done() <-chan struct{} { return l.done }

// Err returns why the Live ended once Done is closed, nil before: the
// ctx's cause when its ctx ended, ErrClosed after Close or Client.Close,
// or the error that kept it from starting.
func (l *Live[T]) Err() error { return l.cause() }

// Close ends the Live (Err then reports ErrClosed unless it had already
// ended) and returns once its goroutines have finished. It is idempotent
// and returns nil. Get keeps returning the last value.
func (l *Live[T]) Close() error { return l.close() }

// restore serves the snapshot's state if it can be used.
func (l *Live[T]) restore() {
	c := l.key.c
	s, err := readSnapshot(l.snapPath, l.snapID)
	if err == nil && s != nil && len(s.Entries) > 1 {
		err = refused(l.snapPath, "%d entries for one key", len(s.Entries))
	}
	if err == nil && s != nil {
		v := &LiveValue[T]{Data: l.def, Revision: s.Revision, Source: SourceSnapshot}
		if len(s.Entries) == 1 {
			e := s.Entries[0]
			v.Data, err = l.dec.decode(l.key.name, "", e.Revision, e.Value)
			v.Present, v.Revision = true, e.Revision
			if err != nil {
				err = refused(l.snapPath, "its value: %w", err)
			}
		}
		if err == nil {
			l.cur.Store(v)
			l.snapRev = s.Revision
			c.log.Info("live value restored from snapshot", zap.String("key", l.key.name),
				zap.String("path", l.snapPath), zap.Int64("revision", s.Revision), zap.Bool("present", v.Present))
			return
		}
	}
	if err != nil {
		c.cfg.Metrics.Add(MetricLiveSnapshotErrors, 1)
		c.log.Warn("live snapshot ignored", zap.String("key", l.key.name), zap.Error(err))
	}
}

// run follows the key until the Live ends: it reads the key's state, then
// watches every change after it; if the watch ends for another reason than
// the Live's end, it starts again from a new read.
func (l *Live[T]) run() {
	defer l.markSynced()
	ctx, c := l.ctx, l.key.c
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for ctx.Err() == nil {
		rev, err := l.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if l.refused.set(l.key.name, err) {
				c.log.Warn("live value cannot be read, retrying", zap.String("key", l.key.name), zap.Error(err))
			} else {
				c.log.Debug("live read failed, retrying", zap.String("key", l.key.name), zap.Error(err))
			}
			retry.Wait(ctx)
			continue
		}
		l.refused.clear()
		w := l.raw.Watch(ctx, AfterRevision(rev))
		l.w.Store(w)
		for ev := range w.Events() {
			retry.Reset()
			l.offer(ev.Type == Put, ev.Value, ev.Revision)
		}
		_ = w.Close()
		if ctx.Err() != nil {
			return
		}
		l.w.Store(nil)
		c.logRestart("live watch ended, starting again", w.Err(), zap.String("key", l.key.name))
		retry.Wait(ctx)
	}
}

// read offers the key's current state, read linearizably, and returns the
// revision it was read at.
func (l *Live[T]) read(ctx context.Context) (int64, error) {
	c := l.key.c
	rctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	resp, err := c.read(rctx, l.key.path)
	if err != nil {
		return 0, c.cause(err)
	}
	if len(resp.Kvs) == 0 {
		l.offer(false, nil, resp.Header.Revision)
	} else {
		l.offer(true, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	}
	return resp.Header.Revision, nil
}

// offer applies a state of the key: present with data at mod revision rev,
// or absent at rev. Only run calls it.
func (l *Live[T]) offer(present bool, data []byte, rev int64) {
	c := l.key.c
	cur := l.cur.Load()
	switch {
	case rev < cur.Revision:
		// Within one cluster's history a key's state never goes back: only
		// a snapshot from another history (a cluster restored from a
		// backup, or replaced) can be ahead of the cluster.
		if present {
			l.reject(rev, fmt.Errorf("%w: revision %d, snapshot at %d", ErrOlderThanSnapshot, rev, cur.Revision))
		} else if cur.Source == SourceSnapshot {
			c.log.Warn("live key absent at a revision older than its snapshot; serving the snapshot",
				zap.String("key", l.key.name), zap.Int64("revision", rev), zap.Int64("snapshot", cur.Revision))
		}
		return
	case rev == cur.Revision && present == cur.Present:
		// The cluster confirms what is served (the snapshot's value, or
		// the state before the watch started again).
		if cur.Source != SourceCluster {
			next := *cur
			next.Source = SourceCluster
			l.cur.Store(&next)
		}
		l.synced1()
		return
	}
	next := &LiveValue[T]{Data: l.def, Present: present, Revision: rev, Source: SourceCluster}
	if present {
		v, err := l.dec.decode(l.key.name, "", rev, data)
		if err != nil {
			l.reject(rev, err)
			l.synced1()
			return
		}
		next.Data = v
	}
	l.cur.Store(next)
	l.synced1()
	if present || cur.Present {
		c.cfg.Metrics.Add(MetricLiveUpdates, 1)
		l.send(LiveEvent[T]{Name: l.key.name, Old: cur.Data, New: next.Data, Deleted: !present, Revision: rev})
	}
	if l.snapPath != "" && rev > l.snapRev {
		s := &snapshot{Format: snapshotFormat, Kind: l.snapID.kind, Path: l.snapID.path, Type: l.snapID.typ, Revision: rev}
		if present {
			s.Entries = []snapshotEntry{{Revision: rev, Value: data}}
		}
		if err := writeSnapshot(l.snapPath, s); err != nil {
			c.cfg.Metrics.Add(MetricLiveSnapshotErrors, 1)
			c.log.Warn("live snapshot not written", zap.String("key", l.key.name), zap.Error(err))
			return
		}
		l.snapRev = rev
	}
}

func (l *Live[T]) synced1() {
	if !l.isSynced.Load() {
		l.isSynced.Store(true)
		l.markSynced()
	}
}

func (l *Live[T]) reject(rev int64, err error) {
	c := l.key.c
	if r := l.rejected.Load(); r != nil && r.Revision == rev {
		return // read again after the watch started over
	}
	l.rejected.Store(&Rejection{Name: l.key.name, Revision: rev, Err: err, At: time.Now()})
	c.cfg.Metrics.Add(MetricLiveRejections, 1)
	c.log.Warn("live value rejected, keeping the last good one", zap.String("key", l.key.name),
		zap.Int64("revision", rev), zap.Error(err))
}

// send hands a change to Events without blocking: with the buffer full,
// the oldest change waiting is dropped.
func (l *Live[T]) send(ch LiveEvent[T]) { lossy[LiveEvent[T]](l.events).send(ch) }

// refusal is the cluster's refusal to let a Live read its key, which no
// retry mends until an operator changes the user's role: a permission
// denied, an auth failure. A Live shows it as its Rejection while it
// lasts, and logs it once.
type refusal struct{ p atomic.Pointer[Rejection] }

// set records err, a failed read of name, if it is a refusal, and reports
// whether it is a new one (none, or another error, was recorded), which the
// caller logs. A transient failure (a member that does not answer, no
// leader) is not a refusal: Stale covers it.
func (r *refusal) set(name string, err error) bool {
	if IsRetryable(err) || errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) {
		return false
	}
	old := r.p.Swap(&Rejection{Name: name, Err: err, At: time.Now()})
	return old == nil || old.Err.Error() != err.Error()
}

// clear forgets the refusal once a read succeeded.
func (r *refusal) clear() { r.p.Store(nil) }

// get returns the refusal in force, nil if none is.
func (r *refusal) get() *Rejection { return r.p.Load() }
