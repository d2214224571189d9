#!/bin/bash
# bench/fuzz.sh [SECONDS=60]
#
# Fuzzes the broker message decoder (src/order_message.c) with libFuzzer under
# ASan+UBSan for a bounded time, seeded from fuzz/corpus with fuzz/json.dict.
# Prints executions and exec/s, then merges the inputs that found new
# coverage back into fuzz/corpus, minimised (the hand-made seeds, named
# descriptively, are always kept; generated files are named by their SHA-1).
# Exits non-zero if the fuzzer found a crash, a leak, undefined behaviour or
# a broken invariant; the reproducer is kept and its path printed.
#
# Environment:
#   FUZZ_BUILD_DIR   build/work folder (default: a fresh temp folder)
#   FUZZ_NO_MERGE=1  leave fuzz/corpus untouched (e.g. in CI)
#   FUZZ_MAX_LEN     largest input libFuzzer makes (default 1024 bytes)
set -euo pipefail

duration=${1:-60}
case "$duration" in
	''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
corpus="$root/fuzz/corpus"
dict="$root/fuzz/json.dict"
build=${FUZZ_BUILD_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ordflow-fuzz.XXXXXX")}
max_len=${FUZZ_MAX_LEN:-1024}
mkdir -p "$build"

# A trivial fuzz target tells whether clang and its fuzzer runtime work.
probe_clang() {
	command -v clang >/dev/null 2>&1 || return 1
	printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void) d; (void) n; return 0; }\n' \
		>"$build/probe.c"
	clang -fsanitize=fuzzer,address,undefined "$build/probe.c" -o "$build/probe" >/dev/null 2>&1
}

if ! probe_clang; then
	echo "fuzz.sh: installing clang and its fuzzer runtime (Debian packages)"
	export DEBIAN_FRONTEND=noninteractive
	# apt-get update only when the package lists cannot serve the install
	if ! apt-get install -y -q clang libclang-rt-14-dev >/dev/null; then
		apt-get update -q >/dev/null
		apt-get install -y -q clang libclang-rt-14-dev >/dev/null
	fi
	probe_clang || { echo "fuzz.sh: clang cannot build a libFuzzer target" >&2; exit 1; }
fi

bin="$build/fuzz_message"
clang -g -O1 -std=c99 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-Wall -Wextra -Werror -I"$root/src" \
	"$root/fuzz/fuzz_message.c" "$root/src/order_message.c" -lm -o "$bin"

new="$build/new_inputs"
artifacts="$build/artifacts"
mkdir -p "$new" "$artifacts"
log="$build/fuzz.log"

echo "fuzz.sh: fuzzing for ${duration}s, seeds: $(ls "$corpus" | wc -l) files in fuzz/corpus, work dir: $build"
set +e
# New interesting inputs go to $new (first folder); fuzz/corpus is only read.
"$bin" -max_total_time="$duration" -dict="$dict" -max_len="$max_len" \
	-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix="$artifacts/" "$new" "$corpus" >"$log" 2>&1
rc=$?
set -e

# (|| true: a crash while loading the seeds leaves no coverage line)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
cov=$({ grep -E '^#[0-9]+' "$log" || true; } | tail -1 | sed -n 's/.*cov: \([0-9]*\).*ft: \([0-9]*\).*/cov \1, features \2/p')
echo "fuzz.sh: ${execs:-?} executions in ${duration}s, ${rate:-?} exec/s (${cov:-no coverage line})"

if [ "$rc" -ne 0 ] || ls "$artifacts" | grep -q .; then
	echo "fuzz.sh: FAILED (libFuzzer exit code $rc); last lines of $log:" >&2
	grep -E 'ERROR|SUMMARY|invariant failed|runtime error|Test unit written' "$log" | head -20 >&2 || tail -30 "$log" >&2
	echo "fuzz.sh: reproducers in $artifacts:" >&2
	ls -l "$artifacts" >&2
	echo "fuzz.sh: replay one with: $bin <file>" >&2
	exit 1
fi

if [ "${FUZZ_NO_MERGE:-0}" = 1 ]; then
	echo "fuzz.sh: FUZZ_NO_MERGE=1, fuzz/corpus left as is"
	exit 0
fi

# Minimise: start from the hand-made seeds, add the fewest generated inputs
# (old and new) that keep all edges covered, and replace the generated ones.
# Edges only (-use_counters=0): hit-count buckets would keep ~3x the files.
merged="$build/merged"
generated="$build/generated"
rm -rf "$merged" "$generated"
mkdir -p "$merged" "$generated"
for f in "$corpus"/*; do
	name=$(basename "$f")
	if [[ "$name" =~ ^[0-9a-f]{40}$ ]]; then
		cp "$f" "$generated/"
	else
		cp "$f" "$merged/"
	fi
done
cp "$new"/* "$generated/" 2>/dev/null || true
"$bin" -merge=1 -use_counters=0 -max_len="$max_len" -timeout=10 "$merged" "$generated" >"$build/merge.log" 2>&1 || {
	echo "fuzz.sh: merge failed, see $build/merge.log" >&2
	exit 1
}
before=$(ls "$corpus" | wc -l)
find "$corpus" -maxdepth 1 -type f -regextype posix-egrep -regex '.*/[0-9a-f]{40}' -delete
for f in "$merged"/*; do
	name=$(basename "$f")
	[[ "$name" =~ ^[0-9a-f]{40}$ ]] && cp "$f" "$corpus/"
done
after=$(ls "$corpus" | wc -l)
kb=$(( $(cat "$corpus"/* | wc -c) / 1024 ))
echo "fuzz.sh: fuzz/corpus: $before -> $after files, $kb kB"
if [ "$after" -gt 300 ] || [ "$kb" -gt 1024 ]; then
	echo "fuzz.sh: warning: fuzz/corpus is over 300 files or 1 MB; consider FUZZ_MAX_LEN=512" >&2
fi
