package etcdkit

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// liveMapSnapshotEvery is the shortest interval between two snapshot
// writes of a LiveMap: a busy prefix rewrites its whole file at most this
// often, with the latest state.
const liveMapSnapshotEvery = time.Second

// LiveMap is the runtime configuration of a whole prefix (feature flags,
// per-tenant settings): a [Live] per key under it, kept by one [Cache].
// Make one with [NewLiveMap].
//
// Every entry follows the rules of a Live: Get returns the entry's last
// good value, one that decoded and passed the validator; a value that
// does not is never served, is reported by Rejected, logged and counted,
// and the entry keeps its previous good value (or its default, if it never
// had one) until a good one is written. A name the prefix does not hold
// reads as its default: the one WithDefaults gives for that name, else
// WithDefault's, else T's zero value. With WithSnapshot, the whole map is
// kept in one file, written at most once a second with the latest state,
// and served at once by a process that starts while the cluster is
// unreachable.
//
// A LiveMap ends when the ctx given to NewLiveMap ends, or when Close or
// Client.Close is called; never because of the network, and not when the
// cache beneath it fails for another reason: that is logged and a new
// cache is started, with backoff, while Get keeps serving. Once it has
// ended, Err says why, Events and Done are closed, and the map stays
// readable. A LiveMap is safe for concurrent use; values are shared
// between readers and must not be modified.
type LiveMap[T any] struct {
	lifetime
	events   chan LiveEvent[T] // closed after Err is set, before Done
	p        *Prefix[T]
	raw      *Prefix[[]byte] // the same prefix, undecoded: the snapshot keeps the stored bytes
	dec      *liveDecoder[T]
	def      T
	defs     map[string]T
	snapPath string
	snapID   snapshotID
	snapRev  int64 // the revision of the snapshot on disk
	// needRev is the revision the cluster must reach for the map to be
	// synced: that of the snapshot served at start, 0 without one.
	needRev int64

	mu      sync.RWMutex
	entries map[string]liveEntry[T]
	rev     int64 // the revision the entries reflect

	ca       atomic.Pointer[Cache[[]byte]]
	rejected atomic.Pointer[Rejection]
	synced   chan struct{}
	syncOnce sync.Once
	isSynced atomic.Bool
	dirty    bool // the snapshot is behind the entries (run's goroutine only)
}

// liveEntry is a served entry: a good value, its mod revision, its stored
// bytes (for the snapshot) and where it came from.
type liveEntry[T any] struct {
	v   T
	rev int64
	raw []byte
	src LiveSource
}

// NewLiveMap starts following every key under p and returns at once: with
// a snapshot (WithSnapshot) that can be read, its entries are served right
// away, whether or not the cluster can be reached. ctx bounds the life of
// the LiveMap, not the call. A nil or invalid prefix, an invalid option, a
// closed Client or an ended ctx gives a LiveMap that has already ended
// with the error and serves the defaults.
func NewLiveMap[T any](ctx context.Context, p *Prefix[T], opts ...LiveMapOption[T]) *LiveMap[T] {
	l := &LiveMap[T]{synced: make(chan struct{}), entries: map[string]liveEntry[T]{}}
	if p == nil {
		return l.endNow(errors.New("etcdkit: NewLiveMap: nil prefix"))
	}
	if p.err != nil {
		return l.endNow(p.err)
	}
	set, err := newLiveConfig(opts, LiveMapOption[T].applyLiveMap).check(p.codec)
	l.def, l.defs = set.def, set.defs
	if err != nil {
		return l.endNow(err)
	}
	if l.dec, err = newLiveDecoder(p.codec, set); err != nil {
		return l.endNow(err)
	}
	if err := ctx.Err(); err != nil {
		return l.endNow(context.Cause(ctx))
	}
	l.p, l.raw = p, NewPrefix(p.c, p.name, Bytes())
	l.snapPath, l.snapID = set.snapshot, snapshotID{kind: "prefix", path: p.path, typ: typeName[T]()}
	if l.snapPath != "" {
		l.restore()
	}
	if !startLife(&l.lifetime, &l.events, ctx, p.c, l.run) {
		l.markSynced()
	}
	return l
}

