package plot

import (
	"image"
	"image/color"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

var (
	colWhite     = color.RGBA{0xff, 0xff, 0xff, 0xff}
	colText      = color.RGBA{0x22, 0x22, 0x22, 0xff}
	colFrame     = color.RGBA{0x55, 0x55, 0x55, 0xff}
	colGrid      = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	colMinorGrid = color.RGBA{0xf0, 0xf0, 0xf0, 0xff}
	colLegend    = color.RGBA{0xaa, 0xaa, 0xaa, 0xff}
)

// palette holds the series colours (the "Tableau 10" set, slightly
// reordered and darkened where needed for legible text on white).
var palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, // blue
	{0xff, 0x7f, 0x0e, 0xff}, // orange
	{0x2c, 0xa0, 0x2c, 0xff}, // green
	{0xd6, 0x27, 0x28, 0xff}, // red
	{0x94, 0x67, 0xbd, 0xff}, // purple
	{0x8c, 0x56, 0x4b, 0xff}, // brown
	{0xe3, 0x77, 0xc2, 0xff}, // pink
	{0x17, 0xa5, 0xb8, 0xff}, // cyan
	{0xa8, 0xa9, 0x1d, 0xff}, // olive
	{0x7f, 0x7f, 0x7f, 0xff}, // grey
}

// seriesColor returns the colour of series i; colours repeat after len(palette).
func seriesColor(i int) color.RGBA { return palette[i%len(palette)] }

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// hline draws x0..x1 (inclusive) on row y, limited to clip.
func hline(img *image.RGBA, x0, x1, y int, c color.RGBA, clip image.Rectangle) {
	fill(img, image.Rect(x0, y, x1+1, y+1).Intersect(clip), c)
}

// vline draws y0..y1 (inclusive) on column x, limited to clip.
func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA, clip image.Rectangle) {
	fill(img, image.Rect(x, y0, x+1, y1+1).Intersect(clip), c)
}

// thickLine draws a 2 px wide line from (x0,y0) to (x1,y1), clipped to clip.
func thickLine(img *image.RGBA, x0, y0, x1, y1 float64, c color.RGBA, clip image.Rectangle) {
	// Clip in float space first (Liang-Barsky) so far-away endpoints cannot
	// produce huge loops or integer overflow.
	minX, minY := float64(clip.Min.X)-1, float64(clip.Min.Y)-1
	maxX, maxY := float64(clip.Max.X), float64(clip.Max.Y)
	dx, dy := x1-x0, y1-y0
	t0, t1 := 0.0, 1.0
	for _, e := range [4][2]float64{
		{-dx, x0 - minX}, {dx, maxX - x0},
		{-dy, y0 - minY}, {dy, maxY - y0},
	} {
		p, q := e[0], e[1]
		if p == 0 {
			if q < 0 {
				return
			}
			continue
		}
		r := q / p
		if p < 0 {
			t0 = math.Max(t0, r)
		} else {
			t1 = math.Min(t1, r)
		}
	}
	if t0 > t1 {
		return
	}
	ax, ay := iround(x0+t0*dx), iround(y0+t0*dy)
	bx, by := iround(x0+t1*dx), iround(y0+t1*dy)

	// Bresenham with a 2x2 brush; each pixel is checked against clip.
	plot := func(x, y int) {
		for _, d := range [4][2]int{{0, 0}, {1, 0}, {0, 1}, {1, 1}} {
			p := image.Pt(x+d[0], y+d[1])
			if p.In(clip) {
				img.SetRGBA(p.X, p.Y, c)
			}
		}
	}
	ddx, ddy := abs(bx-ax), -abs(by-ay)
	sx, sy := 1, 1
	if ax > bx {
		sx = -1
	}
	if ay > by {
		sy = -1
	}
	err := ddx + ddy
	for {
		plot(ax, ay)
		if ax == bx && ay == by {
			return
		}
		e2 := 2 * err
		if e2 >= ddy {
			err += ddy
			ax += sx
		}
		if e2 <= ddx {
			err += ddx
			ay += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

var face = basicfont.Face7x13

const textH = 13 // basicfont.Face7x13 line height

func textWidth(s string) int { return font.MeasureString(face, s).Round() }

// drawText draws s with the top-left corner of its box at (x, y), each font
// pixel scaled to scale x scale. With rot, the text is rotated 90° counter-
// clockwise (reading bottom to top) and (x, y) is the top-left of the
// rotated box.
func drawText(img *image.RGBA, s string, x, y int, c color.RGBA, scale int, rot bool) {
	w := textWidth(s)
	if w == 0 {
		return
	}
	mask := image.NewAlpha(image.Rect(0, 0, w, textH))
	d := font.Drawer{Dst: mask, Src: image.Opaque, Face: face, Dot: fixed.P(0, face.Ascent)}
	d.DrawString(s)
	for my := 0; my < textH; my++ {
		for mx := 0; mx < w; mx++ {
			if mask.AlphaAt(mx, my).A < 0x80 {
				continue
			}
			px, py := mx, my
			if rot {
				px, py = my, w-1-mx
			}
			fill(img, image.Rect(x+px*scale, y+py*scale, x+(px+1)*scale, y+(py+1)*scale), c)
		}
	}
}
