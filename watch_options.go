package etcdkit

import (
	"errors"
	"fmt"

	"github.com/etcdkit/etcdkit/internal/watch"
)

// DefaultWatchBuffer is the number of events a subscriber may have waiting
// before it is unhooked from the shared stream (see WithBufferSize).
const DefaultWatchBuffer = 1024

// A WatchOption changes where a watch starts or how much it may buffer. Pass
// options to Key.Watch and Prefix.Watch. The interface is sealed: only this
// package provides options. A nil option is an error, as is an invalid one:
// the Watch returned has already ended with it.
type WatchOption interface {
	applyWatch(*watchConfig)
}

// A SubscribeOption configures Cache.Subscribe: WithInitial and
// WithBufferSize, which are WatchOptions too. AfterRevision is not one: a
// subscription follows its cache, which starts where it starts.
type SubscribeOption interface {
	WatchOption
	applySubscribe(*watchConfig)
}

type watchConfig struct {
	after    int64 // deliver changes with revision > after; -1 when unset
	initial  bool
	buffer   int
	errs     []error
	setAfter bool
}

func newWatchConfig[O WatchOption](opts []O) watchConfig {
	cfg := watchConfig{after: -1, buffer: DefaultWatchBuffer}
	for _, o := range opts {
		if any(o) == nil {
			cfg.errs = append(cfg.errs, errors.New("etcdkit: watch: nil option"))
			continue
		}
		o.applyWatch(&cfg)
	}
	if cfg.setAfter && cfg.initial {
		cfg.errs = append(cfg.errs, errors.New("etcdkit: watch: AfterRevision and WithInitial cannot be combined"))
	}
	return cfg
}

// options returns what the engine needs of cfg.
func (cfg watchConfig) options() watch.Options {
	return watch.Options{After: cfg.after, Initial: cfg.initial, Buffer: cfg.buffer}
}

// err reports the first invalid option, or nil.
func (cfg watchConfig) err() error {
	if len(cfg.errs) > 0 {
		return cfg.errs[0]
	}
	return nil
}

// watchOption is an option of watches only.
type watchOption func(*watchConfig)

func (f watchOption) applyWatch(cfg *watchConfig) { f(cfg) }

// subscribeOption is an option of watches and subscriptions.
type subscribeOption func(*watchConfig)

func (f subscribeOption) applyWatch(cfg *watchConfig)     { f(cfg) }
func (f subscribeOption) applySubscribe(cfg *watchConfig) { f(cfg) }

// AfterRevision starts the watch after revision rev: it delivers every change
// whose revision is greater than rev, in order, each once, including changes
// made before Watch was called. Pass the revision returned by a write or a
// List to continue exactly where that left off. If those revisions are
// compacted, the watch re-syncs from the state at rev, which it reads as
// soon as it starts: Resync events bring that state to the current one. A
// Key watch always can. A Prefix watch whose state at rev was compacted
// before it could be read cannot know which keys vanished, so it ends with
// an error matching ErrCompacted rather than resync with a gap: list again
// and watch after the list's revision. rev must not be negative;
// AfterRevision(0) delivers the whole retained history.
// It cannot be combined with WithInitial.
func AfterRevision(rev int64) WatchOption {
	return watchOption(func(cfg *watchConfig) {
		if rev < 0 {
			cfg.errs = append(cfg.errs, fmt.Errorf("etcdkit: watch: AfterRevision(%d): negative revision", rev))
			return
		}
		cfg.after, cfg.setAfter = rev, true
	})
}

// WithInitial starts the watch with the current state: one Put event flagged
// Initial per existing key (sorted by name), all read at one revision R, then
// every change after R. There is no gap and no overlap between the two.
// For Cache.Subscribe it means the cache's current contents. It cannot be
// combined with AfterRevision.
func WithInitial() SubscribeOption {
	return subscribeOption(func(cfg *watchConfig) { cfg.initial = true })
}

// WithBufferSize sets how many events the subscriber may have waiting, not
// yet received from Events, before it is unhooked from the shared stream.
// An unhooked subscriber loses nothing: once it has read half of its backlog
// it catches up on its own from the revision where it was unhooked (see
// Watch). The buffer always admits one whole revision, however many events a
// transaction or a resync holds. n must be positive; the default is
// DefaultWatchBuffer.
func WithBufferSize(n int) SubscribeOption {
	return subscribeOption(func(cfg *watchConfig) {
		if n <= 0 {
			cfg.errs = append(cfg.errs, fmt.Errorf("etcdkit: watch: WithBufferSize(%d): size must be positive", n))
			return
		}
		cfg.buffer = n
	})
}
