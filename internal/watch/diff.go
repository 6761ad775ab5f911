package watch

import (
	"cmp"
	"maps"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// A state is what the engine knows of a target's keys at one revision:
// either the name and mod revision of every key there (known; no key at all
// is a known, empty state) or nothing (unknown: the revision was compacted
// before it could be read). The two are told apart by known, never by
// whether a map or a slice is nil: an empty read is a fact, and a resync
// diffed against it must report the deletion of every key received since.
//
// A known state may hold the read it came from (kvs) rather than its map:
// the map is built on first use, since most states (a WithInitial
// subscriber's start) are never diffed and a map of every name is the
// largest cost of a big read.
type state struct {
	known bool
	names map[string]int64
	kvs   []*mvccpb.KeyValue
}

// unknownState is the state of a revision that could not be read.
func unknownState() state { return state{} }

// stateOfNames is the known state with these names; nil means no key.
func stateOfNames(names map[string]int64) state {
	if names == nil {
		names = map[string]int64{}
	}
	return state{known: true, names: names}
}

// stateOfRead is the known state a read returned; no key read means the
// empty state.
func stateOfRead(kvs []*mvccpb.KeyValue) state { return state{known: true, kvs: kvs} }

// index returns the name -> mod revision map of a known state, building it
// from the read it came from if need be; nil for an unknown state.
func (st *state) index(t Target) map[string]int64 {
	if !st.known {
		return nil
	}
	if st.names == nil {
		st.names = make(map[string]int64, len(st.kvs))
		for _, kv := range st.kvs {
			st.names[t.name(kv.Key)] = kv.ModRevision
		}
		st.kvs = nil
	}
	return st.names
}

// clone returns a copy of a known state that shares nothing with it.
func (st *state) clone(t Target) state {
	if !st.known {
		return unknownState()
	}
	return stateOfNames(maps.Clone(st.index(t)))
}

// apply advances a known state by a batch; an unknown state stays unknown.
func (st *state) apply(t Target, b Batch) {
	names := st.index(t)
	if names == nil {
		return
	}
	for _, e := range b.Events {
		if e.Type == Delete {
			delete(names, e.Name)
		} else {
			names[e.Name] = e.Rev
		}
	}
}

// diffState compares the state a receiver was brought to with the keys read
// at rev, and returns the Resync events that bring the receiver to the read
// state, with the new (known) state. Puts come first in revision order,
// then deletes, stamped rev. With an unknown old state only keys changed at
// or after from are reported, and deletions only for a single key (an
// absent key reported deleted is harmless; a prefix's vanished keys cannot
// be known). A single key found absent is reported deleted even when the
// old state had it absent too: it may have come and gone in the revisions
// that are gone, and the resync must say so (a key found with the mod
// revision the old state had did not change, so nothing of it was missed).
func diffState(t Target, old state, kvs []*mvccpb.KeyValue, rev, from int64) (Batch, state) {
	prev := old.index(t)
	cur := make(map[string]int64, len(kvs))
	var puts, dels []*Event
	for _, kv := range kvs {
		name := t.name(kv.Key)
		cur[name] = kv.ModRevision
		if old.known {
			if had, ok := prev[name]; ok && had == kv.ModRevision {
				continue
			}
		} else if kv.ModRevision < from {
			continue
		}
		puts = append(puts, &Event{Type: Put, Name: name, Value: kv.Value, Rev: kv.ModRevision,
			Create: kv.CreateRevision, Version: kv.Version, Lease: kv.Lease, Resync: true, ReadRev: rev})
	}
	switch {
	case !t.Prefix && len(kvs) == 0:
		dels = append(dels, &Event{Type: Delete, Name: t.name([]byte(t.Key)), Rev: rev, Resync: true, ReadRev: rev})
	case old.known:
		for name := range prev {
			if _, ok := cur[name]; !ok {
				dels = append(dels, &Event{Type: Delete, Name: name, Rev: rev, Resync: true, ReadRev: rev})
			}
		}
	}
	slices.SortFunc(puts, func(a, b *Event) int {
		return cmp.Or(cmp.Compare(a.Rev, b.Rev), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(dels, func(a, b *Event) int { return cmp.Compare(a.Name, b.Name) })
	return Batch{Events: append(puts, dels...), Next: rev + 1, Resync: true}, stateOfNames(cur)
}
