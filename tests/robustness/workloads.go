package robustness

// DefaultWorkloads returns a fresh instance of every workload whose API is
// available: writers, Key and Prefix subscribers, caches, ephemeral keys, an
// election with guarded writes, service discovery, a mutex and a semaphore
// whose holders update a counter under guarded transactions, Live
// readers, and subscribers and trackers that start on an empty prefix.
func DefaultWorkloads() []Workload {
	return []Workload{&Writers{}, &Watchers{}, &Caches{}, &Ephemerals{}, &Elections{}, &Services{}, &Mutexes{}, &Semaphores{}, &Lives{}, &Fresh{}}
}
