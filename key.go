package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// maxUpdateAttempts bounds Update's read-modify-write loop under contention.
// With n writers racing fairly, a writer loses 256 rounds in a row with
// probability ((n-1)/n)^256: about 1e-15 for 8 writers.
const maxUpdateAttempts = 256

// Value is a decoded value with its etcd metadata.
type Value[T any] struct {
	// Data is the decoded value.
	Data T
	// Revision is the key's mod revision: the cluster revision of the write
	// that stored Data. Pass it to CompareAndSwap.
	Revision int64
	// CreateRevision is the revision at which the key was created.
	CreateRevision int64
	// Version counts the writes to the key since its creation (1 at creation).
	Version int64
	// Lease is the ID of the lease the key is attached to, 0 for none.
	Lease int64
}

// Key is a typed handle on one key under the client's namespace. It holds no
// state besides its name and codec: it is cheap to make and safe for
// concurrent use.
//
// Names are "/"-separated segments under [Config.Namespace]; a name that is
// empty, has an empty, "." or ".." segment, or holds control characters is
// refused with [ErrInvalidName], so no name can reach outside its
// namespace. Values pass through the key's [Codec]. A value larger than
// [Config.MaxValueSize] is refused with [ErrTooLarge] before anything is
// sent; a stored value that does not decode is reported as a [*DecodeError]
// naming the key, never a panic.
//
// [Key.Create] writes only if the key is absent, [Key.CompareAndSwap] only
// if the key still has the expected mod revision, and [Key.Update] runs a
// read-modify-write function, retrying on conflicts with the value that
// won. A failed condition is a [*ConflictError] that carries the current
// value; [AsConflict] reads it without knowing the value's type.
//
// An invalid name or a nil codec does not panic: every method returns the
// error (ErrInvalidName and the like), as Validate does.
type Key[T any] struct {
	c     *Client
	name  string
	path  string
	key   []byte // path, as requests send it; never written to
	codec Codec[T]
	err   error
}

// NewKey returns a handle on the key name under c's namespace, whose values
// are encoded with codec. Names are "/"-separated segments; see ErrInvalidName
// for the rules.
func NewKey[T any](c *Client, name string, codec Codec[T]) *Key[T] {
	k := &Key[T]{c: c, name: name, codec: codec}
	if k.err = checkHandle(c, "NewKey", name, codec == nil); k.err == nil {
		k.path = c.path(name)
		k.key = []byte(k.path)
	}
	return k
}

// Name returns the key's name, relative to the namespace.
func (k *Key[T]) Name() string { return k.name }

// Validate returns the error that makes the handle unusable (an invalid
// name, a nil codec), or nil. Every method returns it too.
func (k *Key[T]) Validate() error { return k.err }

// Get reads the key's current value (a linearizable read). It fails with
// ErrNotFound if the key is absent and with a *DecodeError if the stored bytes
// do not decode.
func (k *Key[T]) Get(ctx context.Context) (Value[T], error) {
	var zero Value[T]
	if k.err != nil {
		return zero, k.err
	}
	ctx, cancel, err := k.c.opContext(ctx)
	if err != nil {
		return zero, k.fail("get", err)
	}
	defer cancel()
	resp, err := k.c.getKey(ctx, k.key)
	if err != nil {
		return zero, k.fail("get", err)
	}
	if len(resp.Kvs) == 0 {
		return zero, fmt.Errorf("%w: %q", ErrNotFound, k.name)
	}
	return decodeKV(k.name, k.codec, resp.Kvs[0])
}

// Put stores v, creating the key or replacing its value, and returns the
// revision of the write. A value whose encoding is larger than
// Config.MaxValueSize fails with ErrTooLarge before anything is sent.
func (k *Key[T]) Put(ctx context.Context, v T) (int64, error) {
	data, err := k.encode(v)
	if err != nil {
		return 0, err
	}
	ctx, cancel, err := k.c.opContext(ctx)
	if err != nil {
		return 0, k.fail("put", err)
	}
	defer cancel()
	resp, err := k.c.putKey(ctx, k.key, data)
	if err != nil {
		return 0, k.fail("put", err)
	}
	return resp.Header.Revision, nil
}

// Create stores v only if the key is absent and returns the revision of the
// write. If the key exists it fails with a *ConflictError matching ErrExists
// that carries the present value.
func (k *Key[T]) Create(ctx context.Context, v T) (int64, error) {
	rev, err := k.swap(ctx, v, 0)
	var ce *ConflictError[T]
	if errors.As(err, &ce) {
		ce.kind = ErrExists
	}
	return rev, err
}

// CompareAndSwap stores v only if the key's mod revision is expectedRev (0:
// only if the key is absent) and returns the revision of the write. Otherwise
// it fails with a *ConflictError matching ErrConflict that carries the current
// value and revision.
func (k *Key[T]) CompareAndSwap(ctx context.Context, v T, expectedRev int64) (int64, error) {
	return k.swap(ctx, v, expectedRev)
}

