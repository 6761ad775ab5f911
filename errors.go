package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Every error the package returns that means one of these
// wraps it, so callers test with errors.Is.
var (
	// ErrNotFound means the key does not exist.
	ErrNotFound = errors.New("etcdkit: key not found")
	// ErrExists means Create found the key already present. The error is a
	// *ConflictError that carries the present value.
	ErrExists = errors.New("etcdkit: key already exists")
	// ErrConflict means a compare-and-swap found another revision than the
	// expected one. The error is a *ConflictError that carries the current value.
	ErrConflict = errors.New("etcdkit: revision conflict")
	// ErrTooLarge means an encoded value is larger than Config.MaxValueSize,
	// and nothing was sent to the cluster, or that the server refused the
	// request as larger than its own limit (etcd's --max-request-bytes).
	// Either way, sending it again fails again: IsRetryable is false.
	ErrTooLarge = errors.New("etcdkit: value too large")
	// ErrInvalidName means a key, prefix or namespace name is not acceptable:
	// empty, with an empty, "." or ".." segment, with control characters or
	// invalid UTF-8, or starting or ending with "/" (a namespace may start
	// and end with one; see Config.Namespace).
	ErrInvalidName = errors.New("etcdkit: invalid name")
	// ErrClosed means the Client or the handle was closed.
	ErrClosed = errors.New("etcdkit: closed")
	// ErrCompacted ends a Prefix watch started with AfterRevision (or one
	// that fell behind a lagging member) when the revisions it must resume
	// from were compacted and the state at its position could no longer be
	// read: it could report the keys that changed, but not those deleted,
	// so it ends rather than resync with a gap. List again and watch after
	// the list's revision (or use WithInitial, whose start state is always
	// known).
	ErrCompacted = errors.New("etcdkit: revision compacted")
	// ErrLeaseLost means a session's lease is presumed expired: no keepalive
	// succeeded for the whole TTL (minus the Lost margin), or the server
	// answered that the lease no longer exists, which is also what a lease
	// revoked by someone else (another client, etcdctl lease revoke) looks
	// like. It is the Err of a session made WithoutRecovery once it is Lost,
	// and the cause of a Leadership, Lock or Permit whose key went with its
	// lease.
	ErrLeaseLost = errors.New("etcdkit: lease lost")
	// ErrInvalidTTL means a lease TTL the cluster cannot honour exactly: under
	// one second, not a whole number of seconds, above etcd's maximum, or
	// under the cluster's minimum (etcd silently raises TTLs below 1.5 times
	// its election timeout, rounded up to a second; etcdkit refuses them).
	ErrInvalidTTL = errors.New("etcdkit: invalid lease TTL")
	// ErrNotLeader means a Leadership has ended, or may have: its Context is
	// cancelled, its key is gone, and guarded writes are refused. A guarded
	// write that fails with it was not applied, unless the error says that
	// leadership ended while the write was in flight. Errors that match it
	// match ErrNotHeld too.
	ErrNotLeader error = &notHeldError{"etcdkit: not leader"}
	// ErrNotHeld means a Fence's holding (a Leadership, a Lock or a Permit)
	// has ended, or may have, as ErrNotLeader says of a Leadership: its
	// Context is cancelled and guarded writes are refused. Code that takes
	// any Fence tests for it.
	ErrNotHeld = errors.New("etcdkit: not held")
	// ErrLocked means TryLock found the mutex held. The error is a
	// *HeldError naming the holder.
	ErrLocked = errors.New("etcdkit: locked")
	// ErrNoPermit means TryAcquire found every permit of the semaphore
	// taken. The error is a *HeldError naming the holders.
	ErrNoPermit = errors.New("etcdkit: no permit available")
	// ErrLimitMismatch means a Semaphore's limit differs from the one its
	// name was first used with, which the cluster keeps (see Semaphore).
	ErrLimitMismatch = errors.New("etcdkit: semaphore limit mismatch")
	// ErrNoCandidate means no candidate holds the election, so nobody leads
	// it (Election.Leader).
	ErrNoCandidate = errors.New("etcdkit: no candidate holds the election")
	// ErrInvalidInstance means an instance cannot be registered as given: its ID
	// is not a single valid name segment (the error then matches ErrInvalidName
	// too) or its address is not "host:port".
	ErrInvalidInstance = errors.New("etcdkit: invalid instance")
	// ErrUnknownOutcome means a write was sent to a member that did not say
	// whether it applied it: the member went silent, its connection broke,
	// or the caller's context ended while the write was in flight. It may
	// have applied, or may still apply. A write that fails without it
	// provably did not apply (it was refused before being proposed, or
	// never sent), and the library already tried the other members.
	// Retrying a Put or Delete is safe when applying it twice is; for
	// Create, CompareAndSwap and Update, read the key again: if its mod
	// revision is still the one the write expected, the write did not
	// apply (or has not yet: a CompareAndSwap with that expected revision
	// applies at most once, whichever copy lands first); if it changed,
	// compare the value with the one written to tell whose write it was.
	// The error also matches the cause (context.DeadlineExceeded...), and
	// IsRetryable reports true when the cause is transient.
	ErrUnknownOutcome = errors.New("etcdkit: outcome unknown")
)

