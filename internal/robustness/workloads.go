package robustness

// DefaultWorkloads returns a fresh instance of every workload whose API is
// available: writers, Key and Prefix subscribers, caches, ephemeral keys, an
// election with guarded writes, and service discovery.
func DefaultWorkloads() []Workload {
	return []Workload{&Writers{}, &Watchers{}, &Caches{}, &Ephemerals{}, &Elections{}, &Services{}}
}
