package plot

import (
	"math"
	"strconv"
	"strings"
)

// tick is a position on an axis (in axis space: log10 of the value on a log
// axis). Major ticks get a tick mark and a grid line; minor ticks a short
// mark and a faint grid line. Ticks with an empty label are not labelled.
type tick struct {
	v     float64
	label string
	major bool
}

// niceStep rounds raw up or down to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	mag := math.Pow10(int(math.Floor(math.Log10(raw))))
	switch f := raw / mag; {
	case f < 1.5:
		return mag
	case f < 3.5:
		return 2 * mag
	case f < 7.5:
		return 5 * mag
	default:
		return 10 * mag
	}
}

// linearTicks returns a range covering [lo, hi] expanded to multiples of a
// nice step, and roughly target ticks in it.
func linearTicks(lo, hi float64, target int) (alo, ahi float64, ticks []tick) {
	if !(hi-lo > 1e-12*math.Max(math.Abs(lo), math.Abs(hi))) {
		if lo == 0 && hi == 0 {
			lo, hi = 0, 1
		} else {
			lo, hi = widen(lo, lo)
		}
	}
	step := niceStep((hi - lo) / float64(target))
	alo = math.Floor(lo/step+1e-9) * step
	ahi = math.Ceil(hi/step-1e-9) * step
	n := int(math.Round((ahi - alo) / step))
	for i := 0; i <= n; i++ {
		v := alo + float64(i)*step
		if math.Abs(v) < step*1e-9 {
			v = 0
		}
		ticks = append(ticks, tick{v: v, label: formatNum(v, step), major: true})
	}
	return alo, ahi, ticks
}

var (
	log2 = math.Log10(2)
	log5 = math.Log10(5)
)

// snap125 returns, in log10 space, the smallest value >= t (up) or the
// largest value <= t (!up) of the form log10(m * 10^k), m in {1, 2, 5}.
func snap125(t float64, up bool) float64 {
	k := math.Floor(t)
	best := math.NaN()
	for d := -1.0; d <= 1; d++ {
		for _, m := range []float64{0, log2, log5} {
			c := k + d + m
			if up && c >= t-1e-9 && (math.IsNaN(best) || c < best) {
				best = c
			}
			if !up && c <= t+1e-9 && (math.IsNaN(best) || c > best) {
				best = c
			}
		}
	}
	return best
}

// logTicks returns a log10-space range covering [lo, hi] (also log10),
// snapped to 1-2-5 values, and ticks for a plot ph pixels high.
func logTicks(lo, hi float64, ph int) (alo, ahi float64, ticks []tick) {
	alo, ahi = snap125(lo, false), snap125(hi, true)
	if ahi-alo < 1e-9 {
		alo, ahi = snap125(alo-1e-6, false), snap125(ahi+1e-6, true)
	}
	decades := ahi - alo
	pxPerDecade := float64(ph) / decades
	const minGap = textH + 4

	if decades < 1.05 {
		// Narrow range: linear steps in value space, positioned on the log axis.
		vlo, vhi := math.Pow(10, alo), math.Pow(10, ahi)
		step := niceStep((vhi - vlo) / float64(max(2, ph/70)))
		first := math.Ceil(vlo/step - 1e-9)
		for i := 0.0; i < 100; i++ {
			v := (first + i) * step
			if v > vhi*(1+1e-9) {
				break
			}
			ticks = append(ticks, tick{v: math.Log10(v), label: formatNum(v, step), major: true})
		}
		return alo, ahi, ticks
	}

	label125 := pxPerDecade*log2 >= minGap // 1, 2 and 5 all fit
	every := 1                             // label every n-th power of ten
	if pxPerDecade < minGap {
		every = int(math.Ceil(minGap / pxPerDecade))
	}
	minor := pxPerDecade*math.Log10(10.0/9) >= 3 // room for faint lines at 2..9
	minor25 := pxPerDecade*log2 >= 3             // room for faint lines at 2 and 5

	for k := int(math.Floor(alo)); k <= int(math.Ceil(ahi)); k++ {
		pow := math.Pow10(k)
		for m := 1; m <= 9; m++ {
			t := float64(k) + math.Log10(float64(m))
			if t < alo-1e-9 || t > ahi+1e-9 {
				continue
			}
			v := float64(m) * pow
			switch {
			case m == 1 && ((k%every)+every)%every == 0:
				ticks = append(ticks, tick{v: t, label: formatNum(v, pow), major: true})
			case m == 1 && pxPerDecade >= 3: // unlabelled power of ten
				ticks = append(ticks, tick{v: t})
			case (m == 2 || m == 5) && label125:
				ticks = append(ticks, tick{v: t, label: formatNum(v, pow), major: true})
			case minor || ((m == 2 || m == 5) && minor25):
				ticks = append(ticks, tick{v: t})
			}
		}
	}
	return alo, ahi, ticks
}

// spaceLabels clears labels that would overlap the previous kept label.
// size gives a label's extent along the axis in pixels; ticks must be
// sorted by position.
func spaceLabels(ticks []tick, lo, hi, px float64, size func(tick) float64) {
	lastPos, lastHalf := math.Inf(-1), 0.0
	for i := range ticks {
		if ticks[i].label == "" {
			continue
		}
		pos := (ticks[i].v - lo) / (hi - lo) * px
		half := size(ticks[i]) / 2
		if pos-half < lastPos+lastHalf {
			ticks[i].label = ""
			continue
		}
		lastPos, lastHalf = pos, half
	}
}

// formatNum formats a tick value compactly ("0.5", "20", "1.5k", "2M"),
// using as many decimals as the tick step needs.
func formatNum(v, step float64) string {
	a := math.Abs(v)
	if a < step*1e-6 {
		return "0"
	}
	if a >= 1e12 || a < 1e-4 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	for _, s := range []struct {
		div float64
		sfx string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if a >= s.div && step >= s.div/100 {
			return trimZeros(strconv.FormatFloat(v/s.div, 'f', decimals(step/s.div), 64)) + s.sfx
		}
	}
	return trimZeros(strconv.FormatFloat(v, 'f', decimals(step), 64))
}

// decimals is the number of decimals needed to show multiples of step
// (a 1-2-5 step).
func decimals(step float64) int {
	return min(max(0, -int(math.Floor(math.Log10(step)+1e-9))), 12)
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(s, "0")
		s = strings.TrimSuffix(s, ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}
