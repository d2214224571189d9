#!/usr/bin/env bash
# fuzz/run.sh [SECONDS=60] - fuzz the order-message decoder.
#
# Builds fuzz/fuzz_message.c with the decoder (src/order_message.c and
# src/order_fields.c) under clang, libFuzzer and
# ASan+UBSan, -DFRONTEND, linked with PostgreSQL's -lpgcommon -lpgport from
# $(pg_config --pkglibdir)) and fuzzes for SECONDS on one core, seeded from
# fuzz/corpus with fuzz/json.dict.  Then adds the inputs that found new
# coverage to fuzz/corpus (named by their SHA-1; hand-made seeds have
# descriptive names) and runs fuzz/differential.py on the corpus and the new
# inputs: PostgreSQL's parser and Python's json module must agree on what
# is valid JSON.
# Exits non-zero if the fuzzer found a crash, a leak, undefined behaviour or
# a broken invariant (the reproducer is kept and its path printed), or if
# the differential check disagrees.  Installs clang if it is missing (root).
#
# Environment:
#   ORDFLOW_PG_BINDIR  PostgreSQL's bin folder (see scripts/lib.sh)
#   FUZZ_BUILD_DIR     build/work folder (default: a fresh temp folder,
#                      removed after a clean run, kept after a failure)
#   FUZZ_NO_MERGE=1    leave fuzz/corpus untouched (e.g. in CI)
#   FUZZ_MAX_LEN       largest input libFuzzer makes (default 1024 bytes)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

case ${1:-} in -h|--help) usage 0 ;; esac
DURATION=${1:-60}
case "$DURATION" in
	''|*[!0-9]*) usage 2 ;;
esac
[ $# -le 1 ] || usage 2

CORPUS=$ROOT/fuzz/corpus
DICT=$ROOT/fuzz/json.dict
BUILD=${FUZZ_BUILD_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ordflow-fuzz.XXXXXX")}
MAX_LEN=${FUZZ_MAX_LEN:-1024}
mkdir -p "$BUILD" || die "cannot create $BUILD"
# a folder of our own goes after a clean run, as bench/*.sh's do; after a
# failure it stays, with the reproducers and logs it printed the paths of
[ -n "${FUZZ_BUILD_DIR:-}" ] || trap '[ $? -ne 0 ] || rm -rf "$BUILD"' EXIT
[ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG (set ORDFLOW_PG_BINDIR)"

# A trivial fuzz target tells whether clang and its fuzzer runtime work.
probe_clang()
{
	command -v clang >/dev/null 2>&1 || return 1
	printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void) d; (void) n; return 0; }\n' \
		>"$BUILD/probe.c"
	clang -fsanitize=fuzzer,address,undefined "$BUILD/probe.c" -o "$BUILD/probe" >/dev/null 2>&1
}

if ! probe_clang; then
	require_root
	step "installing clang and its fuzzer runtime (Debian packages)"
	export DEBIAN_FRONTEND=noninteractive
	# apt-get update only when the package lists cannot serve the install
	apt-get install -y -q clang libclang-rt-14-dev >/dev/null ||
		{ apt-get update -q >/dev/null && apt-get install -y -q clang libclang-rt-14-dev >/dev/null; }
	probe_clang || die "clang cannot build a libFuzzer target"
fi

# clang does not know gcc's gnu_printf, which PostgreSQL's headers name
CFLAGS=(-g -O1 -std=gnu99 -Wall -Wextra -Wno-unused-parameter -Wno-ignored-attributes -Werror
	-DFRONTEND -D_GNU_SOURCE -I"$ROOT/src" -I"$("$PG_CONFIG" --includedir-server)")
LIBS=(-L"$("$PG_CONFIG" --pkglibdir)" -lpgcommon -lpgport -lm)
# shellcheck disable=SC2054  # one option whose value holds a comma
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all)
SOURCES=("$ROOT/fuzz/fuzz_message.c" "$ROOT/src/order_message.c" "$ROOT/src/order_fields.c")
BIN=$BUILD/fuzz_message
REPLAY=$BUILD/fuzz_replay

