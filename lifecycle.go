package etcdkit

import "context"

// lifecycle is the Close/Done/Err core of a handle that delivers values of
// type E on a channel (Watch, Observation). The handle ends when its
// context does: the ctx it was made with ends, Close or Client.Close is
// called, or its producers cancel it with the failure that stopped them.
// Ending stops the producers, records the cause, then closes the channel and
// Done, in that order, so that a reader released by either finds Err set.
//
// Embed it, start it with init (or ended), set producers, then call arm.
// The zero value is not usable.
type lifecycle[E any] struct {
	events chan E
	done   chan struct{}
	ctx    context.Context
	cancel context.CancelCauseFunc
	err    error // set before done is closed
	// producers stops whatever sends on events and waits for it.
	producers func()
	release   func()
	stopLife  func() bool
}

// init makes the handle bounded by ctx and by c's life, and registers it
// with c so that Client.Close waits for its end. If c is closed it reports
// false and the caller ends the handle with ErrClosed (see ended).
func (l *lifecycle[E]) init(ctx context.Context, c *Client, buffer int) bool {
	if !c.hold() {
		return false
	}
	l.events, l.done, l.release = make(chan E, buffer), make(chan struct{}), c.wg.Done
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	l.stopLife = context.AfterFunc(c.life, func() { l.cancel(ErrClosed) })
	return true
}

// ended makes a handle that has already ended with err.
func (l *lifecycle[E]) ended(err error) {
	l.events, l.done, l.err = make(chan E), make(chan struct{}), err
	l.ctx, l.cancel = context.WithCancelCause(context.Background())
	l.cancel(err)
	close(l.events)
	close(l.done)
}

// arm makes the handle end when its context does.
func (l *lifecycle[E]) arm() { context.AfterFunc(l.ctx, l.finish) }

// finish runs once the handle's context has ended: it stops the producers,
// records the cause, closes the channel, then Done.
func (l *lifecycle[E]) finish() {
	l.stopLife()
	if l.producers != nil {
		l.producers()
	}
	l.err = context.Cause(l.ctx)
	close(l.events)
	close(l.done)
	l.release()
}

// cause returns why the handle ended once Done is closed, nil before.
func (l *lifecycle[E]) cause() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// close ends the handle with ErrClosed, unless it had already ended, and
// waits for its end.
func (l *lifecycle[E]) close() error {
	l.cancel(ErrClosed)
	<-l.done
	return nil
}
