package etcdkit

import (
	"errors"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// clientLogger is the logger of the raw clients the library dials: log's
// "clientv3" child, with clientv3's own WARN lines demoted to DEBUG.
// clientv3 warns at every retry of its interceptor ("retrying of unary
// invoker failed") and of a call cut short at shutdown; the library
// retries, moves requests off sick members and reports what matters
// itself, once per cause and naming the member, so those lines are noise
// at the levels services run at. Its ERROR lines stay as they are.
func clientLogger(log *zap.Logger) *zap.Logger {
	return log.Named("clientv3").WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return demoted{c} }))
}

// demoted is a core that writes WARN entries at DEBUG.
type demoted struct{ zapcore.Core }

func demote(l zapcore.Level) zapcore.Level {
	if l == zapcore.WarnLevel {
		return zapcore.DebugLevel
	}
	return l
}

func (d demoted) Enabled(l zapcore.Level) bool { return d.Core.Enabled(demote(l)) }

func (d demoted) With(fields []zapcore.Field) zapcore.Core { return demoted{d.Core.With(fields)} }

func (d demoted) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	e.Level = demote(e.Level)
	if d.Core.Enabled(e.Level) {
		return ce.AddCore(e, d)
	}
	return ce
}

func (d demoted) Write(e zapcore.Entry, fields []zapcore.Field) error {
	e.Level = demote(e.Level)
	return d.Core.Write(e, fields)
}

// logRestart logs that what follows the cluster for a handle ended with
// err and starts again: at WARN, or at DEBUG when err is the Client's
// close, which ends the handle too a moment later (a normal shutdown).
func (c *Client) logRestart(msg string, err error, fields ...zap.Field) {
	level := zapcore.WarnLevel
	if errors.Is(err, ErrClosed) {
		level = zapcore.DebugLevel
	}
	c.log.Log(level, msg, append(fields, zap.Error(err))...)
}
