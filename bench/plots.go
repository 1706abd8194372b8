package main

import (
	"math"
	"path/filepath"
	"strings"
	"time"

	"github.com/reversehttp/reverse_http/bench/internal/plot"
)

// plotVariant draws the time-in-system percentile curves of one scheduling
// variant: results/latency-KEY.png, and results/latency.png for the 90%
// equal-workers case, the headline figure.
func plotVariant(o *options, v schedVariant, outcomes []schedOutcome) error {
	c := &plot.Chart{
		Title:  "Time in system: " + strings.TrimLeft(v.title, "0123456789abcd. "),
		XLabel: "percentile",
		YLabel: "time in system (ms, log scale)",
		LogY:   true,
		XTicks: []plot.Tick{{At: 0, Label: "0"}, {At: 1, Label: "90"}, {At: 2, Label: "99"}, {At: 3, Label: "99.9"}},
	}
	for _, oc := range outcomes {
		c.Series = append(c.Series, percentileCurve(oc.short, oc.sojourn))
	}
	paths := []string{filepath.Join(o.out, "latency-"+v.key+".png")}
	if v.key == "90" {
		paths = append(paths, filepath.Join(o.out, "latency.png"))
	}
	for _, p := range paths {
		if err := c.WritePNG(p); err != nil {
			return err
		}
	}
	return nil
}

// percentileCurve turns sorted durations into points (x = -log10(1-p),
// so that 90, 99 and 99.9 are evenly spaced; y in ms).
func percentileCurve(name string, sorted []time.Duration) plot.Series {
	s := plot.Series{Name: name}
	n := len(sorted)
	for i, d := range sorted {
		p := (float64(i) + 0.5) / float64(n)
		s.X = append(s.X, -math.Log10(1-p))
		s.Y = append(s.Y, float64(d)/float64(time.Millisecond))
	}
	return s
}
