package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// verdict gathers the failures a summary finds.
type verdict struct{ failures []string }

// check records a failure if bad, and returns the word for the summary's
// line.
func (v *verdict) check(bad bool, format string, a ...any) string {
	if !bad {
		return "ok"
	}
	v.failures = append(v.failures, fmt.Sprintf(format, a...))
	return "FAIL"
}

// summary prints what the soak saw and whether it passed.
func (r *soakRun) summary(w io.Writer) bool {
	o := r.o
	mode := "full"
	if o.quick {
		mode = "quick"
	}
	fmt.Fprintf(w, "\n== reverse_http soak (%s): seed %d, %v of load, %d consumers, whole run %v ==\n",
		mode, o.seed, o.load, o.consumers, r.took.Round(time.Second))
	if len(r.outcomes) == 0 && len(r.errs) > 0 {
		fmt.Fprintf(w, "\nsoak: FAIL: it could not run:\n")
		for _, e := range r.errs {
			fmt.Fprintf(w, "  - %s\n", e)
		}
		return false
	}
	v := &verdict{}
	for _, e := range r.errs {
		v.check(true, "the soak itself: %s", e)
	}
	v.check(r.interrupted, "the run was interrupted or overran its deadline")
	r.printConsumers(w, v)
	r.printChaos(w, v)
	r.printAttacks(w, v)
	r.printCaddy(w, v)
	if len(v.failures) == 0 {
		fmt.Fprintf(w, "\nsoak: PASS\n")
		return true
	}
	fmt.Fprintf(w, "\nsoak: FAIL\n")
	for _, f := range v.failures {
		fmt.Fprintf(w, "  - %s\n", f)
	}
	return false
}

// evidence gathers what tells where each job went, and how many jobs the
// hub failed on an attacker's stray bytes that the attacker never saw.
func (r *soakRun) evidence() (ev evidence, stray int) {
	ev = evidence{runs: r.runs, kills: r.kills, taken: make(map[string]string), seen: r.seen, reloads: r.reloads,
		jobWorker: make(map[string]string)}
	for _, a := range r.attacks {
		for _, id := range a.jobs {
			ev.taken[id] = a.kind
		}
	}
	for _, o := range r.outcomes {
		msg, ok := r.handlerErrs[o.id]
		if !ok {
			continue
		}
		if wk := workerOf(msg, o.end, r.hubLog.conns); wk != "" {
			ev.jobWorker[o.id] = wk
		}
		if _, ok := ev.taken[o.id]; !ok && strings.Contains(msg, strayMarker) {
			ev.taken[o.id] = "stray bytes read as the answer"
			stray++
		}
	}
	return ev, stray
}

