package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAttribute(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	kills := []kill{
		{tag: "chaos-pkg.1", slots: 2, at: at(1000), died: at(1001)},
		{tag: "chaos-bin.2", slots: 1, at: at(2000), died: at(2001)},
	}
	reloads := []reload{{variant: "v", start: at(5000), took: 10 * time.Millisecond}}
	runs := map[string][]execution{
		"killed":       {{tag: "chaos-pkg.1", start: at(990)}},
		"killed-early": {{tag: "chaos-pkg.1", start: at(900)}},
		"stable":       {{tag: "stable-pkg.1", start: at(990)}},
		"twice":        {{tag: "chaos-pkg.1", start: at(990)}, {tag: "stable-bin.1", start: at(1001)}},
	}
	seenAll := map[string]bool{}
	for _, id := range []string{"killed", "killed-early", "stable", "twice", "inflight", "late", "503", "taken", "ok", "hung"} {
		seenAll[id] = true
	}
	tests := []struct {
		name string
		o    outcome
		want lossClass
		none bool // not lost: no class at all
	}{
		{name: "ran on the killed worker, failed after the kill", o: outcome{id: "killed", cause: "status 502", end: at(1002)}, want: lossKilled},
		{name: "a reset under the upload counts as the worker's failure", o: outcome{id: "killed", cause: causeReset, end: at(1002)}, want: lossKilled},
		{name: "ran on a worker killed only after it failed", o: outcome{id: "killed-early", cause: "status 502", end: at(950)}, want: lossOther},
		{name: "ran on a worker never killed", o: outcome{id: "stable", cause: "status 502", end: at(1002)}, want: lossOther},
		{name: "never reached a handler, failed just after a kill", o: outcome{id: "inflight", cause: "status 502", end: at(1100)}, want: lossKilledInFlight},
		{name: "never reached a handler, failed long after a kill", o: outcome{id: "late", cause: "status 502", end: at(1700)}, want: lossOther},
		{name: "a 503 is no worker's death", o: outcome{id: "503", cause: "status 503", end: at(1002)}, want: lossOther},
		{name: "given to an attacker", o: outcome{id: "taken", cause: "status 502", end: at(3000)}, want: lossMisbehaver},
		{name: "never read by Caddy, reset during a reload", o: outcome{id: "unseen", cause: causeReset, end: at(5050)}, want: lossHandover},
		{name: "never read by Caddy, reset away from any reload", o: outcome{id: "unseen", cause: causeReset, end: at(7000)}, want: lossOther},
		{name: "ok", o: outcome{id: "ok"}, none: true},
		{name: "hung is counted apart", o: outcome{id: "hung", hung: true}, none: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evidence{runs: runs, kills: kills, taken: map[string]string{"taken": "garbage"}, seen: seenAll, reloads: reloads}
			got, ok := attribute([]outcome{tt.o}, ev)[tt.o.id]
			if tt.none {
				if ok {
					t.Fatalf("classed as %s; it was not lost", lossNames[got])
				}
				return
			}
			if got != tt.want {
				t.Fatalf("classed as %q, want %q", lossNames[got], lossNames[tt.want])
			}
		})
	}
}

// A job that never reached a handler is the kill's only if it was sent
// before the kill (or just after), and, where the hub's error names the
// connection, on the killed worker's.
func TestAttributeInFlight(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// Killed at 0, died at 30 ms.
	kills := []kill{{tag: "chaos-bin.1", slots: 2, at: t0, died: t0.Add(30 * time.Millisecond)}}
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	tests := []struct {
		name       string
		start, end time.Time
		worker     string
		want       lossClass
	}{
		{name: "sent before the kill", start: ms(-20), end: ms(5), want: lossKilledInFlight},
		{name: "sent after the kill, before the death", start: ms(10), end: ms(35), want: lossKilledInFlight},
		{name: "sent just after the death, while the hub may not know", start: ms(60), end: ms(65), want: lossKilledInFlight},
		{name: "sent well after it: the hub should have dropped the connection", start: ms(280), end: ms(357), want: lossOther},
		{name: "failed before the kill", start: ms(-30), end: ms(-1), want: lossOther},
		{name: "the hub names the killed worker", start: ms(-20), end: ms(5), worker: "chaos-bin.1", want: lossKilledInFlight},
		{name: "the hub names another worker", start: ms(-20), end: ms(5), worker: "stable-pkg.1", want: lossOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := outcome{id: "j", cause: "status 502", start: tt.start, end: tt.end}
			ev := evidence{kills: kills, jobWorker: map[string]string{}}
			if tt.worker != "" {
				ev.jobWorker["j"] = tt.worker
			}
			if got := attribute([]outcome{o}, ev)["j"]; got != tt.want {
				t.Errorf("%q, want %q", lossNames[got], lossNames[tt.want])
			}
		})
	}
}

