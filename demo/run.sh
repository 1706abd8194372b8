#!/usr/bin/env bash
# The reverse_http demo: starts bin/sample-app, bin/caddy with demo/Caddyfile
# and bin/reverse-http-worker with 4 slots, sends a few requests through the
# hub, explaining what each shows, and then keeps running until Ctrl-C.
#
#   make demo                    build, run the checks, keep running
#   DEMO_ONESHOT=1 make demo     exit after the checks: 0 if all passed
#
# Ports: 127.0.0.1:9000 (sample app), 127.0.0.1:4040 (worker listener),
# localhost:8080 (the site). Logs go to a temporary directory it prints.
set -euo pipefail

if ((BASH_VERSINFO[0] < 5)); then
	echo "demo: needs bash 5 or later, not $BASH_VERSION" >&2
	exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APP_ADDR=127.0.0.1:9000
HUB_ADDR=127.0.0.1:4040
SITE_ADDR=127.0.0.1:8080
SITE=http://localhost:8080
SLOTS=4

for b in bin/caddy bin/reverse-http-worker bin/sample-app; do
	if [[ ! -x $b ]]; then
		echo "demo: $b is missing: run 'make build' first, or 'make demo'" >&2
		exit 1
	fi
done
if ! command -v curl >/dev/null 2>&1; then
	echo "demo: curl is required" >&2
	exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/reverse-http-demo.XXXXXX")
logs=$tmp/logs
mkdir -p "$logs" "$tmp/data" "$tmp/config"
# Nothing of Caddy's goes to $HOME.
export XDG_DATA_HOME=$tmp/data XDG_CONFIG_HOME=$tmp/config
export DEMO_STORAGE=$tmp/data/caddy
export REVERSE_HTTP_TOKEN=demo-token
echo "Logs: $logs"

pids=()
cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	# In reverse order: the worker leaves the hub before the hub stops.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		stop "${pids[i]}"
	done
	echo "Logs kept in $logs"
	exit "$rc"
}
# stop PID: SIGTERM, then SIGKILL if it has not exited after 10 s.
stop() {
	kill -TERM "$1" 2>/dev/null || return 0
	(
		sleep 10
		kill -KILL "$1"
	) >/dev/null 2>&1 &
	local watchdog=$!
	wait "$1" 2>/dev/null || true
	kill "$watchdog" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, logging to $logs/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$logs/$name.log" 2>&1 &
	pids+=($!)
	echo "Started $name (pid $!): $*"
}