func (l *LiveMap[T]) endNow(err error) *LiveMap[T] {
	endedEvents(&l.lifetime, &l.events, err)
	l.markSynced()
	return l
}

// Get returns the value to use now for the entry name (relative to the
// prefix): its last good value, or its default. It never does I/O; it
// waits at most for a change being applied (a map write, not a request).
func (l *LiveMap[T]) Get(name string) T {
	l.mu.RLock()
	e, ok := l.entries[name]
	l.mu.RUnlock()
	if ok {
		return e.v
	}
	return l.defaultOf(name)
}

func (l *LiveMap[T]) defaultOf(name string) T {
	if d, ok := l.defs[name]; ok {
		return d
	}
	return l.def
}

// Lookup returns the entry name's state, and whether the prefix holds a
// good value for it. Without one, Data is its default, Present false, and
// Source says who said so: SourceCluster once the map is synced (the name
// is absent from the prefix), SourceSnapshot while it serves a snapshot
// without the name, SourceDefault before anything is known.
func (l *LiveMap[T]) Lookup(name string) (LiveValue[T], bool) {
	l.mu.RLock()
	e, ok := l.entries[name]
	rev := l.rev
	l.mu.RUnlock()
	if ok {
		return LiveValue[T]{Data: e.v, Present: true, Revision: e.rev, Source: e.src}, true
	}
	src := SourceDefault
	switch {
	case l.isSynced.Load():
		src = SourceCluster
	case l.needRev > 0:
		src = SourceSnapshot
	}
	return LiveValue[T]{Data: l.defaultOf(name), Revision: rev, Source: src}, false
}

// All returns every entry with a good value, and every name of
// WithDefaults the prefix does not hold, with its default, in a map that
// is the caller's.
func (l *LiveMap[T]) All() map[string]T {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make(map[string]T, len(l.entries)+len(l.defs))
	for name, v := range l.defs {
		out[name] = v
	}
	for name, e := range l.entries {
		out[name] = e.v
	}
	return out
}

// Names returns the names of the entries with a good value, sorted.
func (l *LiveMap[T]) Names() []string {
	l.mu.RLock()
	names := slices.Collect(maps.Keys(l.entries))
	l.mu.RUnlock()
	slices.Sort(names)
	return names
}

// Revision returns the revision the map reflects: every change up to it
// has been applied (or rejected). It is the snapshot's while the map
// serves one, 0 while nothing is known.
func (l *LiveMap[T]) Revision() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rev
}

// Synced is closed once the prefix's contents have come from the cluster
// and reached the revision of the snapshot served at start, if any (a
// cluster behind the snapshot, restored from a backup, does not count
// until its history passes the snapshot's revision). It is also closed
// when the LiveMap ends before that; then Done closes too, and Err says
// why.
func (l *LiveMap[T]) Synced() <-chan struct{} { return l.synced }

func (l *LiveMap[T]) markSynced() { l.syncOnce.Do(func() { close(l.synced) }) }

// Stale reports whether the map may be out of date: it is not synced yet
// (it serves a snapshot or the defaults), the cache that follows the
// prefix is not connected, or the LiveMap has ended.
func (l *LiveMap[T]) Stale() bool {
	if !l.isSynced.Load() {
		return true
	}
	ca := l.ca.Load()
	return ca == nil || ca.State() != WatchConnected || l.cause() != nil
}

// Rejected returns the last value that was refused, in any entry, and
// false if none was.
func (l *LiveMap[T]) Rejected() (Rejection, bool) {
	if r := l.rejected.Load(); r != nil {
		return *r, true
	}
	return Rejection{}, false
}

// Events returns the channel of changes of the served entries, in
// revision order, one per entry that changed, each with the entry's name.
// It holds 64 changes; a reader further behind loses the oldest ones. It
// is closed when the LiveMap ends, after Err is set.
func (l *LiveMap[T]) Events() <-chan LiveEvent[T] { return l.events }

