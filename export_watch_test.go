package etcdkit

// EtcdWatches returns the number of etcd watches the client's watch engine
// has open right now, shared or not.
func EtcdWatches(c *Client) int64 { return c.watchHub().watches.Load() }

// WatchFeeds returns the number of shared streams (one per watched key or
// prefix) the client's watch engine runs right now.
func WatchFeeds(c *Client) int {
	h := c.watchHub()
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.feeds)
}