// notHeldError is ErrNotLeader's type: it matches ErrNotHeld as well, so
// that code that takes any Fence tests for one sentinel.
type notHeldError struct{ msg string }

func (e *notHeldError) Error() string { return e.msg }

func (e *notHeldError) Is(target error) bool { return target == ErrNotHeld }

// HeldError is the error of a TryLock or TryAcquire that found the holding
// taken: it matches ErrLocked or ErrNoPermit, and says who holds.
type HeldError struct {
	// Kind is "mutex" or "semaphore", and Name its name.
	Kind, Name string
	// Holders are the holders seen, oldest first: ID is the id given to
	// Lock or Acquire (see WithHolderID), Token the holding's token.
	Holders []LeaderInfo
	// Revision is the cluster revision at which they held.
	Revision int64
}

func (e *HeldError) Error() string {
	ids := make([]string, len(e.Holders))
	for i, h := range e.Holders {
		ids[i] = fmt.Sprintf("%q (token %d)", h.ID, h.Token)
	}
	return fmt.Sprintf("etcdkit: %s %q: %s: held by %s at revision %d", e.Kind, e.Name, heldKind(e.Kind).busyText,
		strings.Join(ids, ", "), e.Revision)
}

// Is reports whether target is ErrLocked (for a mutex) or ErrNoPermit (for
// a semaphore).
func (e *HeldError) Is(target error) bool {
	return target == heldKind(e.Kind).busy
}

// ConflictError reports that a conditional write did not apply because the key
// was not in the expected state. It carries what the key held at the revision
// of the failed attempt, so the caller can retry without reading again.
//
// Create returns one that matches ErrExists; CompareAndSwap and Update return
// one that matches ErrConflict. Use errors.As with the Key's type parameter:
//
//	var ce *etcdkit.ConflictError[Config]
//	if errors.As(err, &ce) { retry(ce.Current) }
//
// A caller that does not know T (a middleware, a log, code handling the
// conflicts of several keys) uses AsConflict, which returns everything but
// the value.
type ConflictError[T any] struct {
	// Key is the name of the key, relative to the namespace.
	Key string
	// Expected is the mod revision the caller expected (0: absent).
	Expected int64
	// Exists reports whether the key existed at Revision.
	Exists bool
	// Current is the key's value when Exists is true. If the stored bytes did
	// not decode, Current.Data is the zero value and DecodeErr says why.
	Current Value[T]
	// DecodeErr is non-nil when the current value could not be decoded.
	DecodeErr error
	// Revision is the cluster revision at which the comparison failed.
	Revision int64

	kind error
}

func (e *ConflictError[T]) Error() string {
	if e.kind == ErrExists {
		return fmt.Sprintf("etcdkit: key %q already exists (mod revision %d)", e.Key, e.Current.Revision)
	}
	if !e.Exists {
		return fmt.Sprintf("etcdkit: key %q: expected mod revision %d, key is absent", e.Key, e.Expected)
	}
	return fmt.Sprintf("etcdkit: key %q: expected mod revision %d, found %d", e.Key, e.Expected, e.Current.Revision)
}

// Unwrap returns ErrExists or ErrConflict.
func (e *ConflictError[T]) Unwrap() error { return e.kind }

func (e *ConflictError[T]) conflict() Conflict {
	return Conflict{Key: e.Key, Expected: e.Expected, Exists: e.Exists, ModRevision: e.Current.Revision,
		CreateRevision: e.Current.CreateRevision, Version: e.Current.Version, Lease: e.Current.Lease,
		Revision: e.Revision}
}

