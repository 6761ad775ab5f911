package etcdkit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
)

// TestNewReportsDialErrors points New at endpoints that cannot work. Without
// the endpoint checks and the dial diagnosis, each failed after the full
// DialTimeout with only "context deadline exceeded".
func TestNewReportsDialErrors(t *testing.T) {
	for _, tc := range []struct {
		name, endpoint string
		want           []string
		fast           bool // refused before dialling
	}{
		{"no port", "127.0.0.1", []string{`"127.0.0.1"`, "port"}, true},
		{"bad port", "127.0.0.1:http2", []string{`"127.0.0.1:http2"`, "port"}, true},
		{"refused", "127.0.0.1:1", []string{"127.0.0.1:1", "connection refused"}, false},
		{"refused with scheme", "http://127.0.0.1:1", []string{"127.0.0.1:1", "connection refused"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{tc.endpoint}, DialTimeout: 2 * time.Second})
			if err == nil {
				_ = c.Close()
			}
			require.Error(t, err)
			t.Log(err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			if tc.fast {
				assert.Less(t, time.Since(start), time.Second, "refused before dialling")
			}
			assert.Equal(t, 1, strings.Count(err.Error(), "etcdkit:"), "got %q, want one prefix", err)
		})
	}
}

// TestNewReportsEveryEndpoint checks that each endpoint's own dial error is
// reported.
func TestNewReportsEveryEndpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:1", "127.0.0.1:2"}, DialTimeout: time.Second})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "127.0.0.1:1: ")
	assert.Contains(t, err.Error(), "127.0.0.1:2: ")
	assert.Equal(t, 2, strings.Count(err.Error(), "connection refused"), "got %q", err)
}