step "building $BIN"
clang "${CFLAGS[@]}" "${SAN[@]}" -fsanitize=fuzzer "${SOURCES[@]}" "${LIBS[@]}" -o "$BIN" || die "build failed"
clang "${CFLAGS[@]}" "${SAN[@]}" -DOF_FUZZ_STANDALONE "${SOURCES[@]}" "${LIBS[@]}" -o "$REPLAY" ||
	die "build of the replay binary failed"

NEW=$BUILD/new_inputs
ARTIFACTS=$BUILD/artifacts
LOG=$BUILD/fuzz-0.log
mkdir -p "$NEW" "$ARTIFACTS"

step "fuzzing for ${DURATION}s on one core, seeds: $(find "$CORPUS" -type f | wc -l) files in fuzz/corpus, work dir: $BUILD"
# New interesting inputs go to $NEW (the first folder); fuzz/corpus is only
# read.  With -jobs=1 libFuzzer writes its output to ./fuzz-0.log.
(cd "$BUILD" && "$BIN" -max_total_time="$DURATION" -jobs=1 -workers=1 -dict="$DICT" \
	-max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix="$ARTIFACTS/" "$NEW" "$CORPUS" >/dev/null 2>&1)
rc=$?

# (|| true: a crash while loading the seeds leaves no coverage line)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG" | tail -1 || true)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOG" | tail -1 || true)
cov=$({ grep -E '^#[0-9]+' "$LOG" || true; } | tail -1 | sed -n 's/.*cov: \([0-9]*\).*ft: \([0-9]*\).*corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p')
say "fuzz/run.sh: ${execs:-?} executions in ${DURATION}s, ${rate:-?} exec/s (${cov:-no coverage line})"

if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$ARTIFACTS")" ]; then
	say "fuzz/run.sh: FAILED (libFuzzer exit code $rc); from $LOG:"
	grep -E 'ERROR|SUMMARY|invariant failed|runtime error|Test unit written' "$LOG" | head -20 >&2 || tail -30 "$LOG" >&2
	say "reproducers in $ARTIFACTS:"
	ls -l "$ARTIFACTS" >&2
	say "replay one with: $REPLAY <file>"
	exit 1
fi

if [ "${FUZZ_NO_MERGE:-0}" != 1 ]; then
	# Add the new inputs that cover new edges (-use_counters=0: hit-count
	# buckets would keep ~3x the files).  Existing files are kept, not
	# minimised away: libFuzzer sees only our code, not PostgreSQL's
	# uninstrumented parser, and t/015 replays them all through the broker.
	step "merging new inputs into fuzz/corpus"
	MERGED=$BUILD/merged
	rm -rf "$MERGED" && mkdir -p "$MERGED" && cp "$CORPUS"/* "$MERGED/"
	"$BIN" -merge=1 -use_counters=0 -max_len="$MAX_LEN" -timeout=10 "$MERGED" "$NEW" \
		>"$BUILD/merge.log" 2>&1 || die "merge failed, see $BUILD/merge.log"
	before=$(find "$CORPUS" -type f | wc -l)
	for f in "$MERGED"/*; do
		[ -e "$CORPUS/$(basename "$f")" ] || cp "$f" "$CORPUS/"
	done
	after=$(find "$CORPUS" -type f | wc -l)
	kb=$(( $(cat "$CORPUS"/* | wc -c) / 1024 ))
	say "fuzz/run.sh: fuzz/corpus: $before -> $after files, $kb kB"
	if [ "$after" -gt 300 ] || [ "$kb" -gt 1024 ]; then
		say "warning: fuzz/corpus is over 300 files or 1 MB; consider FUZZ_MAX_LEN=512"
	fi
fi

step "differential check against Python's json module (fuzz/corpus and this run's new inputs)"
files=("$CORPUS"/*)
[ -n "$(ls -A "$NEW")" ] && files+=("$NEW"/*)
python3 "$ROOT/fuzz/differential.py" "$REPLAY" "${files[@]}" || die "the differential check disagrees"