// A kill accounts for at most one job per connection of the killed worker,
// its confirmed ones included.
func TestAttributeChargesAKillOncePerSlot(t *testing.T) {
	t0 := time.Unix(1000, 0)
	kills := []kill{{tag: "chaos-bin.1", slots: 2, at: t0, died: t0}}
	runs := map[string][]execution{"ran": {{tag: "chaos-bin.1", start: t0.Add(-time.Millisecond)}}}
	var outcomes []outcome
	for i, id := range []string{"ran", "a", "b", "c"} {
		outcomes = append(outcomes, outcome{id: id, cause: "status 502", end: t0.Add(time.Duration(i+1) * time.Millisecond)})
	}
	got := attribute(outcomes, evidence{runs: runs, kills: kills})
	want := map[string]lossClass{"ran": lossKilled, "a": lossKilledInFlight, "b": lossOther, "c": lossOther}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("%s: %q, want %q", id, lossNames[got[id]], lossNames[w])
		}
	}
}

func TestRanTwice(t *testing.T) {
	runs := map[string][]execution{"a": {{tag: "x"}}, "b": {{tag: "x"}, {tag: "y"}}, "warm": {{tag: "x"}, {tag: "y"}}}
	got := ranTwice([]outcome{{id: "b"}, {id: "a"}, {id: "c"}}, runs)
	if !slices.Equal(got, []string{"b"}) {
		t.Errorf("got %v, want [b] (warm-up ids are not consumer requests)", got)
	}
}

func TestExecLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	l, err := openExecLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.add(execStart, "j1", "w.1")
	l.add(execStart, "j2", "w.1")
	l.add(execEnd, "j1", "w.1")
	l.add(execStart, "j2", "w.2")
	l.add(execEnd, "j2", "w.2")
	l.close()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("S j3 w.1") // a torn last line is skipped
	f.Close()

	b, _ := os.Open(path)
	defer b.Close()
	runs, err := readExecLog(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs["j1"]) != 1 || runs["j1"][0].end.IsZero() {
		t.Errorf("j1: %+v, want one run that ended", runs["j1"])
	}
	if len(runs["j2"]) != 2 || !runs["j2"][0].end.IsZero() || runs["j2"][1].end.IsZero() || runs["j2"][1].tag != "w.2" {
		t.Errorf("j2: %+v, want a run on w.1 that never ended, then one on w.2 that did", runs["j2"])
	}
	if _, ok := runs["j3"]; ok {
		t.Error("the torn line was read")
	}
}

func TestReadAccessLog(t *testing.T) {
	log := `{"level":"info","msg":"handled request","request":{"uri":"/job","headers":{"X-Request-Id":["c00-000001"]}},"status":200}
not json
{"level":"error","request":{"headers":{"User-Agent":["x"]}},"status":502}
{"level":"error","request":{"headers":{"X-Request-Id":["c01-000002"]}},"status":502}
`
	seen, err := readAccessLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || !seen["c00-000001"] || !seen["c01-000002"] {
		t.Errorf("got %v", seen)
	}
}

func TestParseGoroutineTotal(t *testing.T) {
	if n, err := parseGoroutineTotal("goroutine profile: total 42\n"); err != nil || n != 42 {
		t.Errorf("got %d, %v", n, err)
	}
	if _, err := parseGoroutineTotal("<html>\n"); err == nil {
		t.Error("no error for a page that is not a profile")
	}
}

