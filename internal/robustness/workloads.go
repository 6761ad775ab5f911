package robustness

// DefaultWorkloads returns a fresh instance of every workload whose API is
// available: writers, Key and Prefix subscribers, caches, ephemeral keys, an
// election with guarded writes, service discovery, and Live readers.
func DefaultWorkloads() []Workload {
	return []Workload{&Writers{}, &Watchers{}, &Caches{}, &Ephemerals{}, &Elections{}, &Services{}, &Lives{}}
}
