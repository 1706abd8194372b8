//go:build unix

package reversehttp

// End-to-end tests of a process per job: Caddy in this process, the worker
// binary as a real process running --exec commands or --cgi scripts.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ffmpegRecipe is the README's recipe for transcoding an uploaded WAV to
// MP3; TestE2EExecFFmpeg checks that the README shows it as it is here.
const ffmpegRecipe = `ffmpeg -hide_banner -loglevel error -f wav -i pipe:0 -c:a libmp3lame -b:a 128k -id3v2_version 0 -f mp3 pipe:1`

// startJobWorker runs the worker binary with args (--exec or --cgi) on
// the hub's "jobs" pool and waits until the pool holds wantConns
// connections in all.
func startJobWorker(t *testing.T, h *hub, name string, slots, wantConns int, env []string, args ...string) *proc {
	t.Helper()
	workerBin, _ := e2eBinaries(t)
	args = append([]string{
		"--hub", h.worker, "--pool", "jobs", "--token", "secret",
		"--slots", strconv.Itoa(slots), "--name", name, "--log-level", "debug",
	}, args...)
	w := startProc(t, name, workerBin, env, args...)
	waitPoolConns(t, w, wantConns, 10*time.Second)
	return w
}

// alive reports whether process pid exists and is not a zombie (nobody may
// reap orphans in a container, and a zombie has finished).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// sineWAV is a mono 16-bit PCM WAV file of a 440 Hz tone.
func sineWAV(seconds float64, rate int) []byte {
	n := int(seconds * float64(rate))
	var b bytes.Buffer
	le := binary.LittleEndian
	b.WriteString("RIFF")
	binary.Write(&b, le, uint32(36+2*n))
	b.WriteString("WAVEfmt ")
	for _, v := range []any{uint32(16), uint16(1), uint16(1), uint32(rate), uint32(2 * rate), uint16(2), uint16(16)} {
		binary.Write(&b, le, v) // fmt: PCM, mono, rate, bytes per second, block, bits
	}
	b.WriteString("data")
	binary.Write(&b, le, uint32(2*n))
	for i := range n {
		binary.Write(&b, le, int16(16000*math.Sin(2*math.Pi*440*float64(i)/float64(rate))))
	}
	return b.Bytes()
}

// needFFmpeg returns the paths of ffmpeg and ffprobe. Their absence fails
// the test, since CI installs them: a missing tool must not pass for a
// working recipe. REVERSE_HTTP_SKIP_FFMPEG=1 skips it instead, for a
// machine without ffmpeg.
func needFFmpeg(t *testing.T) (ffmpeg, ffprobe string) {
	t.Helper()
	ffmpeg, err1 := exec.LookPath("ffmpeg")
	ffprobe, err2 := exec.LookPath("ffprobe")
	if err1 == nil && err2 == nil {
		return ffmpeg, ffprobe
	}
	if os.Getenv("REVERSE_HTTP_SKIP_FFMPEG") == "1" {
		t.Skip("ffmpeg or ffprobe not found; skipped with REVERSE_HTTP_SKIP_FFMPEG=1")
	}
	t.Fatalf("ffmpeg and ffprobe are needed (apt-get install ffmpeg), or REVERSE_HTTP_SKIP_FFMPEG=1 to skip: %v %v", err1, err2)
	return "", ""
}

