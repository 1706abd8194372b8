package reversehttp

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCoalesceNotAcrossCredentials: two concurrent GETs of the same URI
// with different Authorization must not share one job: each consumer must
// get the answer its own credentials earn.
func TestCoalesceNotAcrossCredentials(t *testing.T) {
	h := coalesceHub(t, "")
	release := make(chan struct{})
	var jobs atomic.Int64
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jobs.Add(1)
		<-release
		w.Header().Set("Set-Cookie", "session="+r.Header.Get("Authorization"))
		io.WriteString(w, "private data of "+r.Header.Get("Authorization"))
	})
	startWorker(t, h, "jobs", "", 4, app)

	var wg sync.WaitGroup
	got := make([]string, 2)
	cookies := make([]string, 2)
	for i, user := range []string{"alice", "bob"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", h.site+"/account", nil)
			req.Header.Set("Authorization", user)
			resp, err := testClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			got[i], cookies[i] = string(b), resp.Header.Get("Set-Cookie")
		}()
		if i == 0 {
			waitFor(t, "alice's job to run", func() bool { return jobs.Load() == 1 })
		}
	}
	waitFor(t, "bob's request to arrive", func() bool {
		// joined alice's job, or runs one of its own
		return livePool(t, "jobs").obs.shared.consumers.Load() == 2 || jobs.Load() == 2
	})
	close(release)
	wg.Wait()
	if got[1] != "private data of bob" {
		t.Errorf("bob got %q, Set-Cookie %q", got[1], cookies[1])
	}
}

// TestCoalescePrivateResponseNotShared: a request that joined a shared job
// whose response sets a cookie, or says it is private or not to be stored
// (as a worker's one-time out-of-band 303 does), gets a job of its own
// instead of another consumer's answer.
func TestCoalescePrivateResponseNotShared(t *testing.T) {
	for _, header := range []string{"Set-Cookie: session=", "Cache-Control: private, max-age=", "Cache-Control: no-store, max-age="} {
		t.Run(header, func(t *testing.T) {
			h := coalesceHub(t, "")
			release := make(chan struct{})
			var jobs atomic.Int64
			app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := jobs.Add(1)
				if n == 1 {
					<-release
				}
				name, value, _ := strings.Cut(header, ": ")
				w.Header().Set(name, value+fmt.Sprint(n))
				fmt.Fprintf(w, "job %d", n)
			})
			startWorker(t, h, "jobs", "", 4, app)

			got := make([]string, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() {
					resp, err := testClient.Get(h.site + "/page")
					if err != nil {
						t.Error(err)
						return
					}
					defer resp.Body.Close()
					b, _ := io.ReadAll(resp.Body)
					got[i] = string(b)
				})
				if i == 0 {
					waitFor(t, "the first job to run", func() bool { return jobs.Load() == 1 })
				}
			}
			waitFor(t, "the second request to join the job", func() bool {
				return livePool(t, "jobs").obs.shared.consumers.Load() == 2
			})
			close(release)
			wg.Wait()
			if got[0] != "job 1" || got[1] != "job 2" || jobs.Load() != 2 {
				t.Errorf("answers %q after %d jobs, want each its own", got, jobs.Load())
			}
		})
	}
}
