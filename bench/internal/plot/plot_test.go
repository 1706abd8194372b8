package plot

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// threeSeries returns three well separated series so that none hides another.
func threeSeries() []Series {
	var s []Series
	for i, name := range []string{"fast", "medium", "slow"} {
		var x, y []float64
		for p := 0.0; p <= 100; p += 0.5 {
			x = append(x, p)
			y = append(y, math.Pow(10, float64(i))*(1+p/25)) // 1..5, 10..50, 100..500
		}
		s = append(s, Series{Name: name, X: x, Y: y})
	}
	return s
}

func decodeFile(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return img
}

func sameColor(c color.Color, want color.RGBA) bool {
	r, g, b, a := c.RGBA()
	return uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(b>>8) == want.B && uint8(a>>8) == want.A
}

func countColor(img image.Image, r image.Rectangle, want color.RGBA) int {
	n := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if sameColor(img.At(x, y), want) {
				n++
			}
		}
	}
	return n
}

func TestRenderThreeSeries(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		c    Chart
		w, h int
	}{
		{"linear", Chart{Title: "Latency", XLabel: "percentile", YLabel: "ms", Series: threeSeries()}, DefaultWidth, DefaultHeight},
		{"log", Chart{Title: "Latency", XLabel: "percentile", YLabel: "ms", LogY: true, Series: threeSeries(), Width: 800, Height: 500}, 800, 500},
		{"log-fixed-ticks", Chart{LogY: true, Series: threeSeries(), XTicks: []Tick{{0, "0"}, {50, "50"}, {90, "90"}, {99, "99"}}}, DefaultWidth, DefaultHeight},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".png")
			if err := tc.c.WritePNG(path); err != nil {
				t.Fatal(err)
			}
			img := decodeFile(t, path)
			if b := img.Bounds(); b.Dx() != tc.w || b.Dy() != tc.h {
				t.Fatalf("size = %dx%d, want %dx%d", b.Dx(), b.Dy(), tc.w, tc.h)
			}
			_, area, err := tc.c.render()
			if err != nil {
				t.Fatal(err)
			}
			if !area.In(img.Bounds()) || area.Dx() < 100 || area.Dy() < 100 {
				t.Fatalf("implausible plot area %v", area)
			}
			for i := range tc.c.Series {
				if n := countColor(img, area, seriesColor(i)); n < 100 {
					t.Errorf("series %d: only %d pixels of colour %v in plot area %v", i, n, seriesColor(i), area)
				}
			}
			for _, p := range []image.Point{{0, 0}, {tc.w - 1, 0}, {0, tc.h - 1}, {tc.w - 1, tc.h - 1}} {
				if !sameColor(img.At(p.X, p.Y), colWhite) {
					t.Errorf("corner %v is %v, want white", p, img.At(p.X, p.Y))
				}
			}
			// Distinct colours for the first 8 series, none equal to a UI colour.
			seen := map[color.RGBA]bool{colWhite: true, colText: true, colFrame: true, colGrid: true, colMinorGrid: true, colLegend: true}
			for i := 0; i < 8; i++ {
				if seen[seriesColor(i)] {
					t.Errorf("series colour %d %v is not distinct", i, seriesColor(i))
				}
				seen[seriesColor(i)] = true
			}
		})
	}
}

