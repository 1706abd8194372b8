# reverse_http: build, test and demo.
#
#   make build   bin/caddy (Caddy with the plugin, via xcaddy from tools/),
#                bin/reverse-http-worker and bin/sample-app
#   make test    the tests, with the race detector
#   make smoke   build bin/caddy and check it lists the plugin's modules
#   make demo    build, then run demo/run.sh (DEMO_ONESHOT=1: check and exit)
#   make bench   build, then run the benchmarks in bench/ (about 6 minutes);
#                writes bench/results/RESULTS.md and the latency plots
#   make soak    build, then run the soak in bench/ (about 3 minutes;
#                SOAK_FLAGS=-quick: about 1 minute); fails if it finds a defect
#   make fuzz    run each fuzz target for FUZZTIME (default 10m; FUZZFLAGS
#                are passed to go test)
#   make fuzz-quick  the same for 20s each, as CI does
#   make screenshot  docs/status.png, the README's picture of the status
#                page, from a test in headless Chromium (about 45 s)
#   make clean   remove bin/

GO ?= go
CADDY_VERSION ?= v2.11.9
MODULE := github.com/reversehttp/reverse_http

# What bin/caddy is built from: the plugin package (the root directory)
# and the module files that choose its dependencies and xcaddy's version.
PLUGIN_SOURCES := $(filter-out %_test.go,$(wildcard *.go)) go.mod go.sum tools/go.mod tools/go.sum

.PHONY: all build test smoke demo bench fuzz fuzz-quick clean FORCE

all: build

build: bin/caddy bin/reverse-http-worker bin/sample-app

# xcaddy needs a version with a local plugin path; v0.0.0 is a stand-in.
bin/caddy: $(PLUGIN_SOURCES)
	@mkdir -p bin
	cd tools && XCADDY_WHICH_GO="$(GO)" $(GO) tool xcaddy build $(CADDY_VERSION) \
		--with $(MODULE)@v0.0.0=.. --output ../bin/caddy

# The go command knows best whether these are up to date.
bin/reverse-http-worker: FORCE
	$(GO) build -o $@ ./worker/cmd/reverse-http-worker

bin/sample-app: FORCE
	$(GO) build -o $@ ./cmd/sample-app

FORCE:

# -p 1: packages one at a time, so that the timing-sensitive tests of one do
# not share two cores with another's. bench/ is a module of its own, so
# ./... leaves it out.
test:
	$(GO) test -race -count=1 -p 1 -timeout 8m ./...
	cd bench && $(GO) vet ./... && $(GO) test -race -count=1 ./...

smoke: bin/caddy
	@set -e; \
	if ! mods=$$(./bin/caddy list-modules); then \
		echo "smoke: FAIL: 'bin/caddy list-modules' failed" >&2; exit 1; \
	fi; \
	for m in reverse_http http.handlers.reverse_http http.handlers.reverse_http_status admin.api.reverse_http; do \
		if printf '%s\n' "$$mods" | grep -qxF "$$m"; then \
			echo "smoke: ok: bin/caddy has module $$m"; \
		else \
			echo "smoke: FAIL: bin/caddy list-modules does not list $$m" >&2; exit 1; \
		fi; \
	done; \
	if ! out=$$(REVERSE_HTTP_TOKEN=smoke ./bin/caddy adapt --config demo/Caddyfile --adapter caddyfile 2>&1 >/dev/null); then \
		echo "smoke: FAIL: bin/caddy cannot adapt demo/Caddyfile:" >&2; echo "$$out" >&2; exit 1; \
	fi; \
	echo "smoke: ok: bin/caddy adapts demo/Caddyfile"; \
	echo "smoke: passed"

demo: build
	./demo/run.sh

bin/bench: FORCE
	cd bench && $(GO) build -o ../bin/bench .

# HAProxy is one of the systems compared, and werkzeug serves the stand-in
# POTHEAD worker; as root, install them if missing. The limit on open files
# goes up to the hard limit for scenario 4.
BENCH_FLAGS ?=
bench: build bin/bench
	@pkgs=""; command -v haproxy >/dev/null || pkgs="haproxy"; \
	/usr/bin/python3 -c 'import werkzeug' >/dev/null 2>&1 || pkgs="$$pkgs python3-werkzeug"; \
	if [ -n "$$pkgs" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; \
	fi
	ulimit -n "$$(ulimit -Hn)" && ./bin/bench -caddy bin/caddy -worker bin/reverse-http-worker -out bench/results -readme README.md $(BENCH_FLAGS)

# The soak: load, worker kills, reloads and attacker connections at once
# against bin/caddy (see README.md, "Tests"). SOAK_FLAGS=-quick for CI.
.PHONY: soak
SOAK_FLAGS ?=
soak: build bin/bench
	./bin/bench soak -caddy bin/caddy -worker bin/reverse-http-worker $(SOAK_FLAGS)

# The fuzz targets, as package directory:FuzzName; their seed corpora are
# in <package>/testdata/fuzz/<FuzzName>/. One line adds a target.
FUZZ_TARGETS := \
	.:FuzzHandshake \
	.:FuzzHandshakeListener \
	.:FuzzCaddyfile \
	.:FuzzWorkerResponse
FUZZTIME ?= 10m
# A new input that widens coverage is minimised; the targets that run a
# whole Caddy per input take long enough that the default minute would eat
# a short run.
FUZZFLAGS ?= -fuzzminimizetime=5s

# tools/fuzz.sh tells a failing input from Go 1.26's fuzzing coordinator
# ending a clean run with "context deadline exceeded" (go.dev/issue/75804).
fuzz:
	@./tools/fuzz.sh "$(GO)" "$(FUZZTIME)" "$(FUZZFLAGS)" $(FUZZ_TARGETS)

fuzz-quick:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=20s

.PHONY: screenshot
screenshot:
	REVERSE_HTTP_SCREENSHOT=docs/status.png $(GO) test -count=1 -run '^TestStatusPageScreenshot$$' .

clean:
	rm -rf bin
