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

// eachSubscriber calls f with every subscriber of the client's shared
// streams, each under its own lock.
func eachSubscriber(c *Client, f func(s *sub)) {
	h := c.watchHub()
	h.mu.Lock()
	feeds := make([]*feed, 0, len(h.feeds))
	for _, fd := range h.feeds {
		feeds = append(feeds, fd)
	}
	h.mu.Unlock()
	for _, fd := range feeds {
		fd.mu.Lock()
		for _, s := range fd.members {
			s.mu.Lock()
			f(s)
			s.mu.Unlock()
		}
		fd.mu.Unlock()
	}
}

// MaxQueued returns the largest number of events any subscriber of the
// client has waiting in its buffer right now.
func MaxQueued(c *Client) int {
	n := 0
	eachSubscriber(c, func(s *sub) { n = max(n, s.queued) })
	return n
}

// StreamEndpoint returns the endpoint the client's stream connection (the
// one watches run on) is attached to, or "" if it has none.
func StreamEndpoint(c *Client) string {
	c.streams.mu.Lock()
	defer c.streams.mu.Unlock()
	if c.streams.cur == nil {
		return ""
	}
	return c.streams.cur.Endpoints()[0]
}

// WatchBaselines returns the number of subscribers of the client that hold
// a baseline of their own: those out of step with their shared stream whose
// state at their position is known.
func WatchBaselines(c *Client) int {
	n := 0
	eachSubscriber(c, func(s *sub) {
		if s.baseline != nil {
			n++
		}
	})
	return n
}

// HoldCache stops ca from applying changes until release is called, as a
// cache whose goroutine is slow to run would.
func HoldCache[T any](ca *Cache[T]) (release func()) {
	ca.mu.Lock()
	return ca.mu.Unlock
}
