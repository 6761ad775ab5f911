package watch

import (
	"cmp"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// diffState compares a state a receiver was brought to (name -> mod
// revision; nil when it is not known) with the keys read at rev, and returns
// the Resync events that bring the receiver to the read state, with the new
// state. Puts come first in revision order, then deletes, stamped rev. With
// an unknown old state only keys changed at or after from are reported, and
// deletions only for a single key (an absent key reported deleted is
// harmless; a prefix's vanished keys cannot be known). A single key found
// absent is reported deleted even when the old state had it absent too:
// it may have come and gone in the revisions that are gone, and the resync
// must say so (a key found with the mod revision the old state had did not
// change, so nothing of it was missed).
func diffState(t Target, old map[string]int64, kvs []*mvccpb.KeyValue, rev, from int64) (Batch, map[string]int64) {
	cur := make(map[string]int64, len(kvs))
	var puts, dels []*Event
	for _, kv := range kvs {
		name := t.name(kv.Key)
		cur[name] = kv.ModRevision
		if old != nil {
			if prev, ok := old[name]; ok && prev == kv.ModRevision {
				continue
			}
		} else if kv.ModRevision < from {
			continue
		}
		puts = append(puts, &Event{Type: Put, Name: name, Value: kv.Value, Rev: kv.ModRevision,
			Create: kv.CreateRevision, Version: kv.Version, Lease: kv.Lease, Resync: true})
	}
	switch {
	case !t.Prefix && len(kvs) == 0:
		dels = append(dels, &Event{Type: Delete, Name: t.name([]byte(t.Key)), Rev: rev, Resync: true})
	case old != nil:
		for name := range old {
			if _, ok := cur[name]; !ok {
				dels = append(dels, &Event{Type: Delete, Name: name, Rev: rev, Resync: true})
			}
		}
	}
	slices.SortFunc(puts, func(a, b *Event) int {
		return cmp.Or(cmp.Compare(a.Rev, b.Rev), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(dels, func(a, b *Event) int { return cmp.Compare(a.Name, b.Name) })
	return Batch{Events: append(puts, dels...), Next: rev + 1, Resync: true}, cur
}

// stateOf returns the name -> mod revision state of kvs.
func stateOf(t Target, kvs []*mvccpb.KeyValue) map[string]int64 {
	st := make(map[string]int64, len(kvs))
	for _, kv := range kvs {
		st[t.name(kv.Key)] = kv.ModRevision
	}
	return st
}

// applyState advances a name -> mod revision state by a batch.
func applyState(st map[string]int64, b Batch) {
	for _, e := range b.Events {
		if e.Type == Delete {
			delete(st, e.Name)
		} else {
			st[e.Name] = e.Rev
		}
	}
}
