package etcdkit

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
