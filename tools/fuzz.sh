#!/usr/bin/env bash
# fuzz.sh GO FUZZTIME "FUZZFLAGS" pkg:FuzzName...
#
# Runs each fuzz target for FUZZTIME. A target fails when it writes a
# failing input (a new file in its testdata/fuzz/<FuzzName>/) or when go
# test fails for another reason, such as a build error. Go 1.26's fuzzing
# coordinator may end a run that found nothing with a bare "context
# deadline exceeded" as -fuzztime runs out (go.dev/issue/75804, fixed in
# Go 1.27): that alone is reported and not counted as a failure.
set -uo pipefail
go=$1 fuzztime=$2 flags=$3
shift 3
failed=0
for target in "$@"; do
	pkg=${target%%:*} name=${target#*:}
	corpus=$pkg/testdata/fuzz/$name
	before=$(ls "$corpus" 2>/dev/null | sort)
	echo "fuzz: $name in ./$pkg for $fuzztime"
	out=$(mktemp)
	# shellcheck disable=SC2086 # flags are words
	"$go" test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" $flags "./$pkg" 2>&1 | tee "$out" | grep -v '^{"level"'
	rc=${PIPESTATUS[0]}
	after=$(ls "$corpus" 2>/dev/null | sort)
	if ((rc != 0)); then
		if [[ $before == "$after" ]] && grep -q '^    context deadline exceeded$' "$out" && ! grep -q 'Failing input written' "$out"; then
			echo "fuzz: $name: ended by Go's coordinator race at the deadline (go.dev/issue/75804), no failing input: not a failure"
		else
			echo "fuzz: $name FAILED" >&2
			failed=1
		fi
	fi
	rm -f "$out"
done
exit $failed