// printConsumers prints what the consumers got, the losses by class, the
// hung requests and the ones that ran twice.
func (r *soakRun) printConsumers(w io.Writer, v *verdict) {
	ev, stray := r.evidence()
	classes := attribute(r.outcomes, ev)
	methods := map[string]int{}
	var ok, hung, aborted int
	causes := map[string]int{}
	byClass := map[lossClass]int{}
	otherCauses := map[string]int{}
	for _, x := range r.outcomes {
		methods[x.method]++
		switch {
		case x.ok():
			ok++
		case x.hung:
			hung++
		case x.aborted:
			aborted++
		default:
			causes[x.cause]++
			c := classes[x.id]
			byClass[c]++
			if c == lossOther {
				otherCauses[x.cause]++
			}
		}
	}
	lost := len(r.outcomes) - ok - hung - aborted
	fmt.Fprintf(w, "\nconsumer requests\n")
	fmt.Fprintf(w, "  %-52s %7d  (POST %d, GET %d)\n", "sent", len(r.outcomes), methods["POST"], methods["GET"])
	fmt.Fprintf(w, "  %-52s %7d\n", "ok (200, the answer checked)", ok)
	fmt.Fprintf(w, "  %-52s %7d  by cause: %s\n", "lost", lost, counts(causes))
	for _, c := range []lossClass{lossKilled, lossKilledInFlight, lossMisbehaver} {
		fmt.Fprintf(w, "    %-50s %7d  expected\n", lossNames[c], byClass[c])
	}
	if stray > 0 {
		fmt.Fprintf(w, "      %-48s %7d  (Caddy's log names them; the attacker never received the request)\n",
			"of which the hub took stray bytes for the answer", stray)
	}
	fmt.Fprintf(w, "    %-50s %7d  Caddy's, not the plugin's: reported, not failed\n", lossNames[lossHandover], byClass[lossHandover])
	res := v.check(byClass[lossOther] > 0, "%d requests lost for no reason the soak can name (%s)", byClass[lossOther], counts(otherCauses))
	fmt.Fprintf(w, "    %-50s %7d  %s, must be 0%s\n", lossNames[lossOther], byClass[lossOther], res, suffix(counts(otherCauses)))
	res = v.check(hung > 0, "%d requests hung (no answer within %v)", hung, r.o.clientTimeout)
	fmt.Fprintf(w, "  %-52s %7d  %s, must be 0\n", fmt.Sprintf("hung (no answer within %v)", r.o.clientTimeout), hung, res)
	if aborted > 0 {
		fmt.Fprintf(w, "  %-52s %7d\n", "cut off by the end of an interrupted run", aborted)
	}
	twice := ranTwice(r.outcomes, r.runs)
	res = v.check(len(twice) > 0, "%d requests ran twice", len(twice))
	fmt.Fprintf(w, "  %-52s %7d  %s, must be 0\n", "ran twice (started more than once at a handler)", len(twice), res)
	r.printTwice(w, twice)
	r.printOther(w, classes, ev.jobWorker)
}

// printChaos prints the kills and the reloads.
func (r *soakRun) printChaos(w io.Writer, v *verdict) {
	groups := map[string]int{}
	for _, k := range r.kills {
		groups[tagGroup(k.tag)]++
	}
	fmt.Fprintf(w, "\nworker kills (SIGKILL, restarted at once)    %d (%s)\n", len(r.kills), counts(groups))
	var took []time.Duration
	var reloadErrs []string
	for _, rl := range r.reloads {
		took = append(took, rl.took)
		if rl.err != nil {
			reloadErrs = append(reloadErrs, fmt.Sprintf("%s: %v", rl.variant, rl.err))
		}
	}
	took = sorted(took)
	res := v.check(len(r.reloads) < r.o.reloads || len(reloadErrs) > 0, "%d of %d reloads done, %d failed",
		len(r.reloads), r.o.reloads, len(reloadErrs))
	fmt.Fprintf(w, "config reloads (POST /load)                  %d of %d done, %d failed; each took p50 %s ms, max %s ms  %s\n",
		len(r.reloads), r.o.reloads, len(reloadErrs), ms(percentile(took, 50)), ms(percentile(took, 100)), res)
	for i, e := range reloadErrs {
		if i == 3 {
			break
		}
		fmt.Fprintf(w, "  %s\n", e)
	}
}

// printCaddy prints Caddy's figures before, at the peak and after, against
// the tolerance.
func (r *soakRun) printCaddy(w io.Writer, v *verdict) {
	t := soakTolerance
	fmt.Fprintf(w, "\nCaddy             before      peak     after (settled %v)\n", r.settled.Round(time.Second))
	res := v.check(!t.rssOK(r.before.rss, r.after.rss), "Caddy's RSS did not come back: %s MiB before, %s MiB after",
		mib(r.before.rss), mib(r.after.rss))
	fmt.Fprintf(w, "  RSS MiB      %9s %9s %9s   %s: after <= before x %.2f + %s MiB\n", mib(r.before.rss), mib(r.peak.rss), mib(r.after.rss),
		res, 1+t.rssFrac, mib(t.rssAbs))
	res = v.check(!t.goroutinesOK(r.before.goroutines, r.after.goroutines), "Caddy's goroutines did not come back: %d before, %d after",
		r.before.goroutines, r.after.goroutines)
	fmt.Fprintf(w, "  goroutines   %9d %9d %9d   %s: after <= before x %.2f + %d\n", r.before.goroutines, r.peak.goroutines, r.after.goroutines,
		res, 1+t.goroutinesFrac, t.goroutinesAbs)
	res = v.check(!t.heapOK(r.before.heap, r.after.heap), "Caddy's Go heap did not come back: %s MiB before, %s MiB after",
		mib(int64(r.before.heap)), mib(int64(r.after.heap)))
	fmt.Fprintf(w, "  Go heap MiB  %9s %9s %9s   %s: after <= before x %.2f + %s MiB (in use, after a GC)\n", mib(int64(r.before.heap)),
		mib(int64(r.peak.heap)), mib(int64(r.after.heap)), res, 1+t.heapFrac, mib(t.heapAbs))
}