// TestE2EExecFFmpeg runs the README's recipe: a WAV made here goes through
// Caddy to a worker binary running ffmpeg, and MP3 comes back.
func TestE2EExecFFmpeg(t *testing.T) {
	_, ffprobe := needFFmpeg(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("--exec '"+ffmpegRecipe+"'")) {
		t.Fatalf("README.md does not show the recipe --exec '%s'", ffmpegRecipe)
	}
	h := newHub(t, basicConfig)
	w := startJobWorker(t, h, "w-ffmpeg", 1, 1, nil, "--exec", ffmpegRecipe, "--exec-content-type", "audio/mpeg", "--exec-timeout", "1m")

	req := mustRequest(t, http.MethodPost, h.site+"/transcode", bytes.NewReader(sineWAV(2, 44100)))
	req.Header.Set("Content-Type", "audio/wav")
	resp, body := h.do(req)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "audio/mpeg" {
		t.Fatalf("got %d %v %q", resp.StatusCode, resp.Header, body[:min(len(body), 200)])
	}
	// MPEG-1 Layer III frame sync: 11 bits set, then version 1, layer 3.
	if len(body) < 4 || body[0] != 0xFF || body[1]&0xFE != 0xFA {
		t.Fatalf("response does not start with an MP3 frame: % x", body[:min(len(body), 4)])
	}
	mp3 := filepath.Join(t.TempDir(), "out.mp3")
	os.WriteFile(mp3, []byte(body), 0o644)
	out, err := exec.Command(ffprobe, "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels:format=format_name,duration",
		"-of", "default=noprint_wrappers=1", mp3).Output()
	if err != nil {
		t.Fatalf("ffprobe: %v", err)
	}
	probe := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(l, "=")
		probe[k] = v
	}
	d, _ := strconv.ParseFloat(probe["duration"], 64)
	if probe["codec_name"] != "mp3" || probe["format_name"] != "mp3" || probe["sample_rate"] != "44100" || probe["channels"] != "1" || d < 1.9 || d > 2.2 {
		t.Fatalf("ffprobe says %v, want 2 s of mono MP3 at 44.1 kHz", probe)
	}
	t.Logf("2 s WAV (%d bytes) to MP3: %d bytes, %s s", 2*44100*2+44, len(body), probe["duration"])

	// What is not a WAV is refused by ffmpeg before it writes anything:
	// 502, and ffmpeg's complaint in the worker's log.
	resp, body = h.do(mustRequest(t, http.MethodPost, h.site+"/transcode", strings.NewReader("not a wav file")))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d %q for a non-WAV, want 502", resp.StatusCode, body)
	}
	waitFor(t, "ffmpeg's error in the worker's log", func() bool {
		return strings.Contains(w.out.String(), `msg="command failed"`) && strings.Contains(w.out.String(), "Invalid data found when processing input")
	})
}

// TestE2EExecStreaming: the consumer gets the first line of a slow
// command's output while the command still runs (it marks its end in a
// file, which is not there yet when the first line arrives).
func TestE2EExecStreaming(t *testing.T) {
	h := newHub(t, basicConfig)
	done := filepath.Join(t.TempDir(), "done")
	startJobWorker(t, h, "w-stream", 1, 1, []string{"DONE_FILE=" + done}, "--exec-env", "DONE_FILE",
		"--exec", `sh -c 'while read l; do echo "$l"; sleep 0.2; done; touch "$DONE_FILE"'`)

	input := strings.Repeat("line\n", 10)
	resp, err := testClient.Do(mustRequest(t, http.MethodPost, h.site+"/echo", strings.NewReader(input)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewReader(resp.Body)
	if l, err := lines.ReadString('\n'); l != "line\n" || err != nil {
		t.Fatalf("first line %q, %v", l, err)
	}
	if _, err := os.Stat(done); err == nil {
		t.Fatal("the first line came only after the command had ended")
	}
	rest, err := io.ReadAll(lines)
	if err != nil || string(rest) != input[5:] {
		t.Fatalf("rest %q, %v", rest, err)
	}
	if _, err := os.Stat(done); err != nil {
		t.Fatalf("the command did not end: %v", err)
	}
}

// TestE2EExecConsumerGone: a consumer that leaves mid-job gets the
// command and the child it started killed; the worker takes the next job.
func TestE2EExecConsumerGone(t *testing.T) {
	h := newHub(t, basicConfig)
	w := startJobWorker(t, h, "w-gone", 1, 1, nil, "--exec", `sh -c 'sleep 300 & echo "$$ $!"; wait'`)

	ctx, cancel := context.WithCancel(context.Background())
	req := mustRequest(t, http.MethodGet, h.site+"/hang", nil).WithContext(ctx)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var shell, child int
	if _, err := fmt.Fscanln(resp.Body, &shell, &child); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(shell, syscall.SIGKILL); syscall.Kill(child, syscall.SIGKILL) })
	if !alive(shell) || !alive(child) {
		t.Fatalf("processes %d and %d should be running", shell, child)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "the command and its child to die", func() bool { return !alive(shell) && !alive(child) })
	waitFor(t, "the worker's log of the cancellation", func() bool {
		return strings.Contains(w.out.String(), `msg="job cancelled: killed its command's process group"`)
	})
	waitPoolConns(t, w, 1, 10*time.Second)
}

