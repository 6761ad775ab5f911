package watch

// Fan is a feed driven by its owner rather than by an etcd watch: a Cache
// hands it every batch it has applied, and it fans them out to the cache's
// subscribers with the slow-subscriber handling of any feed (one that falls
// behind catches up on its own from etcd's history, never beyond what the
// owner has applied, then rejoins). The owner serialises its calls and
// holds its own lock across each, so that a subscriber positioned by the
// fan finds the owner's contents at the fan's position.
type Fan struct{ f *feed }

// NewFan returns the fan of t; upstream reports the state of what drives
// its owner.
func (h *Hub) NewFan(t Target, upstream func() State) *Fan {
	return &Fan{f: &feed{h: h, target: t, derived: true, upstream: upstream}}
}

// Apply hands on a batch the owner has applied. The first batch is the
// owner's initial contents, not a change: it fixes the fan's position at
// b.Next and its name -> mod revision state (state()), and positions the
// subscribers added before it, handing those that asked for it initial()
// as their first batch.
func (fa *Fan) Apply(b Batch, state func() map[string]int64, initial func() []*Event) {
	f := fa.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		f.state, f.next, f.up = stateOfNames(state()), b.Next, true
		for _, s := range f.members {
			f.position(s, initial)
		}
		return
	}
	if b.Resync {
		f.passResync(b.Next)
	}
	f.advance(b)
}

// Add makes s a subscriber of the fan, positioned at once (with initial()
// as its first batch if it asked for the initial state) if the fan has its
// first batch, else when it does.
func (fa *Fan) Add(s *Sub, initial func() []*Event) {
	f := fa.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.add(s)
	s.mu.Lock()
	s.armed = true
	s.mu.Unlock()
	if f.up {
		f.position(s, initial)
	}
}

// position starts s at the fan's position, in step with it. The caller
// holds f.mu, and the feed is up.
func (f *feed) position(s *Sub, initial func() []*Event) {
	s.mu.Lock()
	if s.cfg.Initial {
		s.push(Batch{Events: initial(), Next: f.next})
	}
	s.enq, s.from, s.positioned = f.next, f.next, true
	s.hook()
	s.mu.Unlock()
	s.markReady()
}