func TestDrawJob(t *testing.T) {
	corpus := soakCorpus(1)
	draw := func(seed uint64) []soakJob {
		rng := rand.New(rand.NewPCG(seed, 3))
		var jobs []soakJob
		for i := range 2000 {
			jobs = append(jobs, drawJob(rng, corpus, 3, i))
		}
		return jobs
	}
	a, b := draw(7), draw(7)
	same := func(x, y []soakJob) bool {
		return slices.EqualFunc(x, y, func(p, q soakJob) bool {
			return p.id == q.id && p.method == q.method && len(p.body) == len(q.body) && p.ms == q.ms && p.out == q.out && p.late == q.late
		})
	}
	if !same(a, b) {
		t.Fatal("the same seed drew two different job lists")
	}
	if same(a, draw(8)) {
		t.Fatal("two seeds drew the same job list")
	}
	posts, late := 0, 0
	for _, j := range a {
		if j.method == "POST" {
			posts++
			if len(j.body) < 4096 || len(j.body) > 4<<20 {
				t.Fatalf("body of %d bytes", len(j.body))
			}
			if j.late {
				late++
			}
		} else if j.body != nil || j.out > 512<<10 {
			t.Fatalf("GET with a body or a %d-byte answer", j.out)
		}
	}
	if posts < 1100 || posts > 1300 || late < posts/3 || late > 2*posts/3 {
		t.Errorf("%d POSTs of 2000 (want about 60%%), %d read late", posts, late)
	}
}

func TestTolerance(t *testing.T) {
	tol := soakTolerance
	if !tol.goroutinesOK(100, 120) || tol.goroutinesOK(100, 121) {
		t.Error("goroutines: 100 -> 120 should pass, 121 fail")
	}
	if !tol.rssOK(40<<20, 82<<20) || tol.rssOK(40<<20, 83<<20) {
		t.Error("RSS: 40 -> 82 MiB should pass, 83 fail")
	}
}