// TestE2EExecFailures: a command that fails before writing gives the
// consumer 502 (its stderr goes to the worker's log); one that fails after
// writing cuts the consumer's body off, never a clean end.
func TestE2EExecFailures(t *testing.T) {
	h := newHub(t, basicConfig)
	w := startJobWorker(t, h, "w-fail", 1, 1, nil, "--exec",
		`sh -c 'case "$PATH_INFO" in /cut) echo partial; exit 1;; *) echo "no good: $PATH_INFO" >&2; exit 2;; esac'`)

	resp, body := h.get("/early")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
	}
	waitFor(t, "stderr in the worker's log", func() bool {
		return strings.Contains(w.out.String(), `stderr="no good: /early\n"`) && strings.Contains(w.out.String(), `exit="exit status 2"`)
	})

	resp, err := testClient.Get(h.site + "/cut")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != "partial\n" || err == nil {
		t.Fatalf("got %d %q, err %v: want the output and then an error", resp.StatusCode, got, err)
	}
	t.Logf("cut response: %v", err)
}

// TestE2EExecLargeUpload streams 64 MiB through Caddy into a command's
// stdin; the worker process's peak resident memory stays small.
func TestE2EExecLargeUpload(t *testing.T) {
	h := newHub(t, basicConfig)
	w := startJobWorker(t, h, "w-large", 1, 1, nil, "--exec", "sha256sum")
	const size = 64 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{6, 4}).Read(data)
	want := sha256.Sum256(data)

	start := time.Now()
	resp, body := h.do(mustRequest(t, http.MethodPost, h.site+"/sum", bytes.NewReader(data)))
	if resp.StatusCode != 200 || !strings.HasPrefix(body, hex.EncodeToString(want[:])+" ") {
		t.Fatalf("got %d %q, want %x", resp.StatusCode, body, want)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var hwm int
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			hwm, _ = strconv.Atoi(f[1])
		}
	}
	t.Logf("64 MiB upload in %v; worker's peak RSS %d KiB", time.Since(start).Round(time.Millisecond), hwm)
	if hwm == 0 || hwm > 40<<10 {
		t.Errorf("worker's peak RSS %d KiB for a 64 MiB upload", hwm)
	}
}

// TestE2ECGIPython: a Python CGI script sets its own status and headers and
// reads its body.
func TestE2ECGIPython(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.py")
	os.WriteFile(script, []byte(`#!/usr/bin/python3
import json, os, sys
body = sys.stdin.buffer.read(int(os.environ.get("CONTENT_LENGTH") or 0))
sys.stdout.write("Status: 201 Created\r\nContent-Type: application/json\r\nX-Script: python\r\n\r\n")
json.dump({"method": os.environ["REQUEST_METHOD"], "path": os.environ["PATH_INFO"],
           "query": os.environ["QUERY_STRING"], "type": os.environ.get("CONTENT_TYPE"),
           "request_id": os.environ.get("HTTP_X_REQUEST_ID"), "body": body.decode()}, sys.stdout)
`), 0o755)
	h := newHub(t, basicConfig)
	startJobWorker(t, h, "w-cgi", 1, 1, nil, "--cgi", script)

	req := mustRequest(t, http.MethodPost, h.site+"/py/run?x=1", strings.NewReader("hello"))
	req.Header.Set("Content-Type", "text/plain")
	resp, body := h.do(req)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Script") != "python" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %v %q", resp.StatusCode, resp.Header, body)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%q: %v", body, err)
	}
	if got["method"] != "POST" || got["path"] != "/py/run" || got["query"] != "x=1" || got["type"] != "text/plain" ||
		got["body"] != "hello" || got["request_id"] == "" {
		t.Errorf("script saw %v", got)
	}
}

// TestE2EExecDeclinedElsewhere: a worker whose command cannot be started
// declines the job, and the hub gives it to another worker.
func TestE2EExecDeclinedElsewhere(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho from A\n"), 0o755)
	h := newHub(t, basicConfig)
	a := startJobWorker(t, h, "w-a", 1, 1, nil, "--exec", script)
	os.Chmod(script, 0o644)

	ch := goGet(t, h.site+"/job")
	waitFor(t, "worker A to decline", func() bool {
		return strings.Contains(a.out.String(), `msg="command cannot be started: declining the job"`)
	})
	waitPoolConns(t, a, 0, 10*time.Second) // A leaves while it cannot work
	startJobWorker(t, h, "w-b", 1, 1, nil, "--exec", "echo from B")
	if r := receive(t, "the declined job", ch, 10*time.Second); r.err != nil || r.status != 200 || r.body != "from B\n" {
		t.Fatalf("got %v, want B's answer", r)
	}
}