// Done is closed when the LiveMap has ended, after Err is set and Events
// is closed.
func (l *LiveMap[T]) Done() <-chan struct{} { return l.done }

// Err returns why the LiveMap ended once Done is closed, nil before: the
// ctx's cause, ErrClosed after Close or Client.Close, or the error that
// kept it from starting.
func (l *LiveMap[T]) Err() error { return l.cause() }

// Close ends the LiveMap and returns once its goroutines have finished
// (after writing the snapshot, if it was behind). It is idempotent and
// returns nil.
func (l *LiveMap[T]) Close() error { return l.close() }

func (l *LiveMap[T]) restore() {
	c := l.p.c
	s, err := readSnapshot(l.snapPath, l.snapID)
	if err == nil && s != nil {
		entries := make(map[string]liveEntry[T], len(s.Entries))
		for _, e := range s.Entries {
			if verr := validateName(e.Name); verr != nil {
				err = refused(l.snapPath, "entry %q: %w", e.Name, verr)
				break
			}
			v, derr := l.dec.decode(l.p.name, e.Name, e.Revision, e.Value)
			if derr != nil {
				err = refused(l.snapPath, "entry %q: %w", e.Name, derr)
				break
			}
			entries[e.Name] = liveEntry[T]{v: v, rev: e.Revision, raw: e.Value, src: SourceSnapshot}
		}
		if err == nil {
			l.entries, l.rev, l.snapRev, l.needRev = entries, s.Revision, s.Revision, s.Revision
			c.log.Info("live map restored from snapshot", zap.String("prefix", l.p.name),
				zap.String("path", l.snapPath), zap.Int64("revision", s.Revision), zap.Int("entries", len(entries)))
			return
		}
	}
	if err != nil {
		c.cfg.Metrics.Add(MetricLiveSnapshotErrors, 1)
		c.log.Warn("live snapshot ignored", zap.String("prefix", l.p.name), zap.Error(err))
	}
}

// run follows the prefix until the LiveMap ends, through a Cache; if the
// cache ends for another reason than the LiveMap's end, it starts a new
// one.
func (l *LiveMap[T]) run() {
	defer l.markSynced()
	defer l.flush()
	ctx, c := l.ctx, l.p.c
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for ctx.Err() == nil {
		err := l.follow(ctx, retry)
		if ctx.Err() != nil {
			return
		}
		c.logRestart("live map cache ended, starting again", err, zap.String("prefix", l.p.name))
		retry.Wait(ctx)
	}
}

// follow runs one Cache of the prefix: it applies its contents once
// synced, then every change, until the cache ends, and returns why.
func (l *LiveMap[T]) follow(ctx context.Context, retry *backoff.Backoff) error {
	ca, err := l.raw.Cache(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = ca.Close() }()
	// Subscribed before the cache syncs, the watch starts right after the
	// cache's first list: it misses no change, and the changes it repeats
	// are told apart by revision.
	w := ca.Subscribe()
	defer func() { _ = w.Close() }()
	select {
	case <-ca.Synced():
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ca.Done():
		return ca.Err()
	default:
	}
	l.ca.Store(ca)
	defer l.ca.Store(nil)
	contents, rc := ca.liveContents()
	l.applyContents(contents, rc)
	retry.Reset()
	var flushC <-chan time.Time
	var timer *time.Timer
	var lastWrite time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if l.dirty && flushC == nil {
			wait := time.Until(lastWrite.Add(liveMapSnapshotEvery))
			if wait <= 0 {
				l.flush()
				lastWrite = time.Now()
			} else {
				timer = time.NewTimer(wait)
				flushC = timer.C
			}
		}
		select {
		case ev, ok := <-w.Events():
			if !ok {
				if err := w.Err(); err != nil && !errors.Is(err, ErrClosed) {
					return err
				}
				return ca.Err()
			}
			batch := waiting(w.Events(), ev)
			// A re-read after a compaction is applied whole: half of it
			// is the state of no revision, and the map's Revision would
			// be wrong for it.
			for last := batch[len(batch)-1]; last.moreResync; last = batch[len(batch)-1] {
				next, ok := <-w.Events()
				if !ok {
					break
				}
				batch = append(batch, next)
			}
			l.applyEvents(batch, rc)
		case <-flushC:
			flushC = nil
			l.flush()
			lastWrite = time.Now()
		}
	}
}

