// Package prom records etcdkit's metrics in a Prometheus registry.
//
// Pass the Metrics it returns as etcdkit.Config.Metrics:
//
//	m, err := prom.New(prometheus.DefaultRegisterer)
//	if err != nil { ... }
//	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: eps, Metrics: m})
//
// Every etcdkit.Metric becomes one collector named Prefix + its name: a
// counter for the names ending in "_total", a gauge for the others, with the
// metric's help text. To tell several clients apart in one registry, give
// each its own labels with prometheus.WrapRegistererWith.
package prom

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/etcdkit/etcdkit"
)

// Prefix is put before every etcdkit.Metric name to make the Prometheus
// metric name.
const Prefix = "etcdkit_"

type metrics struct {
	counters map[etcdkit.Metric]prometheus.Counter
	gauges   map[etcdkit.Metric]prometheus.Gauge
}

// New registers one collector per etcdkit.Metric (see etcdkit.AllMetrics) on
// reg, or on prometheus.DefaultRegisterer if reg is nil, and returns the
// etcdkit.Metrics that feeds them. If reg already holds a collector of the
// same kind under one of the names, as after an earlier New on the same
// registry, that collector is shared, so that several clients add up into
// one series. New fails, leaving reg as it was, if a name is taken by a
// collector of another kind or with another help text.
//
// The Metrics returned is safe for concurrent use, never blocks and never
// panics: a negative or NaN delta for a counter, Set on a counter and a
// Metric this version does not know are ignored.
func New(reg prometheus.Registerer) (etcdkit.Metrics, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	m := &metrics{
		counters: make(map[etcdkit.Metric]prometheus.Counter),
		gauges:   make(map[etcdkit.Metric]prometheus.Gauge),
	}
	var added []prometheus.Collector
	for _, name := range etcdkit.AllMetrics() {
		c, isNew, err := register(reg, name)
		if err != nil {
			for _, c := range added {
				reg.Unregister(c)
			}
			return nil, fmt.Errorf("prom: register %s%s: %w", Prefix, name, err)
		}
		if isNew {
			added = append(added, c)
		}
		if name.Kind() == etcdkit.KindGauge {
			m.gauges[name] = c.(prometheus.Gauge)
		} else {
			m.counters[name] = c.(prometheus.Counter)
		}
	}
	return m, nil
}

// register registers a new collector for name, or returns the one of the
// same kind already registered under its name.
func register(reg prometheus.Registerer, name etcdkit.Metric) (c prometheus.Collector, isNew bool, err error) {
	fq, help := Prefix+string(name), name.Help()
	wantGauge := name.Kind() == etcdkit.KindGauge
	if wantGauge {
		c = prometheus.NewGauge(prometheus.GaugeOpts{Name: fq, Help: help})
	} else {
		c = prometheus.NewCounter(prometheus.CounterOpts{Name: fq, Help: help})
	}
	err = reg.Register(c)
	if err == nil {
		return c, true, nil
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		return nil, false, err
	}
	// A Gauge has every method of a Counter: tell them apart by Set.
	_, isGauge := are.ExistingCollector.(prometheus.Gauge)
	_, isCounter := are.ExistingCollector.(prometheus.Counter)
	if wantGauge && isGauge || !wantGauge && isCounter && !isGauge {
		return are.ExistingCollector, false, nil
	}
	return nil, false, errors.New("a collector of another kind is registered under the name")
}

// Add adds delta to the counter, or the gauge, name.
func (m *metrics) Add(name etcdkit.Metric, delta float64) {
	if c, ok := m.counters[name]; ok {
		if delta >= 0 {
			c.Add(delta)
		}
		return
	}
	if g, ok := m.gauges[name]; ok {
		g.Add(delta)
	}
}

// Set sets the gauge name to v.
func (m *metrics) Set(name etcdkit.Metric, v float64) {
	if g, ok := m.gauges[name]; ok {
		g.Set(v)
	}
}
