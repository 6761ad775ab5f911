package etcdkit

import (
	"context"
	"errors"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit/internal/watch"
)

// listPageSize is how many keys List reads per request, so that a large
// prefix never becomes one huge response.
var listPageSize int64 = 1000

// Entry is one key of a Prefix: its name relative to the prefix and its value.
type Entry[T any] struct {
	// Name is the key's name relative to the prefix ("a" for key "svc/a" of
	// prefix "svc"); it may itself contain "/".
	Name string
	Value[T]
}

// Prefix is a typed handle on the keys under one name: Prefix "svc" holds
// "svc/a" and "svc/b/c", never "svc2/x" (prefixes end at a "/" boundary).
// It is cheap to make and safe for concurrent use. An invalid name or a nil
// codec makes every method return the error, as Validate does.
type Prefix[T any] struct {
	c     *Client
	name  string
	path  string // etcd key prefix, ending in "/"
	codec Codec[T]
	err   error
}

// NewPrefix returns a handle on the keys under name in c's namespace, whose
// values are encoded with codec.
func NewPrefix[T any](c *Client, name string, codec Codec[T]) *Prefix[T] {
	p := &Prefix[T]{c: c, name: name, codec: codec}
	if p.err = checkHandle(c, "NewPrefix", name, codec == nil); p.err == nil {
		p.path = c.path(name) + "/"
	}
	return p
}

// Name returns the prefix's name, relative to the namespace.
func (p *Prefix[T]) Name() string { return p.name }

// Validate returns the error that makes the handle unusable (an invalid
// name, a nil codec), or nil. Every method returns it too.
func (p *Prefix[T]) Validate() error { return p.err }

// Key returns the handle of the key name under the prefix. Its name is
// validated like any key name.
func (p *Prefix[T]) Key(name string) *Key[T] {
	if p.err != nil {
		return &Key[T]{c: p.c, name: name, codec: p.codec, err: p.err}
	}
	if err := validateName(name); err != nil {
		return &Key[T]{c: p.c, name: name, codec: p.codec, err: err}
	}
	return NewKey(p.c, joinName(p.name, name), p.codec)
}

// List reads every key under the prefix at one revision and returns the
// entries sorted by name together with that revision. Large prefixes are read
// in pages at the same revision.
//
// A value that does not decode does not hide the others: List returns every
// entry that decoded and an error joining one *DecodeError per bad key (use
// errors.As to get one, or unwrap the join for all). Any other error returns
// no entries.
func (p *Prefix[T]) List(ctx context.Context) ([]Entry[T], int64, error) {
	if p.err != nil {
		return nil, 0, p.err
	}
	kvs, rev, err := watch.Read(ctx, p.get, p.target(), 0, listPageSize)
	if err != nil {
		return nil, 0, err
	}
	var entries []Entry[T]
	var bad []error
	for _, kv := range kvs {
		name := string(kv.Key[len(p.path):])
		v, err := decodeKV(joinName(p.name, name), p.codec, kv)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		entries = append(entries, Entry[T]{Name: name, Value: v})
	}
	return entries, rev, errors.Join(bad...)
}

func (p *Prefix[T]) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel, err := p.c.opContext(ctx)
	if err != nil {
		return nil, errorf("list %q: %w", p.name, err)
	}
	defer cancel()
	resp, err := p.c.read(ctx, key, opts...)
	if err != nil {
		return nil, errorf("list %q: %w", p.name, p.c.cause(err))
	}
	return resp, nil
}
