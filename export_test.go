package etcdkit

import (
	"slices"
	"time"
)

// SetListPageSize changes how many keys List reads per request, so tests can
// exercise paging without thousands of keys. It returns a function that
// restores the previous size.
func SetListPageSize(n int64) (restore func()) {
	old := listPageSize
	listPageSize = n
	return func() { listPageSize = old }
}

// ValidateName exposes the name rules to the fuzz tests.
var ValidateName = validateName

// Percentile sorts ds and returns its p-quantile. It is the benchmarks'
// one percentile helper: the package's own benchmarks call it directly, the
// external ones through this exported name.
func Percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	return ds[int(float64(len(ds)-1)*p)]
}
