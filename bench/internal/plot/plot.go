// Package plot renders simple line charts to PNG.
//
// It is deliberately small: one chart type (lines), a linear x axis, a
// linear or log10 y axis, computed or fixed x ticks, a title, axis labels
// and a legend. Text is drawn with the fixed 7x13 bitmap font from
// golang.org/x/image/font/basicfont, so only printable ASCII renders as
// such; other runes show as a replacement glyph.
//
// Data handling:
//   - A point is skipped when its X or Y is NaN or ±Inf, or, with LogY,
//     when Y <= 0. Skipped points are simply left out: the line joins the
//     neighbouring valid points.
//   - A series with exactly one valid point is drawn as a small square.
//   - A series whose X and Y lengths differ is an error.
//   - A chart with no series, or with no valid point at all (for example
//     only zeros on a log axis), is not an error: it renders a valid image
//     with empty default axes and a "no data" note, so a benchmark run does
//     not fail because one plot had nothing to show.
//   - Fixed XTicks outside the data's x range are not drawn; the x range
//     always comes from the data.
package plot

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
	"os"
)

// Default image size, used when Chart.Width or Chart.Height is zero.
const (
	DefaultWidth  = 1000
	DefaultHeight = 600
)

// Minimum accepted image size.
const (
	minWidth  = 200
	minHeight = 150
)

// Series is one line. X and Y must have the same length.
type Series struct {
	Name string
	X, Y []float64
}

// Tick is a fixed x-axis tick: a grid line at At labelled Label (an empty
// Label draws the tick and grid line without text).
type Tick struct {
	At    float64
	Label string
}

// Chart describes a line chart. The zero value (plus some Series) is usable.
type Chart struct {
	Title, XLabel, YLabel string
	LogY                  bool   // log10 y axis; values <= 0 are skipped
	XTicks                []Tick // optional fixed x ticks; otherwise "nice" ticks are computed
	Series                []Series
	Width, Height         int // pixels; 0 means DefaultWidth x DefaultHeight
}