// waiting returns first and the events already waiting on ch, without
// blocking, so that a burst of changes is applied, and published, at once.
func waiting[E any](ch <-chan E, first E) []E {
	batch := []E{first}
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return batch
			}
			batch = append(batch, ev)
		default:
			return batch
		}
	}
}

// applyContents applies the cache's contents at revision rc: every entry,
// and the absence of every served name it does not hold.
func (l *LiveMap[T]) applyContents(contents []liveContent, rc int64) {
	var changes []LiveEvent[T]
	l.mu.Lock()
	// Only names served before (from the snapshot, or before a restart of
	// the cache) can have gone: note which are still there.
	var seen map[string]bool
	if len(l.entries) > 0 {
		seen = make(map[string]bool, len(contents))
		for _, e := range contents {
			seen[e.name] = true
		}
	} else {
		l.entries = make(map[string]liveEntry[T], len(contents))
	}
	for name := range l.entries {
		if !seen[name] {
			if ch, ok := l.offerLocked(name, false, nil, rc, rc, nil); ok {
				changes = append(changes, ch)
			}
		}
	}
	for _, e := range contents {
		if ch, ok := l.offerLocked(e.name, true, e.value, e.rev, rc, e.err); ok {
			changes = append(changes, ch)
		}
	}
	l.advanceLocked(rc)
	l.mu.Unlock()
	l.publish(changes)
}

// applyEvents applies changes of the cache, skipping those at or below
// rc, which its contents already held.
func (l *LiveMap[T]) applyEvents(evs []Event[[]byte], rc int64) {
	var changes []LiveEvent[T]
	l.mu.Lock()
	top := l.rev
	for _, ev := range evs {
		if ev.Revision <= rc {
			continue
		}
		if ch, ok := l.offerLocked(ev.Name, ev.Type == Put, ev.Value, ev.Revision, ev.Revision, ev.Err); ok {
			changes = append(changes, ch)
		}
		// A re-read, applied whole, leaves the state at its read
		// revision, above the mod revisions of its puts.
		top = max(top, ev.Revision, ev.readRev)
	}
	l.advanceLocked(top)
	l.mu.Unlock()
	l.publish(changes)
}

// advanceLocked moves the map's revision to rev and marks it synced once
// it reaches the snapshot's. The caller holds l.mu.
func (l *LiveMap[T]) advanceLocked(rev int64) {
	if rev > l.rev {
		l.rev = rev
	}
	if !l.isSynced.Load() && rev >= l.needRev {
		l.isSynced.Store(true)
		l.markSynced()
	}
}

func (l *LiveMap[T]) publish(changes []LiveEvent[T]) {
	if len(changes) > 0 {
		l.p.c.cfg.Metrics.Add(MetricLiveUpdates, float64(len(changes)))
	}
	// Events keeps only the newest cap(l.events) changes a reader has not
	// taken: the older ones of a large batch (the first sync of a big
	// prefix) would only be sent to be dropped.
	if n := cap(l.events); len(changes) > n {
		changes = changes[len(changes)-n:]
	}
	for _, ch := range changes {
		lossy[LiveEvent[T]](l.events).send(ch)
	}
}

