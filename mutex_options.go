package etcdkit

import (
	"errors"
	"fmt"
	"os"
)

// HolderOption configures NewMutex and NewSemaphore. Options are made by
// the functions below; the interface is sealed. A nil option is an error,
// as is an invalid one: the Mutex or Semaphore is unusable and Err returns
// it.
type HolderOption interface {
	applyHolder(*holderOptions)
}

type holderOptionFunc func(*holderOptions)

func (f holderOptionFunc) applyHolder(o *holderOptions) { f(o) }

type holderOptions struct {
	id       string
	election []ElectionOption
	errs     []error
}

// WithHolderID sets the id stored in the holder's key, which Holder,
// Holders and *HeldError report. The default is "<hostname>/<pid>". It
// must fit in Config.MaxValueSize.
func WithHolderID(id string) HolderOption {
	return holderOptionFunc(func(o *holderOptions) { o.id = id })
}

// WithElectionOptions applies election options to the holders' leases and
// watchdog: WithStepDownMargin and WithSessionOptions mean for a Lock or a
// Permit what they mean for a Leadership.
func WithElectionOptions(opts ...ElectionOption) HolderOption {
	return holderOptionFunc(func(o *holderOptions) {
		for _, opt := range opts {
			if opt == nil {
				o.errs = append(o.errs, errors.New("etcdkit: WithElectionOptions: nil option"))
				continue
			}
			o.election = append(o.election, opt)
		}
	})
}

func buildHolderOptions(kind string, opts []HolderOption) (holderOptions, error) {
	var o holderOptions
	for _, opt := range opts {
		if opt == nil {
			return o, fmt.Errorf("etcdkit: %s: nil option", kind)
		}
		opt.applyHolder(&o)
	}
	if len(o.errs) > 0 {
		return o, o.errs[0]
	}
	if o.id == "" {
		host, _ := os.Hostname()
		o.id = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	return o, nil
}