// Conflict is what a *ConflictError[T] says about the key, without its
// value: see AsConflict.
type Conflict struct {
	// Key is the name of the key, relative to the namespace (for a refused
	// Service.Register, the instance ID), as in ConflictError.Key.
	Key string
	// Expected is the mod revision the caller expected (0: absent).
	Expected int64
	// Exists reports whether the key existed at Revision.
	Exists bool
	// ModRevision, CreateRevision, Version and Lease are the key's metadata
	// at Revision, as in ConflictError.Current; zero when Exists is false.
	ModRevision, CreateRevision, Version, Lease int64
	// Revision is the cluster revision at which the comparison failed.
	Revision int64
}

// AsConflict reports whether err, or an error it wraps, is a
// *ConflictError[T] of any T, and if so returns what it says about the key.
// It is errors.As for callers that do not know T; errors.Is(err, ErrExists)
// or errors.Is(err, ErrConflict) tells which kind of conflict it is.
func AsConflict(err error) (Conflict, bool) {
	var ce interface{ conflict() Conflict }
	if !errors.As(err, &ce) {
		return Conflict{}, false
	}
	return ce.conflict(), true
}

// DecodeError reports a stored value that the key's codec could not decode,
// typically written by another tool. The value in the cluster is untouched.
type DecodeError struct {
	// Key is the name of the key, relative to the namespace.
	Key string
	// Revision is the mod revision of the undecodable value.
	Revision int64
	// Err is the codec's error.
	Err error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("etcdkit: decode key %q (mod revision %d): %v", e.Key, e.Revision, e.Err)
}

// Unwrap returns the codec's error.
func (e *DecodeError) Unwrap() error { return e.Err }

// IsRetryable reports whether err is a transient failure after which the same
// call may succeed: the cluster was unreachable, had no leader, or the request
// timed out (not the caller's own cancellation). Writes that failed this way
// may or may not have applied. An error matching ErrTooLarge, ErrClosed or
// context.Canceled is never retryable, whatever else it wraps.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, ErrTooLarge) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrLeaderChanged) {
		return true
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		switch se.GRPCStatus().Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
			return true
		}
	}
	return false
}

// prefix starts the text of every error the package makes.
const prefix = "etcdkit: "

// errorf is fmt.Errorf for the package's own errors: it puts prefix in front
// of format and makes sure the text holds it once, however deep the chain,
// by printing the errors among args without theirs (a sentinel's, or that of
// an error made here). They stay wrapped as they are, so errors.Is and
// errors.As see them unchanged. The package wraps its own errors only
// through errorf: this is the one place that decides how a chain reads.
func errorf(format string, args ...any) error {
	args = append([]any(nil), args...)
	for i, a := range args {
		if err, ok := a.(error); ok {
			args[i] = unprefixed{err}
		}
	}
	return fmt.Errorf(prefix+format, args...)
}

// unprefixed prints an error without the package's prefix.
type unprefixed struct{ err error }

func (u unprefixed) Error() string {
	// Errors made before errorf existed, or by fmt.Errorf with a sentinel
	// first and another of our errors later, hold the prefix inside too.
	s := strings.TrimPrefix(u.err.Error(), prefix)
	s = strings.ReplaceAll(s, ": "+prefix, ": ")
	return strings.ReplaceAll(s, "("+prefix, "(")
}

func (u unprefixed) Unwrap() error { return u.err }

// detail returns what an error made by errorf with one %w wraps, without the
// context its maker added: for a caller whose own context says it better
// (Register, over the Ephemeral it makes). Other errors are returned as they
// are.
func detail(err error) error {
	if u, ok := errors.Unwrap(err).(unprefixed); ok {
		return u.err
	}
	return err
}

// mapServerError turns the size limits of the server ("request is too
// large") and of gRPC ("message larger than max") into ErrTooLarge. An
// error that already matches ErrTooLarge is returned as it is.
func mapServerError(err error) error {
	if err == nil || errors.Is(err, ErrTooLarge) {
		return err
	}
	if errors.Is(err, rpctypes.ErrRequestTooLarge) {
		return errorf("%w: %w", ErrTooLarge, err)
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.ResourceExhausted && strings.Contains(s.Message(), "larger than max") {
		return errorf("%w: %w", ErrTooLarge, err)
	}
	return err
}

// ValidationError reports that the function given to WithValidator refused
// a value.
type ValidationError struct {
	// Key is the name of the key, relative to the namespace.
	Key string
	// Revision is the mod revision of the refused value.
	Revision int64
	// Err is the validator's error.
	Err error
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("etcdkit: validate key %q (mod revision %d): %v", e.Key, e.Revision, e.Err)
}

// Unwrap returns the validator's error.
func (e *ValidationError) Unwrap() error { return e.Err }