// printTwice shows a few of the requests that ran twice, with where.
func (r *soakRun) printTwice(w io.Writer, ids []string) {
	killedAt := make(map[string]time.Time)
	for _, k := range r.kills {
		killedAt[k.tag] = k.at
	}
	byID := make(map[string]outcome, len(r.outcomes))
	for _, o := range r.outcomes {
		byID[o.id] = o
	}
	kinds := map[string]int{}
	for _, id := range ids {
		kinds[jobKind(id, byID)]++
	}
	if len(ids) > 0 {
		fmt.Fprintf(w, "    of which: %s\n", counts(kinds))
	}
	for i, id := range ids {
		if i == 8 {
			fmt.Fprintf(w, "    ... and %d more\n", len(ids)-i)
			break
		}
		var where []string
		for _, x := range r.runs[id] {
			s := x.tag
			if at, ok := killedAt[x.tag]; ok && (x.end.IsZero() || x.end.After(at)) {
				if d := at.Sub(x.start); d >= 0 {
					s += fmt.Sprintf(" (killed %s ms after the job started)", ms(d))
				} else {
					s += fmt.Sprintf(" (killed as the job started: its start was logged %s ms after the kill)", ms(-d))
				}
			}
			where = append(where, s)
		}
		o := byID[id]
		answer := "ok"
		if !o.ok() {
			answer = o.cause
		}
		fmt.Fprintf(w, "    %s %s: ran on %s; its consumer got: %s\n", id, jobKind(id, byID), strings.Join(where, ", then "), answer)
	}
}

// jobKind names what sort of job an id was: the method, and for a POST
// whether its handler read the body before or after its work.
func jobKind(id string, byID map[string]outcome) string {
	o := byID[id]
	switch {
	case o.method != "POST":
		return o.method
	case o.late:
		return "POST read late"
	}
	return "POST read early"
}

// printOther shows a few of the losses nothing explains.
func (r *soakRun) printOther(w io.Writer, classes map[string]lossClass, jobWorker map[string]string) {
	killedAt := make(map[string]time.Time)
	for _, k := range r.kills {
		killedAt[k.tag] = k.at
	}
	n := 0
	for _, o := range r.outcomes {
		if c, ok := classes[o.id]; !ok || c != lossOther {
			continue
		}
		if n == 8 {
			fmt.Fprintf(w, "    ... (only the first 8 unexplained losses are shown)\n")
			return
		}
		n++
		var where []string
		for _, x := range r.runs[o.id] {
			where = append(where, x.tag)
		}
		ran := "never reached a handler"
		if len(where) > 0 {
			ran = "ran on " + strings.Join(where, ", then ")
		}
		if r.seen != nil && !r.seen[o.id] {
			ran += ", not in Caddy's access log"
		}
		fmt.Fprintf(w, "    unexplained: %s %s at %.3fs: %s after %s ms; %s; %s\n", o.id, o.method, o.end.Sub(r.loadStart).Seconds(),
			o.cause, ms(o.end.Sub(o.start)), ran, r.nearest(o.end))
		if msg, ok := r.handlerErrs[o.id]; ok {
			fmt.Fprintf(w, "      the hub: %q", msg)
			if wk := jobWorker[o.id]; wk != "" {
				fmt.Fprintf(w, ", on a connection of %s", wk)
				if at, ok := killedAt[wk]; ok {
					fmt.Fprintf(w, " (killed; the request was sent %+.1f ms from the kill)", float64(o.start.Sub(at))/float64(time.Millisecond))
				}
			}
			fmt.Fprintln(w)
		}
	}
}