// swap is the one-transaction compare-and-swap behind Create, CompareAndSwap
// and Update: put if the mod revision matches, else read the key in the same
// transaction so the conflict carries the current value.
func (k *Key[T]) swap(ctx context.Context, v T, expectedRev int64) (int64, error) {
	data, err := k.encode(v)
	if err != nil {
		return 0, err
	}
	ctx, cancel, err := k.c.opContext(ctx)
	if err != nil {
		return 0, k.fail("compare-and-swap", err)
	}
	defer cancel()
	res, err := k.c.casRaw(ctx, casOp{key: k.path, expect: expectedRev, value: data})
	if err != nil {
		return 0, k.fail("compare-and-swap", err)
	}
	if res.ok {
		return res.rev, nil
	}
	return 0, k.conflict(ErrConflict, expectedRev, res)
}

// conflict is the *ConflictError of a compare-and-put that found the key
// otherwise than expected.
func (k *Key[T]) conflict(kind error, expected int64, res casResult) *ConflictError[T] {
	ce := &ConflictError[T]{Key: k.name, Expected: expected, Revision: res.rev, kind: kind}
	if res.cur != nil {
		ce.Exists = true
		ce.Current, ce.DecodeErr = decodeKV(k.name, k.codec, res.cur)
	}
	return ce
}

// Update applies fn to the key's current value and stores the result if the
// key did not change meanwhile; on a conflict it calls fn again with the newer
// value, up to 256 times or until ctx ends. fn receives the zero value and
// false if the key is absent; it is never called with a value that failed to
// decode (Update returns the *DecodeError instead). If fn returns an error,
// Update stores nothing and returns that error. It returns the stored value.
func (k *Key[T]) Update(ctx context.Context, fn func(cur T, exists bool) (T, error)) (Value[T], error) {
	var zero Value[T]
	if k.err != nil {
		return zero, k.err
	}
	if fn == nil {
		return zero, fmt.Errorf("etcdkit: Update %q: nil function", k.name)
	}
	cur, err := k.Get(ctx)
	exists := err == nil
	if err != nil && !errors.Is(err, ErrNotFound) {
		return zero, err
	}
	for attempt := 1; ; attempt++ {
		next, err := fn(cur.Data, exists)
		if err != nil {
			return zero, err
		}
		rev, err := k.swap(ctx, next, cur.Revision)
		if err == nil {
			v := Value[T]{Data: next, Revision: rev, CreateRevision: cur.CreateRevision, Version: cur.Version + 1}
			if !exists {
				v.CreateRevision, v.Version = rev, 1
			}
			return v, nil
		}
		var ce *ConflictError[T]
		if !errors.As(err, &ce) {
			return zero, err
		}
		if ce.DecodeErr != nil {
			return zero, ce.DecodeErr
		}
		if attempt == maxUpdateAttempts {
			return zero, errorf("Update %q: gave up after %d conflicting attempts: %w", k.name, attempt, err)
		}
		// The losing transaction already read the winner's value.
		cur, exists = ce.Current, ce.Exists
		if !exists {
			cur = Value[T]{}
		}
		if !conflictPause(ctx, attempt) {
			return zero, ctx.Err()
		}
	}
}

// Delete removes the key. Deleting an absent key is not an error.
func (k *Key[T]) Delete(ctx context.Context) error {
	if k.err != nil {
		return k.err
	}
	ctx, cancel, err := k.c.opContext(ctx)
	if err != nil {
		return k.fail("delete", err)
	}
	defer cancel()
	if _, err := k.c.deleteKey(ctx, k.key); err != nil {
		return k.fail("delete", err)
	}
	return nil
}

func (k *Key[T]) encode(v T) ([]byte, error) {
	if k.err != nil {
		return nil, k.err
	}
	return encodeValue(k.c, k.name, k.codec, v)
}

// fail names the key and the operation in the error of a request that was
// refused or failed.
func (k *Key[T]) fail(op string, err error) error {
	return errorf("%s %q: %w", op, k.name, k.c.cause(mapServerError(err)))
}

// encodeValue encodes v and enforces the client's size limit.
func encodeValue[T any](c *Client, name string, codec Codec[T], v T) ([]byte, error) {
	data, err := codec.Encode(v)
	if err != nil {
		return nil, errorf("encode %q: %w", name, err)
	}
	if len(data) > c.cfg.MaxValueSize {
		return nil, fmt.Errorf("%w: %q encodes to %d bytes, limit %d", ErrTooLarge, name, len(data), c.cfg.MaxValueSize)
	}
	return data, nil
}

// decodeKV decodes a stored key-value into a Value. On a decode error the
// metadata is still filled in.
func decodeKV[T any](name string, codec Codec[T], kv *mvccpb.KeyValue) (Value[T], error) {
	v := Value[T]{Revision: kv.ModRevision, CreateRevision: kv.CreateRevision, Version: kv.Version, Lease: kv.Lease}
	data, err := codec.Decode(kv.Value)
	if err != nil {
		return v, &DecodeError{Key: name, Revision: kv.ModRevision, Err: err}
	}
	v.Data = data
	return v, nil
}

// conflictPause waits before the next attempt of an optimistic update that
// lost attempt times, and reports false if ctx ended first. A random pause,
// growing to at most 20ms, spreads the retries of the writers that lost so
// that each round has a fair winner.
func conflictPause(ctx context.Context, attempt int) bool {
	return backoff.Sleep(ctx, time.Duration(rand.Int64N(int64(min(attempt, 20))*int64(time.Millisecond))))
}
