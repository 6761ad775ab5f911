package etcdkit

import (
	"errors"
	"fmt"
	"reflect"
)

// A LiveOption configures a Live or a LiveMap: its default, its validation,
// its snapshot file. Pass options to NewLive and NewLiveMap. The interface is
// sealed: only this package provides options. WithDefault, WithDefaults and
// WithValidator carry a value of the handle's type; one of another type, a
// nil option or an invalid one makes the handle end at once with the error.
type LiveOption interface {
	applyLive(*liveConfig)
}

type liveOptionFunc func(*liveConfig)

func (f liveOptionFunc) applyLive(cfg *liveConfig) { f(cfg) }

// liveConfig holds the options untyped; typed checks them against the
// handle's type.
type liveConfig struct {
	def      any    // WithDefault: a T
	defs     any    // WithDefaults: a map[string]T
	validate any    // WithValidator: a func(T) error
	snapshot string // WithSnapshot: a file path, "" for none
	merge    bool   // MergeDefault
	setDef   bool   // WithDefault was given
	errs     []error
	names    map[string]int // option name -> times given
}

func (cfg *liveConfig) once(name string) {
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
func WithDefault[T any](v T) LiveOption {
	return liveOptionFunc(func(cfg *liveConfig) {
		cfg.once("WithDefault")
		cfg.def, cfg.setDef = v, true
	})
}

// WithDefaults sets per-name defaults for a LiveMap: a name in m that the
// prefix does not hold reads as m[name] and is listed by All. It is refused
// by NewLive. Names must be valid names; m is copied.
func WithDefaults[T any](m map[string]T) LiveOption {
	return liveOptionFunc(func(cfg *liveConfig) {
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
func WithValidator[T any](fn func(T) error) LiveOption {
	return liveOptionFunc(func(cfg *liveConfig) {
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
// (MetricLiveSnapshotErrors) and ignored, never applied. See "Live
// configuration" in the package documentation for which of a snapshot and
// the cluster wins. The default is no snapshot.
func WithSnapshot(path string) LiveOption {
	return liveOptionFunc(func(cfg *liveConfig) {
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
func MergeDefault() LiveOption {
	return liveOptionFunc(func(cfg *liveConfig) {
		cfg.once("MergeDefault")
		cfg.merge = true
	})
}

func newLiveConfig(opts []LiveOption) *liveConfig {
	cfg := &liveConfig{}
	for _, o := range opts {
		if o == nil {
			cfg.errs = append(cfg.errs, errors.New("etcdkit: live: nil option"))
			continue
		}
		o.applyLive(cfg)
	}
	return cfg
}

// liveSettings are the options checked against the handle's type T.
type liveSettings[T any] struct {
	def      T
	defs     map[string]T
	validate func(T) error
	snapshot string
	merge    bool
}

// typedLive checks the options against T and the codec. forMap says
// whether the handle is a LiveMap. On an error, the defaults found valid
// so far are set in the returned settings.
func typedLive[T any](cfg *liveConfig, codec Codec[T], forMap bool) (liveSettings[T], error) {
	var s liveSettings[T]
	want := reflect.TypeFor[T]()
	if cfg.setDef && cfg.def != nil {
		// A nil interface T is its own zero value, which s.def holds.
		v, ok := cfg.def.(T)
		if !ok {
			return s, fmt.Errorf("etcdkit: live: WithDefault of type %T for values of type %v", cfg.def, want)
		}
		s.def = v
	}
	if cfg.defs != nil {
		if !forMap {
			return s, errors.New("etcdkit: live: WithDefaults is for a LiveMap; use WithDefault")
		}
		m, ok := cfg.defs.(map[string]T)
		if !ok {
			return s, fmt.Errorf("etcdkit: live: WithDefaults of type %T for values of type %v", cfg.defs, want)
		}
		s.defs = m
	}
	// The defaults are known by now, so that a handle ended by an invalid
	// option still serves them.
	if len(cfg.errs) > 0 {
		return s, cfg.errs[0]
	}
	if cfg.validate != nil {
		fn, ok := cfg.validate.(func(T) error)
		if !ok {
			return s, fmt.Errorf("etcdkit: live: WithValidator of type %T for values of type %v", cfg.validate, want)
		}
		s.validate = fn
	}
	if cfg.merge {
		if _, ok := codec.(jsonCodec[T]); !ok {
			return s, errors.New("etcdkit: live: MergeDefault needs the JSON codec")
		}
		if !cfg.setDef && cfg.defs == nil {
			return s, errors.New("etcdkit: live: MergeDefault needs WithDefault or WithDefaults")
		}
		s.merge = true
	}
	s.snapshot = cfg.snapshot
	return s, nil
}