// offerLocked applies a state of entry name, as Live.offer does for its
// key, and returns the change it made, if any: present with data (or the
// decoding error derr) at mod revision rev, or absent at rev, as the
// cluster held it at revision at. The caller holds l.mu.
func (l *LiveMap[T]) offerLocked(name string, present bool, data []byte, rev, at int64, derr error) (LiveEvent[T], bool) {
	cur, had := l.entries[name]
	old := l.defaultOf(name)
	if !had && present && at < l.needRev {
		// The snapshot did not hold the entry, and the cluster is behind
		// the snapshot: restored from a backup.
		l.reject(name, rev, errorf("%w: entry %q at revision %d, snapshot at %d", ErrOlderThanSnapshot, name, rev, l.needRev))
		return LiveEvent[T]{}, false
	}
	if had {
		old = cur.v
		switch {
		case rev < cur.rev:
			if present {
				l.reject(name, rev, errorf("%w: entry %q at revision %d, snapshot at %d", ErrOlderThanSnapshot, name, rev, cur.rev))
			}
			return LiveEvent[T]{}, false
		case rev == cur.rev && present:
			if cur.src != SourceCluster {
				cur.src = SourceCluster
				l.entries[name] = cur
			}
			return LiveEvent[T]{}, false
		}
	}
	if !present {
		if !had {
			return LiveEvent[T]{}, false
		}
		delete(l.entries, name)
		l.dirty = l.snapPath != ""
		return LiveEvent[T]{Name: name, Old: old, New: l.defaultOf(name), Deleted: true, Revision: rev}, true
	}
	if derr != nil {
		l.reject(name, rev, derr)
		return LiveEvent[T]{}, false
	}
	v, err := l.dec.decode(l.p.name, name, rev, data)
	if err != nil {
		l.reject(name, rev, err)
		return LiveEvent[T]{}, false
	}
	l.entries[name] = liveEntry[T]{v: v, rev: rev, raw: data, src: SourceCluster}
	l.dirty = l.snapPath != ""
	return LiveEvent[T]{Name: name, Old: old, New: v, Revision: rev}, true
}

func (l *LiveMap[T]) reject(name string, rev int64, err error) {
	c := l.p.c
	if r := l.rejected.Load(); r != nil && r.Name == name && r.Revision == rev {
		return // read again by a new cache
	}
	l.rejected.Store(&Rejection{Name: name, Revision: rev, Err: err, At: time.Now()})
	c.cfg.Metrics.Add(MetricLiveRejections, 1)
	c.log.Warn("live value rejected, keeping the last good one", zap.String("prefix", l.p.name),
		zap.String("name", name), zap.Int64("revision", rev), zap.Error(err))
}

// flush writes the snapshot if it is behind the entries. Only run calls it.
func (l *LiveMap[T]) flush() {
	// A map behind its snapshot (a cluster restored from a backup) never
	// replaces it.
	if !l.dirty || l.rev <= l.snapRev {
		return
	}
	l.mu.RLock()
	s := &snapshot{Format: snapshotFormat, Kind: l.snapID.kind, Path: l.snapID.path, Type: l.snapID.typ, Revision: l.rev,
		Entries: make([]snapshotEntry, 0, len(l.entries))}
	for name, e := range l.entries {
		s.Entries = append(s.Entries, snapshotEntry{Name: name, Revision: e.rev, Value: e.raw})
	}
	l.mu.RUnlock()
	if s.Revision <= l.snapRev {
		l.dirty = false
		return
	}
	slices.SortFunc(s.Entries, func(a, b snapshotEntry) int { return cmp.Compare(a.Name, b.Name) })
	if err := writeSnapshot(l.snapPath, s); err != nil {
		l.p.c.cfg.Metrics.Add(MetricLiveSnapshotErrors, 1)
		l.p.c.log.Warn("live snapshot not written", zap.String("prefix", l.p.name), zap.Error(err))
		return
	}
	l.snapRev, l.dirty = s.Revision, false
}

// liveContent is one entry of a Cache, as a LiveMap reads it.
type liveContent struct {
	name  string
	value []byte
	rev   int64
	err   error
}

// liveContents returns every entry of a cache of stored bytes, undecodable
// ones included, with the revision they reflect, read together.
func (ca *Cache[T]) liveContents() ([]liveContent, int64) {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	out := make([]liveContent, 0, len(ca.entries))
	for name, e := range ca.entries {
		var b []byte
		if v, ok := any(e.v.Data).([]byte); ok {
			b = v
		}
		out = append(out, liveContent{name: name, value: b, rev: e.v.Revision, err: e.err})
	}
	return out, ca.rev
}
