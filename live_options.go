package etcdkit

import (
	"errors"
	"fmt"
)

// A LiveOption configures a Live or a LiveMap of values of type T: its
// default, its validation, its snapshot file. Pass options to NewLive and
// NewLiveMap. An option carries the handle's type, so that a default or a
// validator of another type does not compile; the options whose argument
// does not name the type take it in brackets: WithSnapshot[Limits](path).
// The interface is sealed: only this package provides options. A nil option
// or an invalid one (given twice, an empty path, a nil function) makes the
// handle end at once with the error.
type LiveOption[T any] interface {
	LiveMapOption[T]
	applyLive(*liveConfig[T])
}

// A LiveMapOption configures a LiveMap. Every LiveOption is one; WithDefaults
// is one only, so that a Live does not accept it.
type LiveMapOption[T any] interface {
	applyLiveMap(*liveConfig[T])
}

// liveOption is an option for both Live and LiveMap.
type liveOption[T any] func(*liveConfig[T])

func (f liveOption[T]) applyLive(cfg *liveConfig[T])    { f(cfg) }
func (f liveOption[T]) applyLiveMap(cfg *liveConfig[T]) { f(cfg) }

// liveMapOption is an option for a LiveMap only.
type liveMapOption[T any] func(*liveConfig[T])

func (f liveMapOption[T]) applyLiveMap(cfg *liveConfig[T]) { f(cfg) }

// liveConfig collects the options of a handle of values of type T.
type liveConfig[T any] struct {
	liveSettings[T]
	setDef bool // WithDefault was given
	errs   []error
	names  map[string]int // option name -> times given
}

func (cfg *liveConfig[T]) once(name string) {
	if cfg.names == nil {
		cfg.names = map[string]int{}
	}
	if cfg.names[name]++; cfg.names[name] == 2 {
		cfg.errs = append(cfg.errs, fmt.Errorf("etcdkit: live: %s given twice", name))
	}
}

// WithDefault sets the value a Live serves while the key is absent (never
// written, or deleted) and before a first value is known, and the value a
// LiveMap serves for a name it does not hold (unless WithDefaults names
// it). Without it, the default is T's zero value. The value is shared with
// every reader: do not modify it after the call.
func WithDefault[T any](v T) LiveOption[T] {
	return liveOption[T](func(cfg *liveConfig[T]) {
		cfg.once("WithDefault")
		cfg.def, cfg.setDef = v, true
	})
}

// WithDefaults sets per-name defaults for a LiveMap: a name in m that the
// prefix does not hold reads as m[name] and is listed by All. It is refused
// by NewLive at compile time. Names must be valid names; m is copied.
func WithDefaults[T any](m map[string]T) LiveMapOption[T] {
	return liveMapOption[T](func(cfg *liveConfig[T]) {
		cfg.once("WithDefaults")
		for name := range m {
			if err := validateName(name); err != nil {
				cfg.errs = append(cfg.errs, errorf("live: WithDefaults: %w", err))
				return
			}
		}
		cp := make(map[string]T, len(m))
		for k, v := range m {
			cp[k] = v
		}
		cfg.defs = cp
	})
}

// WithValidator sets the function that decides whether a decoded value may
// be applied. A value for which fn returns an error is rejected as one that
// does not decode is: it is never served, never written to the snapshot,
// and the handle keeps its last good value (see Live.Rejected). fn runs on
// the handle's goroutine, one value at a time, and must not block. A value
// restored from a snapshot is validated again, so that a stricter validator
// in a new release refuses an old snapshot's value; that is a snapshot
// error, not a Rejection: the snapshot is ignored as a damaged one is
// (MetricLiveSnapshotErrors, one warning) and the handle starts from its
// default. The default accepts every value that decodes.
func WithValidator[T any](fn func(T) error) LiveOption[T] {
	return liveOption[T](func(cfg *liveConfig[T]) {
		cfg.once("WithValidator")
		if fn == nil {
			cfg.errs = append(cfg.errs, errors.New("etcdkit: live: WithValidator: nil function"))
			return
		}
		cfg.validate = fn
	})
}

// WithSnapshot keeps the handle's last good state in the file at path, so
// that a process that starts while the cluster is unreachable serves it at
// once (marked Stale) instead of the default. Every state applied from the
// cluster is written there atomically (a temporary file in the same
// directory, fsync, rename, fsync of the directory) with its revision, a
// checksum, and the key (or prefix) and type it belongs to. A file that is
// missing is not an error; one that is corrupt, truncated, written for
// another key or type, or unreadable is logged, counted
// (MetricLiveSnapshotErrors) and ignored, never applied. See Snapshot and
// cluster, under [Live], for which of a snapshot and the cluster wins. The
// default is no snapshot. T is the handle's value
// type: WithSnapshot[Limits]("/var/lib/billing/limits.snapshot").
func WithSnapshot[T any](path string) LiveOption[T] {
	return liveOption[T](func(cfg *liveConfig[T]) {
		cfg.once("WithSnapshot")
		if path == "" {
			cfg.errs = append(cfg.errs, errors.New("etcdkit: live: WithSnapshot: empty path"))
			return
		}
		cfg.snapshot = path
	})
}

// MergeDefault makes the fields a stored JSON value leaves out take the
// default's values: the value is decoded over a fresh copy of the default
// (for a LiveMap, of the name's default from WithDefaults, else of
// WithDefault's), as encoding/json does when it decodes into a filled
// struct. It needs the key's codec to be JSON and a default
// (WithDefault or WithDefaults). Without it, missing fields are zero, as the
// codec decodes them.
// T is the handle's value type: MergeDefault[Limits]().
func MergeDefault[T any]() LiveOption[T] {
	return liveOption[T](func(cfg *liveConfig[T]) {
		cfg.once("MergeDefault")
		cfg.merge = true
	})
}

// newLiveConfig applies the options of a handle with apply (applyLive for a
// Live, applyLiveMap for a LiveMap).
func newLiveConfig[T any, O LiveMapOption[T]](opts []O, apply func(O, *liveConfig[T])) *liveConfig[T] {
	cfg := &liveConfig[T]{}
	for _, o := range opts {
		if any(o) == nil {
			cfg.errs = append(cfg.errs, errors.New("etcdkit: live: nil option"))
			continue
		}
		apply(o, cfg)
	}
	return cfg
}

// liveSettings are a handle's options once applied.
type liveSettings[T any] struct {
	def      T
	defs     map[string]T
	validate func(T) error
	snapshot string
	merge    bool
}

// check checks the options against each other and the codec. On an error,
// the defaults given are set in the returned settings, so that a handle
// ended by an invalid option still serves them.
func (cfg *liveConfig[T]) check(codec Codec[T]) (liveSettings[T], error) {
	s := cfg.liveSettings
	if len(cfg.errs) > 0 {
		return s, cfg.errs[0]
	}
	if s.merge {
		if _, ok := codec.(jsonCodec[T]); !ok {
			return s, errors.New("etcdkit: live: MergeDefault needs the JSON codec")
		}
		if !cfg.setDef && s.defs == nil {
			return s, errors.New("etcdkit: live: MergeDefault needs WithDefault or WithDefaults")
		}
	}
	return s, nil
}
