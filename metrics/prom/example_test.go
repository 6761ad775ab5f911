package prom_test

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/metrics/prom"
)

func ExampleNew() {
	reg := prometheus.NewRegistry()
	m, err := prom.New(reg)
	if err != nil {
		panic(err)
	}
	// In a program, pass m as etcdkit.Config.Metrics; the library then
	// counts on its own. Here we count by hand to show what a scrape sees.
	m.Add(etcdkit.MetricWatchReconnects, 1)

	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "etcdkit_watch_reconnects_total" {
			fmt.Println(mf.GetName(), mf.GetType(), mf.GetMetric()[0].GetCounter().GetValue())
		}
	}
	// Output: etcdkit_watch_reconnects_total COUNTER 1
}