// TestDegenerateInputs: charts without any plottable point (no series,
// empty series, only zeros/negatives on a log axis, only NaN/Inf) are not
// errors; they encode to a valid image of the requested size.
func TestDegenerateInputs(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	for name, c := range map[string]Chart{
		"no-series":        {Title: "nothing"},
		"empty-series":     {Series: []Series{{Name: "a"}, {Name: "b", X: []float64{}, Y: []float64{}}}},
		"log-all-zero":     {LogY: true, Series: []Series{{Name: "z", X: []float64{0, 1, 2}, Y: []float64{0, 0, 0}}}},
		"log-negative":     {LogY: true, Series: []Series{{X: []float64{0, 1}, Y: []float64{-1, -5}}}},
		"linear-all-zero":  {Series: []Series{{Name: "z", X: []float64{0, 1, 2}, Y: []float64{0, 0, 0}}}},
		"nan-inf":          {Series: []Series{{X: []float64{nan, 1, inf}, Y: []float64{1, nan, 2}}}},
		"single-point":     {LogY: true, Series: []Series{{Name: "one", X: []float64{5}, Y: []float64{3}}}},
		"constant-x":       {Series: []Series{{X: []float64{7, 7, 7}, Y: []float64{1, 2, 3}}}},
		"fixed-ticks-only": {XTicks: []Tick{{0, "a"}, {inf, "b"}, {2, "c"}}},
		"huge-range":       {LogY: true, Series: []Series{{X: []float64{0, 1, 2}, Y: []float64{1e-300, 1, 1e300}}}},
		"mixed-log": {LogY: true, Series: []Series{
			{Name: "zeros", X: []float64{0, 1}, Y: []float64{0, 0}},
			{Name: "ok", X: []float64{0, 1, 2, 3}, Y: []float64{0, 2, -1, 40}},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := c.Encode(&buf); err != nil {
				t.Fatalf("Encode: %v", err)
			}
			img, err := png.Decode(&buf)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if b := img.Bounds(); b.Dx() != DefaultWidth || b.Dy() != DefaultHeight {
				t.Fatalf("size = %v", b)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	for name, c := range map[string]Chart{
		"length-mismatch": {Series: []Series{{Name: "bad", X: []float64{1, 2}, Y: []float64{1}}}},
		"too-small":       {Width: 50, Height: 50},
		"negative-size":   {Width: -1, Height: 600},
	} {
		if err := c.Encode(&bytes.Buffer{}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// A failed render must not create the file.
	path := filepath.Join(t.TempDir(), "x.png")
	c := Chart{Width: 10, Height: 10}
	if err := c.WritePNG(path); err == nil {
		t.Fatal("no error")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("file exists after failed WritePNG: %v", err)
	}
}

func labels(ticks []tick) string {
	var s []string
	for _, t := range ticks {
		if t.label != "" {
			s = append(s, t.label)
		}
	}
	return strings.Join(s, " ")
}

func TestLogTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi float64 // values, not logs
		ph     int
		want   string
	}{
		{0.3, 800, 500, "0.2 0.5 1 2 5 10 20 50 100 200 500 1k"},
		{0.15, 450, 500, "0.1 0.2 0.5 1 2 5 10 20 50 100 200 500"},
		{1e-3, 1e6, 300, "0.001 0.01 0.1 1 10 100 1k 10k 100k 1M"},
		{30, 45, 500, "20 25 30 35 40 45 50"},
		{10, 10, 500, "6 8 10 12 14 16 18 20"},
	} {
		lo, hi, ticks := logTicks(math.Log10(tc.lo), math.Log10(tc.hi), tc.ph)
		spaceLabels(ticks, lo, hi, float64(tc.ph), func(tick) float64 { return textH + 2 })
		if got := labels(ticks); got != tc.want {
			t.Errorf("logTicks(%g, %g, %d) labels = %q, want %q", tc.lo, tc.hi, tc.ph, got, tc.want)
		}
	}
}

func TestLinearTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi float64
		n      int
		want   string
	}{
		{0, 99.99, 9, "0 10 20 30 40 50 60 70 80 90 100"},
		{0.1, 0.93, 5, "0 0.2 0.4 0.6 0.8 1"},
		{0, 4500, 5, "0 1k 2k 3k 4k 5k"},
		{-3, 3, 6, "-3 -2 -1 0 1 2 3"},
		{0, 0, 5, "0 0.2 0.4 0.6 0.8 1"},
	} {
		_, _, ticks := linearTicks(tc.lo, tc.hi, tc.n)
		if got := labels(ticks); got != tc.want {
			t.Errorf("linearTicks(%g, %g, %d) = %q, want %q", tc.lo, tc.hi, tc.n, got, tc.want)
		}
	}
}

func TestFormatNum(t *testing.T) {
	for _, tc := range []struct {
		v, step float64
		want    string
	}{
		{0.5, 0.1, "0.5"}, {1, 1, "1"}, {1000, 1000, "1k"}, {1500, 500, "1.5k"},
		{2e6, 1e6, "2M"}, {1001, 1, "1001"}, {0.05, 0.01, "0.05"}, {3e-7, 1e-7, "3e-07"},
		{-0.0000000001, 0.1, "0"}, {1e300, 1e300, "1e+300"},
	} {
		if got := formatNum(tc.v, tc.step); got != tc.want {
			t.Errorf("formatNum(%g, %g) = %q, want %q", tc.v, tc.step, got, tc.want)
		}
	}
}
