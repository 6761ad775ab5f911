package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/etcdkit/etcdkit"
)

// Limits is the configuration value of the quick start, and DefaultLimits
// what it applies while no value is stored. The README shows both as
// written here.
type Limits struct {
	MaxConns int `json:"max_conns"`
}

var DefaultLimits = Limits{MaxConns: 10}

// followLimits connects to endpoints and keeps apply fed with the current
// limits until ctx ends. From the NewKey line on it is the README's Watch
// quick start, word for word (TestREADMEExamplesCompile checks it); the
// package documentation shows it without the Create.
func followLimits(ctx context.Context, endpoints []string, apply func(Limits)) error {
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: endpoints, Namespace: "billing"})
	if err != nil {
		return err
	}
	defer c.Close()

	limits := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]())
	if _, err := limits.Create(ctx, Limits{MaxConns: 100}); err != nil && !errors.Is(err, etcdkit.ErrExists) {
		return err
	}

	// Follow it: the current value first, then every change once, in order.
	w := limits.Watch(ctx, etcdkit.WithInitial())
	defer w.Close()
	for ev := range w.Events() {
		switch {
		case ev.Err != nil: // not decodable: keep the last good value
			log.Printf("config/limits at revision %d: %v", ev.Revision, ev.Err)
		case ev.Type == etcdkit.Delete:
			apply(DefaultLimits)
		default:
			apply(ev.Value) // ev.Resync marks a jump over compacted history
		}
	}
	return w.Err() // why the loop ended: ctx, Close, or a permanent failure
}

// Example_quickStart runs the quick start while an operator changes the
// limits, stores a value that does not decode, then deletes them.
func Example_quickStart() {
	endpoint, stop := exampleEtcd()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log.SetOutput(decodeLog{})
	log.SetFlags(0)
	defer func() { log.SetOutput(os.Stderr); log.SetFlags(log.LstdFlags) }()

	applied := make(chan Limits)
	follow, stopFollowing := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- followLimits(follow, []string{endpoint}, func(l Limits) { applied <- l })
	}()
	fmt.Println("applied", <-applied)

	ops, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{endpoint}, Namespace: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer ops.Close()
	if _, err := etcdkit.NewKey(ops, "config/limits", etcdkit.JSON[Limits]()).Put(ctx, Limits{MaxConns: 200}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("applied", <-applied)
	if _, err := etcdkit.NewKey(ops, "config/limits", etcdkit.String()).Put(ctx, "max_conns=300"); err != nil {
		log.Fatal(err)
	}
	if err := etcdkit.NewKey(ops, "config/limits", etcdkit.String()).Delete(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("applied", <-applied)

	stopFollowing()
	fmt.Println("ended:", <-done)
	// Output:
	// applied {100}
	// applied {200}
	// config/limits at revision 4: etcdkit: decode key "config/limits"
	// applied {10}
	// ended: context canceled
}

// decodeLog prints the example's log lines to stdout without the codec's
// own words, which vary with the Go version.
type decodeLog struct{}

func (decodeLog) Write(p []byte) (int, error) {
	line := string(p)
	if i := strings.Index(line, " (mod revision"); i >= 0 {
		line = line[:i] + "\n"
	}
	_, err := os.Stdout.WriteString(line)
	return len(p), err
}
