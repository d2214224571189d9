#!/usr/bin/env bash
# scripts/test.sh [t/NNN_name.pl ...] - ordflow's whole test suite, as root.
#
# Installs missing Debian packages, builds and installs the extension, then
# runs as the unprivileged `postgres` user (initdb refuses root) in a private
# copy of the tree under /var/tmp:
#   1. C unit tests of the order-message decoder (make -C test)
#   2. pg_regress (sql/*.sql vs expected/*.out) on a temporary instance,
#      then the isolation tests (specs/*.spec) on another one
#   3. TAP tests (t/*.pl) with real PostgreSQL nodes and a private RabbitMQ
#   4. static validation of docker/compose.yml
# Exits non-zero if anything fails, printing regression.diffs and the TAP
# logs.  Every server the run started is stopped and the copy removed
# (ORDFLOW_KEEP=1 keeps the copy for a post-mortem).
#
# With arguments, runs only those TAP tests (after the build).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

require_root
ensure_packages

WORK=$(mktemp -d /var/tmp/ordflow-test.XXXXXX) || die "mktemp failed"
SRC=$WORK/src
FAILED=()
PASSED=()

# Stop whatever a test left running under $WORK (only processes whose pid
# files live there), then remove it.
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup()
{
	local rc=$? f pid port
	trap - EXIT INT TERM
	if [ -d "$WORK" ]; then
		while IFS= read -r f; do
			pid=$(head -n1 "$f" 2>/dev/null)
			if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
				say "stopping leftover postgres $pid ($f)"
				kill -QUIT "$pid" 2>/dev/null
			fi
		done < <(find "$WORK" -name postmaster.pid 2>/dev/null)
		while IFS= read -r f; do
			pid=$(grep -o '[0-9]*' "$f" 2>/dev/null | head -n1)
			if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
				! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null; then
				say "stopping leftover rabbitmq $pid ($f)"
				kill -KILL "$pid" 2>/dev/null
			fi
		done < <(find "$WORK" -name rabbitmq.pid 2>/dev/null)
		# a Prometheus exporter a killed test left (its queries file is ours)
		pkill -KILL -f -- "--extend.query-path=$WORK/" 2>/dev/null
		while IFS= read -r f; do
			port=$(cat "$f" 2>/dev/null)
			[ -n "$port" ] && epmd -port "$port" -kill >/dev/null 2>&1
		done < <(find "$WORK" -name epmd.port 2>/dev/null)
		if [ -n "${ORDFLOW_KEEP:-}" ]; then
			say "kept $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_step NAME CMD...: runs it, records pass/fail, never aborts the run
run_step()
{
	local name=$1
	shift
	step "$name"
	if "$@"; then
		PASSED+=("$name")
	else
		FAILED+=("$name")
		return 1
	fi
}

# installcheck_step NAME OUTDIR TMPDIR VAR=VALUE...: make installcheck with
# those variables on a temporary instance; on failure, OUTDIR's
# regression.diffs and the tail of the instance's server log
installcheck_step()
{
	local name=$1 out=$2 tmp=$3 f
	shift 3
	run_step "$name (make installcheck, temp instance)" \
		as_pg make -C "$SRC" installcheck "$@" PG_CONFIG="$PG_CONFIG" && return 0
	show_file "$out/regression.diffs"
	for f in "$out/log/postmaster.log" "$tmp/log/postmaster.log"; do
		[ -f "$f" ] && { printf '\n----- tail of %s -----\n' "${f#"$SRC"/}"; tail -n 40 "$f"; }
	done
	return 1
}

# PGXS's prove_installcheck: PATH has the PostgreSQL bindir, PG_REGRESS and
# TESTDIR are set, and prove gets PostgreSQL::Test::* on its include path
# shellcheck disable=SC2317  # called through run_step
tap_run()
{
	as_pg env ${ORDFLOW_V10_INSTALL:+ORDFLOW_V10_INSTALL="$ORDFLOW_V10_INSTALL"} \
		make -C "$SRC" installcheck REGRESS= ISOLATION= PG_CONFIG="$PG_CONFIG" \
		PROVE_FLAGS="--timer" ${TAP_SELECTION:+PROVE_TESTS="$TAP_SELECTION"} 2>&1 |
		tee "$1"
	return "${PIPESTATUS[0]}"
}

# --- the released 1.0, for t/060_upgrade.pl (issue 10) ----------------------
# A relocated copy of this server (bin, lib, share and headers under $V10,
# in the same relative layout, so its pg_config reports paths inside it)
# with ordflow 1.0 built from the release commit and installed into it;
# exports ORDFLOW_V10_INSTALL (its .../lib/postgresql/15).
V10_COMMIT=31a68f8
# shellcheck disable=SC2317  # called through run_step
build_v10()
{
	local v10=$WORK/v10 share inc
	share=$("$PG_CONFIG" --sharedir) && inc=$("$PG_CONFIG" --pkgincludedir) || return 1
	mkdir -p "$v10/usr/lib/postgresql" "$v10/usr/share/postgresql" \
		"$v10/usr/include" "$WORK/v10src" || return 1
	cp -a "$PG_BINDIR/.." "$v10/usr/lib/postgresql/$PG_MAJOR" &&
		cp -a "$share" "$v10/usr/share/postgresql/$PG_MAJOR" &&
		cp -a "$inc" "$v10/usr/include/postgresql" || return 1
	# only 1.0 there: not the files this run just installed
	rm -f "$v10/usr/share/postgresql/$PG_MAJOR"/extension/ordflow[.-]* \
		"$v10/usr/lib/postgresql/$PG_MAJOR"/lib/ordflow.so
	rm -rf "$v10/usr/lib/postgresql/$PG_MAJOR"/lib/bitcode/ordflow*
	git -C "$ROOT" archive "$V10_COMMIT" | tar -x -C "$WORK/v10src" || return 1
	chown -R postgres: "$v10" "$WORK/v10src"
	as_pg make -C "$WORK/v10src" -j2 \
		PG_CONFIG="$v10/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >/dev/null &&
		as_pg make -C "$WORK/v10src" install \
			PG_CONFIG="$v10/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >/dev/null &&
		grep -q "default_version = '1.0'" \
			"$v10/usr/share/postgresql/$PG_MAJOR/extension/ordflow.control" || return 1
	export ORDFLOW_V10_INSTALL=$v10/usr/lib/postgresql/$PG_MAJOR
}

show_file()
{
	local f=$1
	[ -s "$f" ] || return 0
	printf '\n----- %s -----\n' "${f#"$SRC"/}"
	cat "$f"
}

step "copying the tree to $SRC (owned by postgres)"
copy_tree "$ROOT" "$SRC"
chown -R postgres: "$WORK"

if ! run_step "build" as_pg make -C "$SRC" -j2 PG_CONFIG="$PG_CONFIG"; then
	say "build failed"
	exit 1
fi
run_step "install (as root)" make -C "$SRC" install PG_CONFIG="$PG_CONFIG" >/dev/null || exit 1

if [ $# -gt 0 ]; then
	TAP_SELECTION="$*"
else
	TAP_SELECTION=""

	# 1. C unit tests
	run_step "C unit tests (make -C test)" as_pg make -C "$SRC/test" PG_CONFIG="$PG_CONFIG"

	# 2. pg_regress, then the isolation tests (specs/*.spec vs expected/*.out)
	# on a temporary instance of their own
	installcheck_step pg_regress "$SRC" "$SRC/tmp_check" TAP_TESTS= ISOLATION=
	installcheck_step "isolation tests" "$SRC/output_iso" "$SRC/tmp_check_iso" REGRESS= TAP_TESTS=
fi

# 3. TAP tests (060_upgrade.pl needs the released 1.0 built first)
case " ${TAP_SELECTION:-all} " in
*" all "* | *060_upgrade*)
	# a shallow clone has no 1.0 to build: say so loudly, fail nothing
	if ! git -C "$ROOT" cat-file -e "$V10_COMMIT^{commit}" 2>/dev/null; then
		say "WARNING: commit $V10_COMMIT (1.0) is not in this clone: t/060_upgrade.pl will be skipped"
	else
		run_step "ordflow $V10_COMMIT (1.0) in a relocated server copy, for the upgrade test" \
			build_v10 || say "t/060_upgrade.pl will be skipped: building 1.0 failed"
	fi
	;;
esac
TAP_OUT=$WORK/tap.out
if ! run_step "TAP tests (make installcheck, prove ${TAP_SELECTION:-t/*.pl})" \
	tap_run "$TAP_OUT"; then
	# the logs of the failed tests only (all of them if none is named)
	mapfile -t BAD < <(sed -n '/^Test Summary Report/,$p' "$TAP_OUT" |
		grep -oE '^t/[^ ]+\.pl' | sed 's#^t/##; s#\.pl$##' | sort -u)
	for f in "$SRC"/tmp_check/log/*; do
		[ -f "$f" ] || continue
		if [ ${#BAD[@]} -gt 0 ]; then
			b=$(basename "$f")
			keep=
			for t in "${BAD[@]}"; do
				case $b in regress_log_"$t" | "$t"_*) keep=1 ;; esac
			done
			[ -n "$keep" ] || continue
		fi
		show_file "$f"
	done
fi

# 4. docker/compose.yml, statically (no Docker engine needed)
if [ -z "$TAP_SELECTION" ]; then
	run_step "docker-compose config -q" docker-compose -f "$SRC/docker/compose.yml" config -q
fi

printf '\n==> summary\n'
for s in "${PASSED[@]}"; do printf '  ok    %s\n' "$s"; done
for s in "${FAILED[@]}"; do printf '  FAIL  %s\n' "$s"; done
if [ ${#FAILED[@]} -gt 0 ]; then
	printf 'FAILED\n'
	exit 1
fi
printf 'all tests passed\n'
exit 0
