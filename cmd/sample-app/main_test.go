package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestHello(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/hello", nil)
	req.Header.Set("X-Request-Id", "abc-123")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from the sample app\n" {
		t.Errorf("body %q", body)
	}
	if got := resp.Header.Get("X-Seen-Request-Id"); got != "abc-123" {
		t.Errorf("X-Seen-Request-Id %q, want abc-123", got)
	}
}

func TestIndexAndNotFound(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	if resp, body := get(t, srv.URL+"/"); resp.StatusCode != 200 || !strings.Contains(body, "/sha256") {
		t.Errorf("GET /: %d %q", resp.StatusCode, body)
	}
	if resp, _ := get(t, srv.URL+"/nope"); resp.StatusCode != 404 {
		t.Errorf("GET /nope: %d, want 404", resp.StatusCode)
	}
	if resp, _ := get(t, srv.URL+"/sleep?ms=-1"); resp.StatusCode != 400 {
		t.Errorf("GET /sleep?ms=-1: %d, want 400", resp.StatusCode)
	}
}

func TestSleepAndStats(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			// Not get: t.Fatal must not run outside the test's goroutine.
			resp, err := http.Get(srv.URL + "/sleep?ms=300")
			if err != nil {
				t.Error(err)
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(body) != "slept 300 ms\n" {
				t.Errorf("body %q, %v", body, err)
			}
		})
	}
	var st map[string]int64
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := get(t, srv.URL+"/stats")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("stats %q: %v", body, err)
		}
		if st["running"] == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st["running"] != 3 {
		t.Errorf("running %d while 3 sleep, want 3", st["running"])
	}
	wg.Wait()
	_, body := get(t, srv.URL+"/stats")
	json.Unmarshal([]byte(body), &st)
	if st["running"] != 0 || st["peak"] != 3 || st["total"] != 3 {
		t.Errorf("stats after the sleeps: %s, want running 0, peak 3, total 3", body)
	}
}

func TestSleepCancelled(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/sleep?ms=60000", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("a cancelled request succeeded")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var st map[string]int64
		_, body := get(t, srv.URL+"/stats")
		json.Unmarshal([]byte(body), &st)
		if st["running"] == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sleep did not stop when its request was cancelled: %s", body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSHA256(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	data := bytes.Repeat([]byte("0123456789"), 100_000)
	resp, err := http.Post(srv.URL+"/sha256", "application/octet-stream", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Bytes  int64
		SHA256 string
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got.Bytes != int64(len(data)) || got.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("got %+v, want %d bytes, %x", got, len(data), sum)
	}
}

func TestBytes(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	for _, n := range []int{0, 1, 250, 251, 252, 100_000} {
		resp, body := get(t, srv.URL+"/bytes?n="+strconv.Itoa(n))
		if resp.ContentLength != int64(n) || len(body) != n {
			t.Fatalf("n=%d: Content-Length %d, %d bytes", n, resp.ContentLength, len(body))
		}
		for i := range n {
			if body[i] != byte(i%251) {
				t.Fatalf("n=%d: byte %d is %d, want %d", n, i, body[i], i%251)
			}
		}
	}
}

func TestStreamFlushes(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	// The second chunk comes an hour after the first: within the timeout
	// only a flushed first chunk can arrive.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/stream?chunks=2&ms=3600000", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("no response head within the timeout: %v", err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if err != nil || line != "chunk 0\n" {
		t.Fatalf("first line %q, %v: not flushed", line, err)
	}

	if _, body := get(t, srv.URL+"/stream?chunks=3&ms=20"); body != "chunk 0\nchunk 1\nchunk 2\n" {
		t.Errorf("whole stream %q", body)
	}
}

func TestHeadersStatusTrailer(t *testing.T) {
	srv := httptest.NewServer(newApp(0))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/headers", nil)
	req.Host = "example.test"
	req.Header.Set("X-B", "2")
	req.Header.Set("X-A", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "Host: example.test\n") ||
		!strings.Contains(string(body), "X-A: 1\nX-B: 2\n") {
		t.Errorf("/headers: %q", body)
	}

	if resp, body := get(t, srv.URL+"/status?code=418"); resp.StatusCode != 418 || body != "status 418\n" {
		t.Errorf("/status?code=418: %d %q", resp.StatusCode, body)
	}
	if resp, body := get(t, srv.URL+"/status?code=204"); resp.StatusCode != 204 || body != "" {
		t.Errorf("/status?code=204: %d %q", resp.StatusCode, body)
	}

	resp, body2 := get(t, srv.URL+"/trailer")
	if body2 == "" || resp.Trailer.Get("X-Checksum") != "done" {
		t.Errorf("/trailer: body %q, trailer %v", body2, resp.Trailer)
	}
}
