package etcdkit

// EtcdWatches returns the number of etcd watches the client's watch engine
// has open right now, shared or not.
func EtcdWatches(c *Client) int64 { return c.hub.Watches() }

// WatchFeeds returns the number of shared streams (one per watched key or
// prefix) the client's watch engine runs right now.
func WatchFeeds(c *Client) int { return c.hub.Feeds() }

// MaxQueued returns the largest number of events any subscriber of the
// client has waiting in its buffer right now.
func MaxQueued(c *Client) int { return c.hub.MaxQueued() }

// StreamEndpoint returns the endpoint the client's stream connection (the
// one watches run on) is attached to, or "" if it has none.
func StreamEndpoint(c *Client) string { return c.streams.Endpoint() }

// WatchBaselines returns the number of subscribers of the client that hold
// a baseline of their own: those out of step with their shared stream whose
// state at their position is known.
func WatchBaselines(c *Client) int { return c.hub.Baselines() }

// HoldCache stops ca from applying changes until release is called, as a
// cache whose goroutine is slow to run would.
func HoldCache[T any](ca *Cache[T]) (release func()) {
	ca.mu.Lock()
	return ca.mu.Unlock
}
