package reversehttp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/reversehttp/reverse_http/worker"
)

// statusConfig serves the status page on /status and the pool elsewhere.
const statusConfig = `{
	reverse_http {
		pool jobs {
			listen {workers}
			token secret
			max_queue 4
		}
	}
}
http://:{siteport} {
	bind 127.0.0.1
	handle /status {
		reverse_http_status
	}
	reverse_http jobs
}`

// chromiumPath is Debian's chromium, which CI installs with apt-get.
const chromiumPath = "/usr/bin/chromium"

// screenshotEnv names the PNG file the status page test writes, if set (see
// `make screenshot`).
const screenshotEnv = "REVERSE_HTTP_SCREENSHOT"

// browser starts a headless Chromium with a fresh profile, its viewport a
// phone's (scale: its device pixel ratio).
func browser(t *testing.T, scale float64) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the status page test needs Chromium at %s (apt-get install chromium): %v", chromiumPath, err)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	if _, err := chromedp.Run(ctx, chromedp.EmulateViewport(412, 915, chromedp.EmulateMobile, chromedp.EmulateScale(scale))); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return ctx
}

// waitJS evaluates a JavaScript expression in the page until it is true.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML("main"))
			t.Fatalf("the page never showed %s (%s; last error %v); its main:\n%s", what, expr, err, html)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func jsText(t *testing.T, ctx context.Context, selector string) string {
	t.Helper()
	expr := fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, selector)
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStatusPageInChromium opens the status page in a real headless
// Chromium, connects a worker and sees it appear with its name and slots,
// runs jobs and sees the counts change. A worker's name goes into the page
// as text, never as markup.
func TestStatusPageInChromium(t *testing.T) {
	h := newHub(t, statusConfig)
	ctx := browser(t, 1)
	if _, err := chromedp.Run(ctx, chromedp.Navigate(h.site+"/status")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the pool without workers", `document.querySelector('[data-pool="jobs"] .no-workers') !== null`)

	b := newBlockingHandler()
	startWorker(t, h, "jobs", "secret", 3, b)
	row := `[data-worker="test-worker@127.0.0.1"]`
	waitJS(t, ctx, "the worker with three idle slots",
		fmt.Sprintf(`document.querySelectorAll('%s .slot.idle').length === 3`, row))
	if got := jsText(t, ctx, row+" .name"); got != "test-worker" {
		t.Errorf("the worker's name shows as %q", got)
	}

	running := []<-chan int{send(h, context.Background(), "/1/block"), send(h, context.Background(), "/2/block")}
	waitJS(t, ctx, "two busy slots", fmt.Sprintf(`document.querySelectorAll('%s .slot.busy').length === 2`, row))
	waitJS(t, ctx, "slots 2/3 busy", `document.querySelector('[data-pool="jobs"] [data-stat="slots"] b').textContent === "2/3"`)
	b.release <- struct{}{}
	b.release <- struct{}{}
	for _, ch := range running {
		wantStatus(t, "job", ch, http.StatusOK)
	}
	waitJS(t, ctx, "two jobs served", fmt.Sprintf(`document.querySelector('%s .jobs').textContent === "2"`, row))
	waitJS(t, ctx, "the ok count", `document.querySelector('[data-pool="jobs"] [data-outcome="ok"] b').textContent === "2"`)
	waitJS(t, ctx, "no busy slot", fmt.Sprintf(`document.querySelectorAll('%s .slot.busy').length === 0`, row))

	// A name that is markup stays text.
	const markup = `<img id="xss" src="x">`
	_, stopMarkup, _ := newWorker(t, worker.Config{Hub: h.worker, Pool: "jobs", Token: "secret", Slots: 1, Name: markup, Handler: b})
	defer stopMarkup()
	waitJS(t, ctx, "the worker named with markup", fmt.Sprintf(`[...document.querySelectorAll('.worker .name')].some(e => e.textContent === %q)`, markup))
	waitJS(t, ctx, "no element from the name", `document.getElementById("xss") === null`)
}

// TestStatusPageScreenshot makes the README's screenshot of the status page
// (`make screenshot`): three workers, one of them drained, under more load
// than they can take for forty seconds. It runs only when screenshotEnv
// names the PNG file to write.
func TestStatusPageScreenshot(t *testing.T) {
	path := os.Getenv(screenshotEnv)
	if path == "" {
		t.Skip(screenshotEnv + " is not set")
	}
	h := newHub(t, strings.Replace(statusConfig, "max_queue 4", "max_queue 12", 1))
	ctx := browser(t, 2)
	for _, w := range []struct {
		name  string
		slots int
		speed time.Duration
	}{{"gpu-1", 4, 60 * time.Millisecond}, {"gpu-2", 4, 60 * time.Millisecond}, {"cpu-1", 2, 150 * time.Millisecond}} {
		_, stop, _ := newWorker(t, worker.Config{
			Hub: h.worker, Pool: "jobs", Token: "secret", Slots: w.slots, Name: w.name,
			Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				time.Sleep(time.Duration(2+len(r.URL.Path)) * w.speed)
			}),
		})
		defer stop()
	}
	p := livePool(t, "jobs")
	waitFor(t, "ten slots", func() bool { return p.Stats().Idle == 10 })
	if _, err := chromedp.Run(ctx, chromedp.Navigate(h.site+"/status")); err != nil {
		t.Fatal(err)
	}
	load, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	for i := range 18 {
		go func() {
			for n := 0; load.Err() == nil; n++ {
				<-send(h, load, strings.Repeat("/x", (i*7+n)%9))
				if n%5 == 0 {
					time.Sleep(time.Duration(i%4) * 200 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(20 * time.Second)
	p.drainWorker("cpu-1")
	handshakeWith(t, h, "jobs", "wrong")
	time.Sleep(20 * time.Second)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", path, len(png))
}

// TestStatusPageServes checks the page's parts without a browser: the page
// with its content security policy, its assets, its JSON with the pool's
// history, and the errors.
func TestStatusPageServes(t *testing.T) {
	h := newHub(t, statusConfig)
	startWorker(t, h, "jobs", "secret", 2, newBlockingHandler())
	p := livePool(t, "jobs")
	p.obs.sample(time.Now())

	resp, body := h.get("/status")
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") || !strings.Contains(body, "?asset=status.js") {
		t.Fatalf("page: %d %v\n%s", resp.StatusCode, resp.Header, body)
	}
	for asset, ctype := range map[string]string{"status.js": "text/javascript", "status.css": "text/css"} {
		resp, body := h.get("/status?asset=" + asset)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) || len(body) < 100 {
			t.Errorf("asset %s: %d %s", asset, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	resp, body = h.get("/status?format=json")
	var st statusJSON
	if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("json: %d %v\n%s", resp.StatusCode, err, body)
	}
	if len(st.Pools) != 1 || st.Pools[0].Name != "jobs" || st.Pools[0].Idle != 2 || len(st.Pools[0].History) != 1 ||
		st.Pools[0].History[0].Idle != 2 || len(st.Pools[0].Workers) != 1 {
		t.Errorf("json: %s", body)
	}
	if resp, _ := h.get("/status?asset=../status.go"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown asset: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, h.site+"/status", nil)
	if resp, _ := h.do(req); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}
