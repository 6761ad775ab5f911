package watch

// Event is one change as the untyped core moves it: bytes, not values.
// Events are shared by every subscriber of a stream and never modified once
// made.
type Event struct {
	Type Kind
	Name string // relative to the watched key's namespace or prefix
	// Value is nil for a delete.
	Value []byte
	// Rev is the mod revision of a put, the revision of a delete, and the
	// read revision for a delete found by a resync.
	Rev                    int64
	Create, Version, Lease int64
	Resync, Initial        bool
	// ReadRev is, for a Resync event, the revision the state was read at:
	// once the whole resync is applied, the receiver holds that state.
	ReadRev int64
	// Typed is the decoded event, set only on the initial events a Cache
	// subscription takes from the cache's contents, which keep values
	// decoded rather than their bytes.
	Typed any
}

// Batch is the unit the engine hands on atomically: the events of one
// revision (a transaction's events are never split), the diff of a resync,
// the initial state, or, for a progress notification, no event at all. After
// it the receiver's position is next: every change with a lower revision has
// been handed on.
type Batch struct {
	Events []*Event
	Next   int64
	// Resync marks the diff of a Resync, even an empty one: what happened
	// between the receiver's position and next is summed up, not replayed.
	Resync bool
}

// Target is what an etcd watch covers: one key, or every key under a
// prefix that ends in "/".
type Target struct {
	Key    string
	Prefix bool
	// Strip is the length of the part of etcd keys left out of event names:
	// the namespace for a key, the prefix for a prefix.
	Strip int
}

func (t Target) name(key []byte) string { return string(key[t.Strip:]) }

func (t Target) String() string {
	if t.Prefix {
		return t.Key + "*"
	}
	return t.Key
}