# port_open HOST:PORT: whether something accepts TCP connections there.
port_open() {
	(exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

# wait_for WHAT PID SECONDS CMD...: polls CMD until it succeeds; fails if
# process PID exits first or SECONDS pass.
wait_for() {
	local what=$1 pid=$2 deadline=$((SECONDS + $3))
	shift 3
	until "$@" >/dev/null 2>&1; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "demo: $what exited while starting; its log:" >&2
			show_logs >&2
			exit 1
		fi
		if ((SECONDS >= deadline)); then
			echo "demo: $what not ready after $3 s; the logs:" >&2
			show_logs >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "$what is ready"
}

show_logs() {
	local f
	for f in "$logs"/*.log; do
		echo "--- $f (last 25 lines)"
		tail -n 25 "$f"
	done
}

# now_ms: milliseconds since the epoch.
now_ms() {
	local us=${EPOCHREALTIME//[.,]/}
	echo $((us / 1000))
}

failures=()
pass() { echo "  ok: $*"; }
fail() {
	echo "  FAIL: $*"
	failures+=("$*")
}
section() { printf '\n== %s\n' "$*"; }

for addr in "$APP_ADDR" "$HUB_ADDR" "$SITE_ADDR"; do
	if port_open "$addr"; then
		echo "demo: $addr is already in use; stop whatever listens there (an earlier demo?)" >&2
		exit 1
	fi
done

section "Starting the sample app, Caddy and a worker"
start sample-app bin/sample-app --listen "$APP_ADDR"
wait_for "sample app" "${pids[-1]}" 15 curl -fsS --max-time 2 -o /dev/null "http://$APP_ADDR/"
start caddy bin/caddy run --config demo/Caddyfile --adapter caddyfile
caddy_pid=${pids[-1]}
wait_for "Caddy (site $SITE_ADDR)" "$caddy_pid" 30 port_open "$SITE_ADDR"
# Caddy logs this once every app has started, the worker listener included.
# (Probing $HUB_ADDR instead would log a rejected worker handshake.)
wait_for "Caddy (worker listener $HUB_ADDR)" "$caddy_pid" 30 \
	grep -q '"serving initial configuration"' "$logs/caddy.log"
start worker bin/reverse-http-worker --hub "$HUB_ADDR" --pool demo \
	--upstream "http://$APP_ADDR" --slots "$SLOTS" --name demo-worker
worker_pid=${pids[-1]}
# A request waits in the pool's queue until the worker has connected, so
# the first one that succeeds shows the whole chain works.
for ((i = 0; ; i++)); do
	if curl -fsS --max-time 10 -o /dev/null "$SITE/hello" 2>"$tmp/ready.err"; then
		echo "Caddy -> worker -> sample app is ready"
		break
	fi
	for p in "$caddy_pid" "$worker_pid"; do
		if ! kill -0 "$p" 2>/dev/null; then
			echo "demo: a process exited while starting (pid $p); the logs:" >&2
			show_logs >&2
			exit 1
		fi
	done
	if ((i >= 30)); then
		echo "demo: $SITE/hello still fails: $(cat "$tmp/ready.err"); the logs:" >&2
		show_logs >&2
		exit 1
	fi
	sleep 0.2
done

section "1. GET /hello: one job through the pool"
echo "Caddy gives each request an X-Request-Id; the app echoes the one it got as X-Seen-Request-Id."
echo "\$ curl -i $SITE/hello   (some headers)"
: >"$tmp/hello.h"
: >"$tmp/hello.b"
code=$(curl -sS --max-time 30 -D "$tmp/hello.h" -o "$tmp/hello.b" -w '%{http_code}' "$SITE/hello" || true)
tr -d '\r' <"$tmp/hello.h" | grep -iE '^(HTTP|x-seen-request-id|server|content-length)' | sed 's/^/  /' || true
sed 's/^/  /' "$tmp/hello.b"
seen=$(tr -d '\r' <"$tmp/hello.h" | sed -n 's/^[Xx]-[Ss]een-[Rr]equest-[Ii]d: *//p')
if [[ $code == 200 && $(cat "$tmp/hello.b") == "hello from the sample app" ]]; then
	pass "200 and the app's greeting"
else
	fail "/hello: status $code, body $(head -c 200 "$tmp/hello.b")"
fi
if [[ -n $seen ]]; then
	pass "the app saw X-Request-Id $seen"
else
	fail "/hello: no X-Seen-Request-Id: the app got no X-Request-Id"
fi

section "2. Eight concurrent GET /sleep?ms=500 with $SLOTS slots"
echo "The worker holds $SLOTS connections, so the hub runs 4 jobs at once and queues the"
echo "rest until a connection is free: two rounds, about 1 s in all (not 0.5 s, not 4 s)."
t0=$(now_ms)
cpids=()
for i in 1 2 3 4 5 6 7 8; do
	: >"$tmp/sleep$i.b"
	curl -sS --max-time 30 -o "$tmp/sleep$i.b" -w '%{http_code} %{time_total}\n' \
		"$SITE/sleep?ms=500" >"$tmp/sleep$i.w" 2>&1 &
	cpids+=($!)
done
wait "${cpids[@]}" || true
elapsed=$(($(now_ms) - t0))
ok=0
for i in 1 2 3 4 5 6 7 8; do
	read -r c t <"$tmp/sleep$i.w" || true
	echo "  request $i: status ${c:-none} after ${t:-?} s"
	if [[ ${c:-} == 200 && $(cat "$tmp/sleep$i.b") == "slept 500 ms" ]]; then
		ok=$((ok + 1))
	fi
done
echo "  all 8 done in $elapsed ms"
peak=$(curl -sS --max-time 5 "http://$APP_ADDR/stats" | sed -n 's/.*"peak":\([0-9]*\).*/\1/p' || true)
echo "  the app's own count of jobs running at once peaked at ${peak:-?}"
if ((ok == 8)); then
	pass "8 of 8 answered 200 \"slept 500 ms\""
else
	fail "/sleep: only $ok of 8 answered 200 \"slept 500 ms\""
fi
if ((elapsed >= 950 && elapsed < 1900)); then
	pass "$elapsed ms: two rounds of 4"
else
	fail "/sleep: 8 jobs took $elapsed ms, want 950-1900 ms for two rounds of $SLOTS"
fi
if [[ ${peak:-} == "$SLOTS" ]]; then
	pass "never more than $SLOTS jobs at once on the app"
else
	fail "/sleep: the app ran ${peak:-?} jobs at once, want $SLOTS"
fi

section "3. POST of 5 MB to /sha256: the request body streams to the worker"
head -c $((5 * 1024 * 1024)) /dev/urandom >"$tmp/upload.bin"
want=$(sha256sum "$tmp/upload.bin" | cut -d' ' -f1)
echo "\$ curl --data-binary @upload.bin $SITE/sha256"
: >"$tmp/sha.b"
code=$(curl -sS --max-time 60 -H 'Content-Type: application/octet-stream' \
	--data-binary "@$tmp/upload.bin" -o "$tmp/sha.b" -w '%{http_code}' "$SITE/sha256" || true)
echo "  app:       $(head -c 300 "$tmp/sha.b")"
echo "  sha256sum: $want"
got=$(sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p' "$tmp/sha.b")
bytes=$(sed -n 's/.*"bytes":\([0-9]*\).*/\1/p' "$tmp/sha.b")
if [[ $code == 200 && $got == "$want" && $bytes == $((5 * 1024 * 1024)) ]]; then
	pass "the app hashed all 5242880 bytes, and the hash matches"
else
	fail "/sha256: status $code, ${bytes:-?} bytes, sha256 ${got:-?}, want $want"
fi

rm -f "$tmp/upload.bin"

section "4. GET /stream?chunks=5&ms=300: the response streams back as the app writes"
echo "Each line is printed with the time it arrived: one every 0.3 s, not all at the end."
t0=$(now_ms)
curl -sS -N --max-time 30 "$SITE/stream?chunks=5&ms=300" 2>"$tmp/stream.err" |
	while IFS= read -r line; do
		echo "$(($(now_ms) - t0)) $line"
	done >"$tmp/stream.out" || true
while read -r ms line; do
	printf '  +%5d ms  %s\n' "$ms" "$line"
done <"$tmp/stream.out"
lines=$(wc -l <"$tmp/stream.out")
first=$(head -n 1 "$tmp/stream.out" | cut -d' ' -f1)
last=$(tail -n 1 "$tmp/stream.out" | cut -d' ' -f1)
if ((lines == 5)) && [[ $(tail -n 1 "$tmp/stream.out" | cut -d' ' -f2-) == "chunk 4" ]]; then
	pass "all 5 chunks arrived"
else
	fail "/stream: got $lines lines, want chunk 0 to chunk 4 $(cat "$tmp/stream.err")"
fi
if ((lines > 1 && last - first >= 1000)); then
	pass "they arrived one by one over $((last - first)) ms"
else
	fail "/stream: the chunks were not flushed one by one (first at ${first:-?} ms, last at ${last:-?} ms)"
fi

section "Result"
if ((${#failures[@]})); then
	echo "${#failures[@]} check(s) failed:"
	printf '  - %s\n' "${failures[@]}"
	echo
	show_logs
else
	echo "All checks passed."
fi

if [[ ${DEMO_ONESHOT:-} == 1 ]]; then
	if ((${#failures[@]})); then
		exit 1
	fi
	exit 0
fi

echo
echo "Demo running: try curl http://localhost:8080/hello — Ctrl-C to stop"
echo "(also /sleep?ms=N, /stream, /headers, /bytes?n=N, POST /sha256; logs in $logs)"
# Until Ctrl-C, or until one of the three exits on its own.
wait -n "${pids[@]}" || true
echo "demo: a process exited on its own; the logs:" >&2
show_logs >&2
exit 1
