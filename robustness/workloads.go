package robustness

// DefaultWorkloads returns a fresh instance of every workload whose API is
// available: writers, Key and Prefix subscribers, caches, ephemeral keys and
// an election with guarded writes.
func DefaultWorkloads() []Workload {
	return []Workload{&Writers{}, &Watchers{}, &Caches{}, &Ephemerals{}, &Elections{}}
}