// WritePNG renders the chart and writes it as a PNG file at path. Nothing
// is written if rendering fails.
func (c *Chart) WritePNG(path string) error {
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// Encode renders the chart and writes it to w as PNG.
func (c *Chart) Encode(w io.Writer) error {
	img, _, err := c.render()
	if err != nil {
		return err
	}
	return png.Encode(w, img)
}

// Layout constants, in pixels.
const (
	pad        = 10 // outer padding
	tickLen    = 5  // major tick mark length (outside the frame)
	minorLen   = 3  // minor tick mark length
	tickGap    = 4  // gap between tick mark and tick label
	labelGap   = 8  // gap between tick labels and axis label
	titleScale = 2  // title is drawn at 2x the base font
	legendRow  = 18 // legend row height
	swatchLen  = 24 // legend line sample length
)

type point struct{ x, y float64 } // y is log10(Y) on a log axis

// render draws the chart and also returns the plot area (the frame
// rectangle, exclusive Max), which the tests use.
func (c *Chart) render() (*image.RGBA, image.Rectangle, error) {
	w, h := c.Width, c.Height
	if w == 0 {
		w = DefaultWidth
	}
	if h == 0 {
		h = DefaultHeight
	}
	if w < minWidth || h < minHeight {
		return nil, image.Rectangle{}, fmt.Errorf("plot: image size %dx%d too small (minimum %dx%d)", w, h, minWidth, minHeight)
	}

	// Collect valid points and the data range.
	pts := make([][]point, len(c.Series))
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for i, s := range c.Series {
		if len(s.X) != len(s.Y) {
			return nil, image.Rectangle{}, fmt.Errorf("plot: series %d (%q): len(X)=%d != len(Y)=%d", i, s.Name, len(s.X), len(s.Y))
		}
		for j := range s.X {
			x, y := s.X[j], s.Y[j]
			if !finite(x) || !finite(y) || (c.LogY && y <= 0) {
				continue
			}
			if c.LogY {
				y = math.Log10(y)
			}
			pts[i] = append(pts[i], point{x, y})
			xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
			ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
		}
	}
	hasData := xmin <= xmax
	if !hasData {
		xmin, xmax, ymin, ymax = 0, 1, 0, 1 // y: 0..1, or 1..10 on a log axis
	}

	// Legend size (drawn to the right of the plot area).
	names := legendNames(c.Series, w)
	legendW, legendH := 0, 0
	if len(names) > 0 {
		maxW := 0
		for _, n := range names {
			maxW = max(maxW, textWidth(n))
		}
		legendW = 8 + swatchLen + 6 + maxW + 8
		legendH = 6 + len(names)*legendRow
	}

	// Vertical layout first: y ticks depend on the plot height only.
	top := pad + textH/2 + 1 // room for the top y tick label
	if c.Title != "" {
		top = pad + titleScale*textH + pad
	}
	bottom := tickLen + tickGap + textH + pad
	if c.XLabel != "" {
		bottom += labelGap + textH
	}
	ph := h - top - bottom
	if ph < 50 {
		return nil, image.Rectangle{}, fmt.Errorf("plot: image height %d leaves no room for the plot", h)
	}
	var ylo, yhi float64
	var yticks []tick
	if c.LogY {
		ylo, yhi, yticks = logTicks(ymin, ymax, ph)
	} else {
		ylo, yhi, yticks = linearTicks(ymin, ymax, max(2, ph/60))
	}
	spaceLabels(yticks, ylo, yhi, float64(ph), func(t tick) float64 { return textH + 2 })

	left := pad + tickLen + tickGap
	maxYLabel := 0
	for _, t := range yticks {
		maxYLabel = max(maxYLabel, textWidth(t.label))
	}
	left += maxYLabel
	if c.YLabel != "" {
		left += textH + labelGap
	}
	right := 3 * pad
	if legendW > 0 {
		right = 2*pad + legendW
	}
	pw := w - left - right
	if pw < 50 {
		return nil, image.Rectangle{}, fmt.Errorf("plot: image width %d leaves no room for the plot", w)
	}

	// X range and ticks.
	var xlo, xhi float64
	var xticks []tick
	if len(c.XTicks) > 0 {
		xlo, xhi = xmin, xmax
		if !hasData { // span the fixed ticks, if they make sense
			tmin, tmax := math.Inf(1), math.Inf(-1)
			for _, t := range c.XTicks {
				if finite(t.At) {
					tmin, tmax = math.Min(tmin, t.At), math.Max(tmax, t.At)
				}
			}
			if tmin < tmax {
				xlo, xhi = tmin, tmax
			}
		}
		xlo, xhi = widen(xlo, xhi)
		eps := (xhi - xlo) * 1e-9
		for _, t := range c.XTicks {
			if finite(t.At) && t.At >= xlo-eps && t.At <= xhi+eps {
				xticks = append(xticks, tick{v: t.At, label: t.Label, major: true})
			}
		}
	} else {
		xlo, xhi, xticks = linearTicks(xmin, xmax, max(2, pw/100))
	}
	spaceLabels(xticks, xlo, xhi, float64(pw), func(t tick) float64 { return float64(textWidth(t.label) + 12) })

	// Drawing.
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	fill(img, img.Bounds(), colWhite)
	area := image.Rect(left, top, left+pw, top+ph) // frame, Max exclusive
	L, T, R, B := area.Min.X, area.Min.Y, area.Max.X-1, area.Max.Y-1
	// Data maps onto [L, R-1] x [T, B-1]; the 2x2 line brush then covers [L, R] x [T, B].
	fx := func(x float64) float64 { return float64(L) + (x-xlo)/(xhi-xlo)*float64(pw-2) }
	fy := func(y float64) float64 { return float64(B-1) - (y-ylo)/(yhi-ylo)*float64(ph-2) }
	inner := image.Rect(L+1, T+1, R, B) // inside the frame

	// Grid: minor first so major lines win.
	for _, t := range yticks {
		if !t.major {
			hline(img, L+1, R-1, iround(fy(t.v)), colMinorGrid, inner)
		}
	}
	for _, t := range yticks {
		if t.major {
			hline(img, L+1, R-1, iround(fy(t.v)), colGrid, inner)
		}
	}
	for _, t := range xticks {
		vline(img, iround(fx(t.v)), T+1, B-1, colGrid, inner)
	}

	// Series, clipped to the plot area (frame included; it is redrawn on top).
	for i, p := range pts {
		col := seriesColor(i)
		if len(p) == 1 {
			x, y := iround(fx(p[0].x)), iround(fy(p[0].y))
			fill(img, image.Rect(x-2, y-2, x+4, y+4).Intersect(area), col)
			continue
		}
		for j := 1; j < len(p); j++ {
			thickLine(img, fx(p[j-1].x), fy(p[j-1].y), fx(p[j].x), fy(p[j].y), col, area)
		}
	}

	// Frame, tick marks and tick labels.
	hline(img, L, R, T, colFrame, img.Bounds())
	hline(img, L, R, B, colFrame, img.Bounds())
	vline(img, L, T, B, colFrame, img.Bounds())
	vline(img, R, T, B, colFrame, img.Bounds())
	for _, t := range yticks {
		y := iround(fy(t.v))
		n := tickLen
		if !t.major {
			n = minorLen
		}
		hline(img, L-n, L-1, y, colFrame, img.Bounds())
		if t.label != "" {
			drawText(img, t.label, L-tickLen-tickGap-textWidth(t.label), y-textH/2, colText, 1, false)
		}
	}
	for _, t := range xticks {
		x := iround(fx(t.v))
		vline(img, x, B+1, B+tickLen, colFrame, img.Bounds())
		if t.label != "" {
			tw := textWidth(t.label)
			tx := min(max(x-tw/2, 0), w-tw)
			drawText(img, t.label, tx, B+1+tickLen+tickGap, colText, 1, false)
		}
	}

	// Axis labels and title.
	if c.XLabel != "" {
		tw := textWidth(c.XLabel)
		tx := min(max(L+pw/2-tw/2, 0), w-tw)
		drawText(img, c.XLabel, tx, B+1+tickLen+tickGap+textH+labelGap, colText, 1, false)
	}
	if c.YLabel != "" {
		tw := textWidth(c.YLabel)
		ty := min(max(T+ph/2-tw/2, 0), h-tw)
		drawText(img, c.YLabel, pad, ty, colText, 1, true)
	}
	if c.Title != "" {
		title, scale := c.Title, titleScale
		if textWidth(title)*scale > w-2*pad {
			scale = 1
			title = truncate(title, (w-2*pad)/textWidth("0"))
		}
		tw := textWidth(title) * scale
		cx := L + pw/2 // centre over the plot area, but keep it inside the image
		tx := min(max(cx-tw/2, pad), w-pad-tw)
		drawText(img, title, tx, pad+(titleScale-scale)*textH/2, colText, scale, false)
	}
	if !hasData {
		msg := "no data"
		drawText(img, msg, L+pw/2-textWidth(msg)/2, T+ph/2-textH/2, colFrame, 1, false)
	}

	// Legend.
	if len(names) > 0 {
		lx, ly := R+1+pad, T
		box := image.Rect(lx, ly, lx+legendW, ly+legendH)
		fill(img, box, colWhite)
		hline(img, box.Min.X, box.Max.X-1, box.Min.Y, colLegend, img.Bounds())
		hline(img, box.Min.X, box.Max.X-1, box.Max.Y-1, colLegend, img.Bounds())
		vline(img, box.Min.X, box.Min.Y, box.Max.Y-1, colLegend, img.Bounds())
		vline(img, box.Max.X-1, box.Min.Y, box.Max.Y-1, colLegend, img.Bounds())
		for i, n := range names {
			col := seriesColor(i)
			yc := ly + 3 + i*legendRow + legendRow/2
			fill(img, image.Rect(lx+8, yc-1, lx+8+swatchLen, yc+1), col)
			drawText(img, n, lx+8+swatchLen+6, yc-textH/2, col, 1, false)
		}
	}
	return img, area, nil
}

// legendNames returns the legend entries, or nil when no series is named.
// Unnamed series become "series N"; long names are shortened so the legend
// takes at most about a quarter of the image width.
func legendNames(series []Series, width int) []string {
	named := false
	for _, s := range series {
		if s.Name != "" {
			named = true
		}
	}
	if !named {
		return nil
	}
	maxChars := max(6, (width/4-(8+swatchLen+6+8))/textWidth("0"))
	names := make([]string, len(series))
	for i, s := range series {
		n := s.Name
		if n == "" {
			n = fmt.Sprintf("series %d", i+1)
		}
		names[i] = truncate(n, maxChars)
	}
	return names
}

// truncate shortens s to at most n runes, marking the cut with "..".
func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:max(0, n-2)]) + ".."
	}
	return s
}

// widen makes a degenerate range [v, v] non-empty.
func widen(lo, hi float64) (float64, float64) {
	if hi > lo {
		return lo, hi
	}
	d := math.Abs(lo) * 0.1
	if d == 0 {
		d = 1
	}
	return lo - d, hi + d
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func iround(v float64) int { return int(math.Round(v)) }