// nearest says how far t is from the nearest reload and kill.
func (r *soakRun) nearest(t time.Time) string {
	near := func(ts []time.Time) string {
		best := time.Duration(math.MaxInt64)
		for _, x := range ts {
			if d := t.Sub(x); d.Abs() < best.Abs() {
				best = d
			}
		}
		switch {
		case best == time.Duration(math.MaxInt64):
			return "none"
		case best >= 0:
			return ms(best) + " ms before"
		}
		return ms(-best) + " ms after"
	}
	var rl, kl []time.Time
	for _, x := range r.reloads {
		rl = append(rl, x.start)
	}
	for _, k := range r.kills {
		kl = append(kl, k.at)
	}
	return fmt.Sprintf("the nearest reload began %s, the nearest kill %s", near(rl), near(kl))
}

// printAttacks prints the attacker connections by kind.
func (r *soakRun) printAttacks(w io.Writer, v *verdict) {
	type tally struct {
		bad               bool
		n, admitted, jobs int
		outcomes          map[string]int
	}
	byKind := map[string]*tally{}
	var kinds []string
	for _, k := range attackKinds {
		kinds = append(kinds, k.name)
		byKind[k.name] = &tally{bad: k.bad, outcomes: map[string]int{}}
	}
	var bad, badAdmitted, good, goodJobs int
	for _, a := range r.attacks {
		t := byKind[a.kind]
		t.n++
		t.jobs += len(a.jobs)
		t.outcomes[a.outcome]++
		if a.admitted {
			t.admitted++
		}
		if a.bad {
			bad++
			if a.admitted {
				badAdmitted++
			}
		} else {
			good++
			goodJobs += len(a.jobs)
		}
	}
	res := v.check(badAdmitted > 0, "%d of %d bad connections admitted", badAdmitted, bad)
	v.check(len(r.attacks) < r.o.attacks, "only %d of %d attacker connections were made", len(r.attacks), r.o.attacks)
	fmt.Fprintf(w, "\nattacker connections to the worker port       %d\n", len(r.attacks))
	fmt.Fprintf(w, "  bad (no valid credential for the pool named)  %d attempted, %d admitted (answered 101 or given a job)  %s, must be 0\n",
		bad, badAdmitted, res)
	fmt.Fprintf(w, "  misbehaving with a valid token                %d, given %d jobs (their consumers' loss is expected)\n", good, goodJobs)
	warned := 0
	for _, n := range r.hubLog.warnings {
		warned += n
	}
	fmt.Fprintf(w, "  the hub's log: %d lines at WARN or above (%s)\n", warned, counts(r.hubLog.warnings))
	fmt.Fprintf(w, "  %-46s %4s %8s  %s\n", "kind", "n", "admitted", "what the hub did")
	for _, k := range kinds {
		t := byKind[k]
		adm := fmt.Sprint(t.admitted)
		if !t.bad {
			adm = "(token)"
		}
		fmt.Fprintf(w, "  %-46s %4d %8s  %s\n", k, t.n, adm, counts(t.outcomes))
	}
}

// counts lists a tally, largest first: "a 3, b 1".
func counts(m map[string]int) string {
	keys := slices.Collect(maps.Keys(m))
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func suffix(s string) string {
	if s == "none" {
		return ""
	}
	return " (" + s + ")"
}

// timeline lists the kills and reloads in time order, from the start of
// the load, for reading beside the logs of a failed run.
func (r *soakRun) timeline(w io.Writer) {
	type event struct {
		at   time.Time
		what string
	}
	var evs []event
	for _, k := range r.kills {
		evs = append(evs, event{k.at, fmt.Sprintf("kill %s (reaped %s ms later)", k.tag, ms(k.died.Sub(k.at)))})
	}
	for _, rl := range r.reloads {
		what := fmt.Sprintf("reload to %q, took %s ms", rl.variant, ms(rl.took))
		if rl.err != nil {
			what += ": " + rl.err.Error()
		}
		evs = append(evs, event{rl.start, what})
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	for _, e := range evs {
		fmt.Fprintf(w, "%9.3fs  %s  (unix %.6f)\n", e.at.Sub(r.loadStart).Seconds(), e.what, float64(e.at.UnixNano())/1e9)
	}
}
