package etcdtest

import (
	"os"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logLines bounds each member's captured log: enough to see the last
// elections and shutdowns, small enough that a long test cannot grow it.
const logLines = 2000

// logEnv is the environment variable that, set to 1, prints the captured
// logs of a failed test as if WithLogs had been given.
const logEnv = "ETCDKIT_TEST_LOGS"

// logBuffer is a bounded, concurrency-safe ring of encoded log lines.
type logBuffer struct {
	mu      sync.Mutex
	lines   []string
	next    int
	full    bool
	dropped int
}

func newLogBuffer() *logBuffer {
	return &logBuffer{lines: make([]string, logLines)}
}

// Write stores p as one line; zap hands each entry to a single Write call.
func (b *logBuffer) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	b.mu.Lock()
	if b.full {
		b.dropped++
	}
	b.lines[b.next] = line
	b.next++
	if b.next == len(b.lines) {
		b.next = 0
		b.full = true
	}
	b.mu.Unlock()
	return len(p), nil
}

// Sync implements zapcore.WriteSyncer.
func (b *logBuffer) Sync() error { return nil }

// tail returns the retained lines, oldest first, and how many older lines
// were dropped to stay within the bound.
func (b *logBuffer) tail() ([]string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	if b.full {
		out = append(out, b.lines[b.next:]...)
	}
	out = append(out, b.lines[:b.next]...)
	return out, b.dropped
}

// logger returns a zap logger that writes into b, tagged with name.
func (b *logBuffer) logger(name string) *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.TimeKey = "T"
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(b), zap.InfoLevel)
	return zap.New(core).Named(name)
}

// dump prints the retained lines through t.Log when the test failed and the
// logs were asked for, by WithLogs or by ETCDKIT_TEST_LOGS=1.
func (b *logBuffer) dump(t testing.TB, name string, wanted bool) {
	if !t.Failed() || !(wanted || os.Getenv(logEnv) == "1") {
		return
	}
	lines, dropped := b.tail()
	var sb strings.Builder
	for _, l := range lines {
		sb.WriteString(l)
		sb.WriteByte('\n')
	}
	t.Logf("etcd member %s log (%d older lines dropped):\n%s", name, dropped, sb.String())
}
