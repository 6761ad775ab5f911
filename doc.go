// Package etcdkit is a typed client for etcd v3 for services that share
// runtime configuration and coordinate through etcd.
//
// # Quick start
//
//	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:2379"}, Namespace: "app"})
//	if err != nil { ... }
//	defer c.Close()
//	limits := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]())
//	rev, err := limits.Put(ctx, Limits{MaxConns: 100})
//
// # Keys, prefixes and names
//
// A [Key] is a typed handle on one key and a [Prefix] a typed handle on the
// keys below one name. Every name lives under [Config.Namespace]; names are
// "/"-separated segments, and a name that is empty, has an empty, "." or ".."
// segment, or holds control characters is refused with [ErrInvalidName], so
// no name can reach outside its namespace. A prefix ends at a "/" boundary:
// prefix "svc" holds "svc/a" but never "svc2/a".
//
// Values pass through a [Codec]: [JSON], [String], [Bytes] and [Proto] are
// provided. A value larger than [Config.MaxValueSize] is refused with
// [ErrTooLarge] before anything is sent; a stored value that does not decode
// is reported as a [*DecodeError] naming the key, never a panic.
//
// # Conditional writes
//
// [Key.Create] writes only if the key is absent, [Key.CompareAndSwap] only if
// the key still has the expected mod revision, and [Key.Update] runs a
// read-modify-write function, retrying on conflicts with the value that won.
// A failed condition is a [*ConflictError] that carries the current value.
package etcdkit
