package etcdkit

// lossy is the library's one "latest value wins" channel: a buffered channel
// whose sender never waits for its readers. When the buffer is full, a send
// drops the oldest unread value to make room, so the last value a reader
// receives is always the latest sent. Its capacity says how much history a
// slow reader keeps: 1 for a view that a newer one replaces (Tracker.Updates,
// HealthMonitor.Updates), more for a bounded run of transitions
// (Session.States, Observation.Events).
//
// Make one with make(lossy[T], n), n >= 1, and hand it out as a <-chan T.
// Values come from one sender at a time (one goroutine, or under a lock),
// which alone closes it; any number of goroutines may read it.
type lossy[T any] chan T

// send delivers v without blocking, dropping the oldest unread value if the
// buffer is full.
func (ch lossy[T]) send(v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		// A reader may take a value meanwhile: then the next send has room.
		select {
		case <-ch:
		default:
		}
	}
}

// drain discards the unread values, for a handle whose channel must read as
// closed as soon as it ends rather than after its backlog.
func (ch lossy[T]) drain() {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
