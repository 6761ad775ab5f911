package robustness

// DefaultWorkloads returns a fresh instance of every workload whose API is
// available: writers, Key and Prefix subscribers.
func DefaultWorkloads() []Workload {
	return []Workload{&Writers{}, &Watchers{}}
}
