package etcdkit

import (
	"fmt"
	"os"
)

// A HolderOption configures NewMutex and NewSemaphore: every ElectionOption
// and every SessionOption is one, and WithHolderID is one only. Options are
// made by the With... functions of this package; the interface is sealed. A
// nil option is an error, as is an invalid one: the Mutex or Semaphore is
// unusable and Validate returns it.
type HolderOption interface {
	applyHolder(*holderOptions)
}

type holderOption func(*holderOptions)

func (f holderOption) applyHolder(o *holderOptions) { f(o) }

type holderOptions struct {
	id       string
	election []ElectionOption
}

// WithHolderID sets the id stored in the holder's key, which Holder,
// Holders and *HeldError report. The default is "<hostname>/<pid>". It
// must fit in Config.MaxValueSize.
func WithHolderID(id string) HolderOption {
	return holderOption(func(o *holderOptions) { o.id = id })
}

// buildHolderOptions applies opts; kind names the handle in errors.
func buildHolderOptions(kind string, opts []HolderOption) (holderOptions, error) {
	var o holderOptions
	for _, opt := range opts {
		if opt == nil {
			return o, fmt.Errorf("etcdkit: %s: nil option", kind)
		}
		opt.applyHolder(&o)
	}
	if o.id == "" {
		host, _ := os.Hostname()
		o.id = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	return o, nil
}