// Every config the reloads load must keep the workers' pool and token, or
// the reloads themselves would cost requests.
func TestSoakVariants(t *testing.T) {
	a := soakAddrs{admin: "127.0.0.1:1", site: "127.0.0.1:2", workers: "127.0.0.1:3", app: "127.0.0.1:4"}
	auxSeen := map[bool]bool{}
	for _, v := range soakVariants {
		var cfg struct {
			Apps struct {
				ReverseHTTP struct {
					Pools map[string]struct {
						Tokens []string `json:"tokens"`
					} `json:"pools"`
				} `json:"reverse_http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(v.caddyConfig(a, newSoakPaths("/s")), &cfg); err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		soak, ok := cfg.Apps.ReverseHTTP.Pools["soak"]
		if !ok || !slices.Contains(soak.Tokens, soakToken) {
			t.Errorf("%s: pool soak missing or without the workers' token: %+v", v.name, cfg.Apps.ReverseHTTP.Pools)
		}
		_, aux := cfg.Apps.ReverseHTTP.Pools["aux"]
		auxSeen[aux] = true
		if 2*v.queueTimeout > 20*time.Second {
			t.Errorf("%s: queue timeout %v too close to the consumers' timeout", v.name, v.queueTimeout)
		}
	}
	if !auxSeen[true] || !auxSeen[false] {
		t.Error("the variants do not add and remove the aux pool")
	}
}

// The soak's handler and the consumer's check against each other, on
// loopback: as a worker package handler (its own tag) and as the app
// behind worker binaries (the tag in the path).
func TestSoakHandlerAndCheck(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "x.log")
	xlog, err := openExecLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer xlog.close()
	pkg := httptest.NewServer(&soakHandler{tag: "pkg.1", log: xlog})
	defer pkg.Close()
	app := httptest.NewServer(&soakHandler{log: xlog})
	defer app.Close()

	corpus := soakCorpus(1)
	client := &http.Client{}
	jobs := []soakJob{
		{id: "p-early", method: "POST", body: corpus[:5000], ms: 1},
		{id: "p-late", method: "POST", body: corpus[100 : 300<<10], late: true, ms: 1},
		{id: "g-out", method: "GET", ms: 1, out: 70000},
	}
	sites := map[string]string{
		"pkg.1": strings.TrimPrefix(pkg.URL, "http://"),
		"bin.3": strings.TrimPrefix(app.URL, "http://") + "/w/bin.3",
	}
	for tag, site := range sites {
		for _, j := range jobs {
			j.id += "-" + tag
			o := runJob(context.Background(), client, site, j, 10*time.Second)
			if !o.ok() || o.servedBy != tag {
				t.Errorf("%s: ok %v, cause %q, served by %q; want ok from %s", j.id, o.ok(), o.cause, o.servedBy, tag)
			}
		}
	}
	// A handler logs its end after its last write, which the consumer may
	// have read already: poll.
	var runs map[string][]execution
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f, err := os.Open(logPath)
		if err != nil {
			t.Fatal(err)
		}
		runs, err = readExecLog(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ended := 0
		for _, rs := range runs {
			for _, r := range rs {
				if !r.end.IsZero() {
					ended++
				}
			}
		}
		if ended >= 6 || time.Now().After(deadline) {
			break
		}
	}
	if len(runs) != 6 {
		t.Errorf("%d jobs in the execution log, want 6", len(runs))
	}
	for id, rs := range runs {
		if len(rs) != 1 || rs[0].end.IsZero() || !strings.HasSuffix(id, rs[0].tag) {
			t.Errorf("%s: %+v, want one run that ended, on its tag", id, rs)
		}
	}
}

// The consumer's check catches each way an answer can be wrong.
func TestCheckAnswerFailures(t *testing.T) {
	j := soakJob{id: "j1", method: "POST", body: []byte("hello"), ms: 1}
	good := fmt.Sprintf("j1 w.1 5 %08x\n", 0x3610a686) // CRC-32 of "hello"
	tests := []struct {
		name, body string
		status     int
		length     int // Content-Length; 0: the body's
		want       string
	}{
		{name: "good", body: good, status: 200},
		{name: "502", body: "bad gateway", status: 502, want: "status 502"},
		{name: "another request's answer", body: "j2 w.1 5 3610a686\n", status: 200, want: "answer for another request"},
		{name: "another body", body: "j1 w.1 5 00000000\n", status: 200, want: "the worker saw another body"},
		{name: "too long", body: good + "xx", status: 200, want: "response of the wrong length"},
		{name: "cut short", body: good, status: 200, length: len(good) + 10, want: causeCut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				n := len(tt.body)
				if tt.length > 0 {
					n = tt.length
				}
				w.Header().Set("Content-Length", fmt.Sprint(n))
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			o := runJob(context.Background(), srv.Client(), strings.TrimPrefix(srv.URL, "http://"), j, 10*time.Second)
			if o.cause != tt.want {
				t.Errorf("cause %q, want %q", o.cause, tt.want)
			}
		})
	}
}

func TestJobIDs(t *testing.T) {
	b := []byte("HTTP/1.1 101 Switching Protocols\r\n\r\nGET /job HTTP/1.1\r\nHost: x\r\nX-Request-Id: a-1\r\n\r\n" +
		"POST /job HTTP/1.1\r\nX-Request-Id: b-2\r\nContent-Length: 0\r\n\r\nGET /job HTTP/1.1\r\nX-Request-Id: cut")
	if got := jobIDs(b); !slices.Equal(got, []string{"a-1", "b-2"}) {
		t.Errorf("got %v", got)
	}
}

// fakeHub serves every connection with serve, on loopback.
func fakeHub(t *testing.T, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
	return ln.Addr().String()
}

// The attackers can tell admission from rejection: against a hub that
// admits everyone at once and hands out a job, every kind that listens sees
// it; against one that rejects everyone, none is admitted.
func TestAttackDetection(t *testing.T) {
	admitting := fakeHub(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: PTTH/1.0\r\n\r\n"+
			"GET /job HTTP/1.1\r\nHost: x\r\nX-Request-Id: job-7\r\n\r\n")
		io.Copy(io.Discard, c)
	})
	rejecting := fakeHub(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	})
	for _, k := range attackKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(1, 2))
			r := runAttack(admitting, k, rng, time.Second)
			blind := k.name == "connect and reset" // hangs up before it could hear anything
			if !blind && (!r.admitted || !slices.Equal(r.jobs, []string{"job-7"})) {
				t.Errorf("against a hub that admits all: admitted %v, jobs %v (%s); want admitted, given job-7", r.admitted, r.jobs, r.outcome)
			}
			if r.kind != k.name || r.bad != k.bad {
				t.Errorf("result names kind %q bad %v", r.kind, r.bad)
			}
			r = runAttack(rejecting, k, rng, time.Second)
			if r.admitted || len(r.jobs) > 0 {
				t.Errorf("against a hub that rejects all: admitted (%s)", r.outcome)
			}
		})
	}
}

func TestHubLogs(t *testing.T) {
	caddyLog := `{"level":"error","logger":"http.log.error","msg":"reading worker response: malformed HTTP status code \"` + strayMarker + `\"","request":{"headers":{"X-Request-Id":["c04-001649"]}},"status":502}
{"level":"warn","logger":"reverse_http","msg":"worker sent data on an idle connection; closed it","remote":"127.0.0.1:1"}
{"level":"error","logger":"http.log.error","msg":"worker connection closed before a response: read tcp 127.0.0.1:45459->127.0.0.1:43090: read: connection reset by peer","request":{"headers":{"X-Request-Id":["c03-000749"]}},"status":502}
`
	errs, err := readHandlerErrors(strings.NewReader(caddyLog))
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) != 2 || !strings.Contains(errs["c04-001649"], strayMarker) || !strings.Contains(errs["c03-000749"], "43090") {
		t.Fatalf("got %v", errs)
	}
	hubLog := `{"level":"debug","ts":100.5,"logger":"reverse_http","msg":"worker connected","pool":"soak","remote":"127.0.0.1:43090","worker":"chaos-bin.3"}
{"level":"debug","ts":200.25,"logger":"reverse_http","msg":"worker connected","pool":"soak","remote":"127.0.0.1:43090","worker":"stable-pkg.1"}
{"level":"debug","ts":300,"logger":"reverse_http","msg":"idle worker connection closed","remote":"127.0.0.1:43090","worker":"stable-pkg.1"}
`
	hl, err := readHubLog(strings.NewReader(hubLog + `{"level":"warn","logger":"reverse_http","msg":"worker handshake rejected"}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	conns := hl.conns
	if len(hl.warnings) != 1 || hl.warnings["worker handshake rejected"] != 1 {
		t.Errorf("warnings %v", hl.warnings)
	}
	msg := errs["c03-000749"]
	for _, tt := range []struct {
		at   float64
		want string
	}{{150, "chaos-bin.3"}, {250, "stable-pkg.1"}, {50, ""}} {
		if got := workerOf(msg, time.Unix(0, int64(tt.at*1e9)), conns); got != tt.want {
			t.Errorf("at %v: %q, want %q (a port is used again in time)", tt.at, got, tt.want)
		}
	}
	if got := workerOf(errs["c04-001649"], time.Unix(250, 0), conns); got != "" {
		t.Errorf("an error naming no address gave %q", got)
	}
}

// The summary's verdict, which is the soak's exit status, fails on each
// requirement alone.
func TestSummaryVerdict(t *testing.T) {
	t0 := time.Unix(1000, 0)
	clean := func() *soakRun {
		figs := caddyFigures{rss: 50 << 20, goroutines: 13, heap: 8 << 20}
		r := &soakRun{
			o:        &soakOptions{reloads: 1, attacks: 1, clientTimeout: 20 * time.Second},
			outcomes: []outcome{{id: "a", method: "GET", start: t0, end: t0.Add(time.Millisecond)}},
			runs:     map[string][]execution{"a": {{tag: "stable-pkg.1", start: t0}}},
			reloads:  []reload{{variant: "base", start: t0}},
			attacks:  []attackResult{{kind: attackKinds[0].name, bad: true, outcome: "closed"}},
			before:   figs, peak: figs, after: figs,
			seen: map[string]bool{"a": true},
		}
		return r
	}
	tests := []struct {
		name  string
		spoil func(r *soakRun)
		want  string // in the failures; "" for a pass
	}{
		{name: "clean", spoil: func(*soakRun) {}},
		{name: "ran twice", spoil: func(r *soakRun) { r.runs["a"] = append(r.runs["a"], execution{tag: "x"}) }, want: "ran twice"},
		{name: "hung", spoil: func(r *soakRun) { r.outcomes[0].hung = true }, want: "hung"},
		{name: "lost", spoil: func(r *soakRun) { r.outcomes[0].cause = "status 503" }, want: "lost for no reason"},
		{name: "bad connection admitted", spoil: func(r *soakRun) { r.attacks[0].admitted = true }, want: "bad connections admitted"},
		{name: "goroutines", spoil: func(r *soakRun) { r.after.goroutines = 40 }, want: "goroutines"},
		{name: "RSS", spoil: func(r *soakRun) { r.after.rss = 200 << 20 }, want: "RSS"},
		{name: "a reload failed", spoil: func(r *soakRun) { r.reloads[0].err = fmt.Errorf("status 400") }, want: "reloads"},
		{name: "interrupted", spoil: func(r *soakRun) { r.interrupted = true }, want: "interrupted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := clean()
			tt.spoil(r)
			var out strings.Builder
			pass := r.summary(&out)
			_, failures, _ := strings.Cut(out.String(), "soak: FAIL")
			if pass != (tt.want == "") || (tt.want != "" && !strings.Contains(failures, tt.want)) {
				t.Errorf("pass %v, want %v with %q among the failures:\n%s", pass, tt.want == "", tt.want, out.String())
			}
		})
	}
}
