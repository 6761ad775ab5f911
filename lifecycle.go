package etcdkit

import (
	"context"
	"sync"
)

// Every long-running handle has the same Close/Done/Err shape, and one
// mechanism behind it: lifetime, which every handle embeds. A handle that
// also delivers values of type E on a channel (Watch, Observation, Live,
// LiveMap) keeps the channel in a field of its own and begins with
// beginEvents, which closes it at the right moment. A Lock or a Permit has
// no lifetime of its own: it wraps the Leadership that holds it. A new handle adopts it in a few
// lines, as Tracker does:
//
//	type Tracker[M any] struct{ lifetime; ... }
//	t := &Tracker[M]{...}
//	if !t.begin(ctx, c, ErrClosed) { return nil, ErrClosed } // c is closed
//	t.spawn(t.run) // run returns once t.ctx ends; t.cancel(err) on failure
//	t.arm()
//	func (t *Tracker[M]) Done() <-chan struct{} { return t.done }
//	func (t *Tracker[M]) Err() error            { return t.cause() }
//	func (t *Tracker[M]) Close() error          { return t.close() }

// lifetime is the Close/Done/Err core of a handle. The handle ends when its
// context does: the ctx it was made with ends, Close or Client.Close is
// called, or its producers cancel it with the failure that stopped them.
// Ending stops the producers, records the cause, runs the handle's closing
// step (closing its channels), then closes Done, then runs its final step,
// in that order, so that a reader released by any of them finds Err set.
//
// Embed it, start it with begin (or ended), set producers and the optional
// steps, then call arm. The zero value is not usable.
type lifetime struct {
	done chan struct{}
	over chan struct{} // closed once the handle has ended and cleaned up
	ctx  context.Context
	// cancel ends the handle with a cause, unless it has already ended.
	cancel context.CancelCauseFunc
	err    error // set before done is closed
	// producers stops whatever works for the handle and waits for it.
	producers func()
	// explain, if set, turns the context's cause into Err's.
	explain func(error) error
	// ending, if set before begin, runs once, just before cancel (or the
	// client's close) cancels the handle's context, so that whoever sees it
	// cancelled finds its effect (Leadership counts a change).
	ending func()
	// closing, if set, runs once Err is set, before Done is closed; final
	// runs after Done is closed, before close returns.
	closing, final func()
	release        func()
	stopLife       func() bool
}

// begin makes the handle bounded by ctx and by c's life (which ends it with
// closedCause), and registers it with c so that Client.Close waits for its
// end. If c is closed it reports false and the caller ends the handle with
// ErrClosed (see ended).
func (l *lifetime) begin(ctx context.Context, c *Client, closedCause error) bool {
	if !c.hold() {
		return false
	}
	l.done, l.over, l.release = make(chan struct{}), make(chan struct{}), c.wg.Done
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	if l.ending != nil {
		var once sync.Once
		cancel := l.cancel
		l.cancel = func(cause error) { once.Do(func() { l.ending(); cancel(cause) }) }
	}
	l.stopLife = context.AfterFunc(c.life, func() { l.cancel(closedCause) })
	return true
}

// ended makes a handle that has already ended with err.
func (l *lifetime) ended(err error) {
	l.done, l.over = make(chan struct{}), make(chan struct{})
	l.ctx, l.cancel = context.WithCancelCause(context.Background())
	l.cancel(err)
	l.conclude(err)
}

// spawn runs f on a goroutine as the handle's producer: the handle's end
// waits for f to return, then runs the producers set before. f must return
// soon after l.ctx ends. begin's hold covers the goroutine (Client.Close
// waits for the handle's end, which waits for f), so spawn cannot fail.
func (l *lifetime) spawn(f func()) {
	stopped := make(chan struct{})
	then := l.producers
	l.producers = func() {
		<-stopped
		if then != nil {
			then()
		}
	}
	go func() {
		defer close(stopped)
		f()
	}()
}

// arm makes the handle end when its context does.
func (l *lifetime) arm() { context.AfterFunc(l.ctx, l.finish) }

// finish runs once the handle's context has ended: it stops the producers,
// records the cause, closes the channels, Done, then cleans up.
func (l *lifetime) finish() {
	l.stopLife()
	if l.producers != nil {
		l.producers()
	}
	err := context.Cause(l.ctx)
	if l.explain != nil {
		err = l.explain(err)
	}
	l.conclude(err)
	l.release()
}

// conclude records err as the cause, then runs the closing step, closes
// Done, runs the final step and closes over, in that order.
func (l *lifetime) conclude(err error) {
	l.err = err
	if l.closing != nil {
		l.closing()
	}
	close(l.done)
	if l.final != nil {
		l.final()
	}
	close(l.over)
}

// cause returns why the handle ended once Done is closed, nil before.
func (l *lifetime) cause() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// close ends the handle with ErrClosed, unless it had already ended, and
// waits until it has ended and cleaned up.
func (l *lifetime) close() error { return l.closeWith(ErrClosed) }

// closeWith ends the handle with cause, unless it had already ended, and
// waits until it has ended and cleaned up.
func (l *lifetime) closeWith(cause error) error {
	l.cancel(cause)
	<-l.over
	return nil
}

// beginEvents begins the handle l, which delivers values of type E on the
// channel *events (Watch, Observation, Live, LiveMap): it makes the channel
// with the given buffer, and closes it once Err is set, before Done.
func beginEvents[E any](l *lifetime, events *chan E, ctx context.Context, c *Client, buffer int) bool {
	if !l.begin(ctx, c, ErrClosed) {
		return false
	}
	ch := make(chan E, buffer)
	*events = ch
	l.closing = func() { close(ch) }
	return true
}

// endedEvents makes a handle that delivers values on *events, and that has
// already ended with err: its channel is closed.
func endedEvents[E any](l *lifetime, events *chan E, err error) {
	ch := make(chan E)
	*events = ch
	l.closing = func() { close(ch) }
	l.ended(err)
}
