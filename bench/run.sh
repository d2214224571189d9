#!/usr/bin/env bash
# bench/run.sh [--quick] [--runs N] [--profile] [--keep] - ordflow's benchmark.
#
# As root on Debian 12: installs missing packages, builds and installs the
# extension from a private copy, starts its own RabbitMQ and PostgreSQL 15
# (on free loopback ports under /var/tmp/ordflow-bench.*) and measures, in
# the same run:
#   1. raw broker pipe   bench/raw_pipe.c: persistent messages, confirms
#                        waited per 1000, prefetch 2000, multiple-acks
#   2. ordflow drain     N place_order() in one transaction, generator
#                        stopped, commit -> metrics() shows N processed;
#                        anonymous orders, orders of existing users (credit
#                        checks), and anonymous with ordflow.consumers = 2
#                        (in the same round, right after)
#   3. sustained         generator at ordflow.start(1000000) for 30 s
#   4. latency           generator at 1000/s for 30 s: metrics() vs recompute
#   4b.                  the same at 100/s
#   5. metrics() cost    median of 100 calls with 1k and 1M processed orders
#   6. naive baseline    ordflow.batch_size = 1 (one transaction and one ack
#                        per message); 6b adds relay_batch_size = 1
#   7. bulk              100,000 orders placed in one transaction, with
#                        place_orders() and with place_order(), timed from
#                        the first call until all are processed; and the
#                        placement rate alone (first call to commit)
#   8. many clients      pgbench -c 16 -j 2 -T 30, one place_order() per
#                        transaction, until all are processed, against the
#                        same pgbench with one CTE inserting the same three
#                        rows into plain tables
# CPU per order (every process of the pipeline: relay, consumers, broker,
# postgres) is reported beside the raw pipe's CPU per message (broker and
# raw_pipe's two processes).  Medians of --runs rounds (3; 1 with --quick,
# which also shortens everything).  Prints a table and the ratios and writes bench/out/
# results.csv (one figure per line) and bench/out/sustained.csv (the
# sustained run, one line a second), and draws them (bench/plot.sh, gnuplot)
# into bench/out/figures.png and bench/out/sustained.png.  --profile adds a drain under
# `perf record` (bench/out/perf-*.txt).  Every server it started is stopped
# at the end; --keep keeps the work folder (logs) for a post-mortem.
#
# Servers run with their defaults except: shared_preload_libraries =
# 'ordflow', max_worker_processes = 20, shared_buffers = 512MB,
# max_wal_size = 4GB (no checkpoint storm mid-run).  synchronous_commit
# stays on and fsync stays on: every figure includes a WAL flush per
# transaction, as a production setup would.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

QUICK=
RUNS=
PROFILE=
KEEP=
while [ $# -gt 0 ]; do
	case $1 in
		--*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;	# --opt=V as --opt V
		--quick) QUICK=1; shift ;;
		--runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
		--profile) PROFILE=1; shift ;;
		--keep) KEEP=1; shift ;;
		-h|--help) usage 0 ;;
		*) say "unknown option: $1"; usage 1 ;;
	esac
done

if [ -n "$QUICK" ]; then
	RUNS=${RUNS:-1}
	N_RAW=50000			# messages through the raw pipe
	N_DRAIN=20000		# orders per drain
	N_NAIVE=2000		# orders per naive drain (it is ~10x slower)
	SUSTAIN_S=10
	LATENCY_S=10
	N_BULK=20000
	MC_S=10				# pgbench -T
else
	RUNS=${RUNS:-3}
	N_RAW=100000
	N_DRAIN=50000
	N_NAIVE=5000
	SUSTAIN_S=30
	LATENCY_S=30
	N_BULK=100000
	MC_S=30
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive whole number"
N_USERS=1000
N_BIG=1000000			# processed orders for the metrics() cost test

require_root
ensure_packages
if [ -n "$PROFILE" ] && ! command -v perf >/dev/null; then
	# shellcheck disable=SC2034  # read by ensure_packages
	ORDFLOW_PACKAGES=(linux-perf)
	ensure_packages
fi

OUT=$ROOT/bench/out
mkdir -p "$OUT"
# ORDFLOW_BENCH_TMP: where the work folder goes (default /var/tmp)
WORK=$(mktemp -d "${ORDFLOW_BENCH_TMP:-/var/tmp}/ordflow-bench.XXXXXX") || die "mktemp failed"
chmod 755 "$WORK"
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
RESULTS=$OUT/results.csv
RUN_ID=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# on exit: stop what we started (by pid file), then remove the work folder
bench_traps

# ---------------------------------------------------------------------------
# build and install

step "building ordflow in $WORK/src and installing it"
bench_build "$ROOT"
cc -O2 -Wall -Wextra -o "$WORK/raw_pipe" "$ROOT/bench/raw_pipe.c" -lrabbitmq ||
	die "compiling bench/raw_pipe.c failed"

# ---------------------------------------------------------------------------
# RabbitMQ and PostgreSQL (bench/lib.sh)

mq_setup "ordflow_bench_$$@localhost" 17672
step "starting RabbitMQ on 127.0.0.1:$MQ_PORT"
mq_start
MQ_PID=$(mq_pid)

pg_setup 17432
step "starting PostgreSQL on 127.0.0.1:$PG_PORT"
pg_start

pg >/dev/null <<-'EOF' || die "setting up the database failed"
	CREATE EXTENSION ordflow;
	-- Polls metrics() until it shows target processed orders; returns the
	-- server's epoch time then.  VOLATILE: every poll sees a new snapshot.
	CREATE FUNCTION public.bench_wait_processed(target bigint, timeout_s float8)
	RETURNS float8 LANGUAGE plpgsql VOLATILE AS $$
	DECLARE
		t0 timestamptz := clock_timestamp();
		n  bigint;
	BEGIN
		LOOP
			SELECT orders_processed INTO n FROM ordflow.metrics();
			EXIT WHEN n >= target;
			IF clock_timestamp() - t0 > timeout_s * interval '1 second' THEN
				RAISE EXCEPTION 'timed out: % of % orders processed after % s', n, target, timeout_s;
			END IF;
			PERFORM pg_sleep(0.02);
		END LOOP;
		RETURN extract(epoch FROM clock_timestamp());
	END $$;
	-- Median and 90th percentile execution time (ms) of calls metrics() calls.
	CREATE FUNCTION public.bench_metrics_cost(calls int)
	RETURNS TABLE(median_ms float8, p90_ms float8) LANGUAGE plpgsql VOLATILE AS $$
	DECLARE
		t  timestamptz;
		ms float8[] := '{}';
	BEGIN
		FOR i IN 1 .. 10 LOOP PERFORM * FROM ordflow.metrics(); END LOOP;  -- warm-up
		FOR i IN 1 .. calls LOOP
			t := clock_timestamp();
			PERFORM * FROM ordflow.metrics();
			ms := ms || extract(epoch FROM clock_timestamp() - t) * 1000;
		END LOOP;
		RETURN QUERY SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x),
							percentile_cont(0.9) WITHIN GROUP (ORDER BY x)
					   FROM unnest(ms) AS x;
	END $$;
EOF
# 8.'s baseline: the rows place_order() writes, in plain tables (same
# columns, defaults and indexes, no checks), and the one CTE that writes them
pg >/dev/null <<-'EOF' || die "creating the plain tables failed"
	CREATE TABLE public.bare_orders (LIKE ordflow.orders INCLUDING DEFAULTS);
	ALTER TABLE public.bare_orders ADD PRIMARY KEY (order_id);
	CREATE TABLE public.bare_events (LIKE ordflow.order_events INCLUDING DEFAULTS INCLUDING IDENTITY);
	ALTER TABLE public.bare_events ADD PRIMARY KEY (event_id);
	CREATE INDEX ON public.bare_events (order_id);
	CREATE TABLE public.bare_outbox (LIKE ordflow.outbox INCLUDING DEFAULTS INCLUDING IDENTITY);
	ALTER TABLE public.bare_outbox ADD PRIMARY KEY (id);
EOF
cat > "$WORK/mc_place_order.sql" <<-'EOF'
	\set q random(1, 10)
	SELECT ordflow.place_order(NULL, NULL, 'ABC', :q);
EOF
cat > "$WORK/mc_bare.sql" <<-'EOF'
	\set q random(1, 10)
	WITH o AS (INSERT INTO public.bare_orders (uid, amount, symbol, quantity) VALUES (NULL, NULL, 'ABC', :q) RETURNING order_id, uid, symbol, quantity, amount, created_at), e AS (INSERT INTO public.bare_events (order_id, uid, status, amount) SELECT order_id, uid, 'initialised', amount FROM o) INSERT INTO public.bare_outbox (order_id, routing_key, payload) SELECT order_id, 'order.created', json_build_object('order_id', order_id, 'uid', uid, 'symbol', symbol, 'quantity', quantity, 'amount', amount, 'created_at', to_char(timezone('UTC', created_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text FROM o;
EOF
chmod 644 "$WORK"/mc_*.sql
pg -c "SELECT count(ordflow.create_user('Bench' || i, 'User' || i, 1e12))
       FROM generate_series(1, $N_USERS) AS i" >/dev/null || die "create_user failed"
MIN_UID=$(pg -c "SELECT min(uid) FROM ordflow.users")

# Workers up: supervisor, generator, relay, 1 consumer, connected.
wait_consumers()
{
	wait_workers_connected "$1" || die "expected $1 connected consumers and a connected relay"
}
wait_consumers 1
say "RabbitMQ $MQ_NODE and PostgreSQL ready; ordflow's workers connected"

set_guc()
{
	pg -c "ALTER SYSTEM SET $1 = $2" -c "SELECT pg_reload_conf()" >/dev/null || die "ALTER SYSTEM SET $1 failed"
	# the workers read the new value at their next loop (< 1 s)
	sleep 1.5
}

# ---------------------------------------------------------------------------
# figures

: > "$WORK/results.tmp"
# record TEST ROUND METRIC VALUE UNIT
record()
{
	printf '%s,%s,%s,%s,%s,%s\n' "$RUN_ID" "$1" "$2" "$3" "$4" "$5" >> "$WORK/results.tmp"
}
# median of the recorded values of TEST METRIC (empty if none)
median()
{
	awk -F, -v t="$1" -v m="$2" '$2 == t && $4 == m && $3 != "median" { print $5 }' "$WORK/results.tmp" |
		sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { if (v == "") print "-"; else printf "%.*f\n", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f\n", a / b }'; }

# CPU ticks (user+sys) of a pid; 0 if gone
# (fields after the parenthesised command name: utime is the 12th, stime the 13th)
ticks() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }; awk '{ print $12 + $13 }' <<< "${s##*) }"; }
CLK_TCK=$(getconf CLK_TCK)
PG_PID=$(head -n1 "$PGDATA/postmaster.pid")
# "name pid" lines: the ordflow workers, the broker, and every other postgres process
cpu_pids()
{
	pg -F ' ' -c "SELECT replace(worker, ' ', '_'), pid FROM ordflow.status()"
	echo "rabbitmq $MQ_PID"
	local p
	for p in $(pgrep -P "$PG_PID"); do echo "pg:$p $p"; done
}
# snapshot FILE: name pid ticks
cpu_snapshot()
{
	local name pid
	while read -r name pid; do echo "$name $pid $(ticks "$pid")"; done < "$WORK/cpu.pids" > "$1"
}
# cpu_report TEST ROUND SECONDS ORDERS: CPU seconds per component between
# the two snapshots, as a share of one core over the drain, and the CPU of
# all of them per order (a process that started in between counts from 0)
cpu_report()
{
	awk -v tck="$CLK_TCK" -v secs="$3" -v orders="$4" -v test="$1" -v round="$2" -v run="$RUN_ID" '
		FNR == NR { a[$2] = $3; next }
		{
			n = $1; if (n ~ /^pg:/) n = "other_postgres"
			seen[$2]++; if (seen[$2] > 1) next
			d = ($3 - a[$2]) / tck; c[n] += d; all += d
		}
		END {
			for (n in c) printf "%s,%s,%s,cpu_%s,%.3f,core_fraction\n", run, test, round, n, c[n] / secs
			printf "%s,%s,%s,cpu_cores,%.3f,core_fraction\n", run, test, round, all / secs
			if (orders > 0) printf "%s,%s,%s,cpu_us_per_order,%.1f,us\n", run, test, round, all * 1e6 / orders
		}' "$WORK/cpu.before" "$WORK/cpu.after" >> "$WORK/results.tmp"
}

# 1. raw broker pipe
# the broker's CPU ticks around the run, and raw_pipe's own (it waits for
# its forked consumer, so the subshell's children times hold both)
raw_once()
{
	local r=$1 out rate t0 t1 client
	t0=$(ticks "$MQ_PID")
	out=$( ("$WORK/raw_pipe" 127.0.0.1 "$MQ_PORT" "$N_RAW" 1000 2000 500 || exit 1; times) ) || die "raw_pipe failed"
	t1=$(ticks "$MQ_PID")
	# `times`: the shell's user/sys, then its children's: "0m1.234s 0m0.567s"
	client=$(tail -n1 <<< "$out" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } print s }')
	out=$(head -n1 <<< "$out")
	rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<< "$out")
	record raw_pipe "$r" msgs_per_s "$rate" msg/s
	record raw_pipe "$r" cpu_us_per_msg \
		"$(awk -v a="$t0" -v b="$t1" -v c="$client" -v tck="$CLK_TCK" -v n="$N_RAW" 'BEGIN { printf "%.1f", ((b - a) / tck + c) * 1e6 / n }')" us
	record raw_pipe "$r" cpu_rabbitmq_us_per_msg \
		"$(awk -v a="$t0" -v b="$t1" -v tck="$CLK_TCK" -v n="$N_RAW" 'BEGIN { printf "%.1f", (b - a) / tck * 1e6 / n }')" us
	say "  raw pipe, round $r: $out"
}

# 2./6. drain: N orders in one transaction, timed from its commit until
# metrics() shows them all processed.  $3 is the uid expression.
drain_once()
{
	local test=$1 r=$2 uidexpr=$3 n=$4 t_start t_commit t_done secs rate
	pg -c "SELECT ordflow.truncate()" >/dev/null || die "truncate failed"
	cpu_pids > "$WORK/cpu.pids"
	read -r t_start t_commit < <(pg -F ' ' <<-EOF | tail -n1
		SELECT extract(epoch FROM clock_timestamp()) AS t_start \gset
		BEGIN;
		SELECT count(ordflow.place_order($uidexpr, NULL, 'ABC', 1 + i % 10))
		  FROM generate_series(1, $n) AS i;
		COMMIT;
		SELECT :t_start, extract(epoch FROM clock_timestamp());
	EOF
	)
	[ -n "$t_commit" ] || die "placing $n orders failed"
	cpu_snapshot "$WORK/cpu.before"
	t_done=$(pg -c "SELECT public.bench_wait_processed($n, 600)") || die "$test: orders were not processed"
	cpu_snapshot "$WORK/cpu.after"
	secs=$(awk -v a="$t_commit" -v b="$t_done" 'BEGIN { printf "%.4f", b - a }')
	rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
	record "$test" "$r" orders_per_s "$rate" orders/s
	record "$test" "$r" seconds "$secs" s
	record "$test" "$r" place_order_per_s \
		"$(awk -v n="$n" -v a="$t_start" -v b="$t_commit" 'BEGIN { printf "%.1f", n / (b - a) }')" orders/s
	cpu_report "$test" "$r" "$secs" "$n"
	say "  $test, round $r: $n orders in $secs s = $rate orders/s"
}

purge_orders_queue()
{
	mqctl -q purge_queue ordflow.orders >/dev/null 2>&1 || true
}
# after a run that left a backlog: stop, empty everything, wait for calm
reset_pipeline()
{
	local i q
	pg -c "SELECT ordflow.stop()" -c "SELECT ordflow.truncate()" >/dev/null || die "reset failed"
	purge_orders_queue
	for ((i = 0; i < 100; i++)); do
		q=$(mqctl -q list_queues name messages 2>/dev/null | awk '$1 == "ordflow.orders" { print $2 }')
		[ "$q" = 0 ] && [ "$(pg -c 'SELECT count(*) FROM ordflow.outbox')" = 0 ] && break
		purge_orders_queue
		sleep 0.3
	done
	pg -c "SELECT ordflow.truncate()" >/dev/null
}

# 7. bulk: N orders in one transaction, with place_orders() (FN=orders:
# the JSON array built in the server, inside the timed statement) or with
# place_order() (FN=order), timed from the first call: until the commit
# (placement) and until metrics() shows them all processed (the whole job)
bulk_once()
{
	local fn=$1 r=$2 n=$3 test=bulk_place_$1 sql t_start t_commit t_done
	if [ "$fn" = orders ]; then
		sql="SELECT count(*) FROM ordflow.place_orders((SELECT jsonb_agg(jsonb_build_object('symbol', 'ABC', 'quantity', 1 + i % 10)) FROM generate_series(1, $n) AS i))"
	else
		sql="SELECT count(ordflow.place_order(NULL, NULL, 'ABC', 1 + i % 10)) FROM generate_series(1, $n) AS i"
	fi
	pg -c "SELECT ordflow.truncate()" >/dev/null || die "truncate failed"
	cpu_pids > "$WORK/cpu.pids"
	cpu_snapshot "$WORK/cpu.before"
	read -r t_start t_commit < <(pg -F ' ' <<-EOF | tail -n1
		SELECT extract(epoch FROM clock_timestamp()) AS t_start \gset
		BEGIN;
		$sql;
		COMMIT;
		SELECT :t_start, extract(epoch FROM clock_timestamp());
	EOF
	)
	[ -n "$t_commit" ] || die "$test: placing $n orders failed"
	t_done=$(pg -c "SELECT public.bench_wait_processed($n, 600)") || die "$test: orders were not processed"
	cpu_snapshot "$WORK/cpu.after"
	record "$test" "$r" orders_per_s "$(awk -v n="$n" -v a="$t_start" -v b="$t_done" 'BEGIN { printf "%.1f", n / (b - a) }')" orders/s
	record "$test" "$r" place_per_s "$(awk -v n="$n" -v a="$t_start" -v b="$t_commit" 'BEGIN { printf "%.1f", n / (b - a) }')" orders/s
	record "$test" "$r" seconds "$(awk -v a="$t_start" -v b="$t_done" 'BEGIN { printf "%.4f", b - a }')" s
	cpu_report "$test" "$r" "$(awk -v a="$t_start" -v b="$t_done" 'BEGIN { printf "%.4f", b - a }')" "$n"
	say "  $test, round $r: $n orders placed in $(awk -v a="$t_start" -v b="$t_commit" 'BEGIN { printf "%.2f", b - a }') s, all processed after $(awk -v a="$t_start" -v b="$t_done" 'BEGIN { printf "%.2f", b - a }') s"
}

# 8. many clients: pgbench with SCRIPT (place_order or bare); for
# place_order also the time until every order it placed was processed
pgb() { as_pg pgbench -h "$SOCK" -p "$PG_PORT" -n -c 16 -j 2 -T "$MC_S" -f "$1" postgres; }
mc_once()
{
	local what=$1 r=$2 out tps t_start t_done n
	pg -c "SELECT ordflow.truncate()" -c "TRUNCATE public.bare_orders, public.bare_events, public.bare_outbox" \
		-c "CHECKPOINT" >/dev/null || die "truncate failed"
	t_start=$(pg -c "SELECT extract(epoch FROM clock_timestamp())")
	out=$(pgb "$WORK/mc_$what.sql" 2>&1) || { say "$out"; die "pgbench ($what) failed"; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<< "$out" | head -n1)
	record "mc_$what" "$r" tps "$tps" tx/s
	if [ "$what" = place_order ]; then
		n=$(pg -c "SELECT count(*) FROM ordflow.orders")
		t_done=$(pg -c "SELECT public.bench_wait_processed($n, 600)") || die "many clients: orders were not processed"
		record "mc_$what" "$r" orders_per_s "$(awk -v n="$n" -v a="$t_start" -v b="$t_done" 'BEGIN { printf "%.1f", n / (b - a) }')" orders/s
		record "mc_$what" "$r" drain_after_s "$(awk -v a="$t_start" -v b="$t_done" -v t="$MC_S" 'BEGIN { printf "%.2f", b - a - t }')" s
		say "  pgbench place_order(), round $r: $tps tps, $n orders, all processed $(awk -v a="$t_start" -v b="$t_done" -v t="$MC_S" 'BEGIN { printf "%.2f", b - a - t }') s after pgbench ended"
	else
		say "  pgbench bare CTE, round $r: $tps tps"
	fi
}

# 4. latency: generator at RATE orders/s for SECS s, then p50/p99 from
# metrics() and recomputed from the orders (TEST names the figures)
latency_run()
{
	local test=$1 rate=$2 secs=$3 made
	pg -c "SELECT ordflow.truncate()" >/dev/null
	pg -c "SELECT ordflow.start($rate)" >/dev/null
	sleep "$secs"
	pg -c "SELECT ordflow.stop()" >/dev/null
	made=$(pg -c "SELECT count(*) FROM ordflow.orders")
	pg -c "SELECT public.bench_wait_processed($made, 120)" >/dev/null || die "latency run: orders were not processed"
	pg -F ',' >> "$WORK/results.tmp" <<-EOF || die "latency query failed"
		WITH m AS (SELECT * FROM ordflow.metrics()),
		h AS (SELECT max(u.k) - 1 AS top  -- highest non-empty histogram bucket
		        FROM ordflow.metrics_totals AS t,
		             unnest(t.latency_hist) WITH ORDINALITY AS u(x, k)
		       WHERE u.x > 0),
		r AS (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
		             percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
		             max(ms) AS mx, count(*) AS n, count(*) FILTER (WHERE ms > 500) AS slow
		        FROM (SELECT extract(epoch FROM processed_at - created_at) * 1000 AS ms
		                FROM ordflow.orders WHERE processed_at IS NOT NULL) AS s)
		SELECT '$RUN_ID', '$test', 1, v.metric, round(v.value::numeric, 3), v.unit
		  FROM m, h, r, LATERAL (VALUES
		       ('orders', r.n::float8, 'orders'),
		       ('rate', r.n::float8 / $secs, 'orders/s'),
		       ('metrics_p50_ms', m.latency_p50_ms, 'ms'),
		       ('metrics_p99_ms', m.latency_p99_ms, 'ms'),
		       ('metrics_max_bucket_upper_ms', 0.01 * power(2::float8, h.top / 8.0), 'ms'),
		       ('table_p50_ms', r.p50, 'ms'),
		       ('table_p99_ms', r.p99, 'ms'),
		       ('table_max_ms', r.mx, 'ms'),
		       ('table_over_500ms', r.slow::float8, 'orders')) AS v(metric, value, unit);
	EOF
}

T_BEGIN=$(date +%s)
# each round: raw pipe, drains with 1 consumer, then with 2, back to back,
# so that the paired ratios compare figures taken under the same load
step "1+2. raw broker pipe ($N_RAW messages) and ordflow drain ($N_DRAIN orders, 1 and 2 consumers), $RUNS round(s)"
for ((r = 1; r <= RUNS; r++)); do
	raw_once "$r"
	drain_once drain_1c "$r" NULL "$N_DRAIN"
	drain_once drain_1c_users "$r" "$MIN_UID + i % $N_USERS" "$N_DRAIN"
	set_guc ordflow.consumers 2
	wait_consumers 2
	drain_once drain_2c "$r" NULL "$N_DRAIN"
	pg -c "ALTER SYSTEM RESET ordflow.consumers" -c "SELECT pg_reload_conf()" >/dev/null
	wait_consumers 1
done

if [ -n "$PROFILE" ]; then
	step "profile: one drain under perf record (relay and consumer)"
	pg -c "SELECT ordflow.truncate()" >/dev/null
	PIDS=$(pg -c "SELECT string_agg(pid::text, ',' ORDER BY worker DESC) FROM ordflow.status() WHERE worker IN ('relay', 'consumer 0')")
	pg -c "SELECT count(ordflow.place_order(NULL, NULL, 'ABC', 1 + i % 10)) FROM generate_series(1, $N_DRAIN) i" >/dev/null
	perf record -q -g -o "$WORK/perf.data" -p "$PIDS,$MQ_PID" -- sleep 600 >/dev/null 2>&1 &
	PERF_PID=$!
	pg -c "SELECT public.bench_wait_processed($N_DRAIN, 600)" >/dev/null
	kill -INT "$PERF_PID"; wait "$PERF_PID"
	# relay, consumer and broker, each by symbol, self time (no call graphs)
	for w in relay:"${PIDS%%,*}" consumer:"${PIDS##*,}" rabbitmq:"$MQ_PID"; do
		perf report -i "$WORK/perf.data" --pid "${w#*:}" --no-children --sort dso,symbol \
			--stdio -g none 2>/dev/null | grep -v '^$' | head -n 60 > "$OUT/perf-${w%%:*}.txt"
	done
	perf report -i "$WORK/perf.data" --no-children --sort pid --stdio -g none 2>/dev/null |
		grep -v '^#' | grep -v '^$' | head -n 20 > "$OUT/perf-by-process.txt"
	say "  perf reports in $OUT/perf-*.txt"
fi

step "6. naive baseline: ordflow.batch_size = 1 ($N_NAIVE orders), $RUNS round(s)"
set_guc ordflow.batch_size 1
for ((r = 1; r <= RUNS; r++)); do
	drain_once naive_batch1 "$r" NULL "$N_NAIVE"
done
set_guc ordflow.relay_batch_size 1
drain_once naive_batch1_relay1 1 NULL "$N_NAIVE"
pg -c "ALTER SYSTEM RESET ordflow.batch_size" -c "ALTER SYSTEM RESET ordflow.relay_batch_size" \
	-c "SELECT pg_reload_conf()" >/dev/null
sleep 1.5

step "3. sustained: generator at its top rate for $SUSTAIN_S s"
pg -c "SELECT ordflow.truncate()" >/dev/null
SEQ0=$(pg -c "SELECT last_value FROM ordflow.order_id_seq")
echo "seconds,made,processed,backlog" > "$OUT/sustained.csv"
T0=$(date +%s.%N)
pg -c "SELECT ordflow.start(1000000)" >/dev/null
for ((s = 1; s <= SUSTAIN_S; s++)); do
	sleep "$(awk -v t0="$T0" -v s="$s" -v now="$(date +%s.%N)" 'BEGIN { d = t0 + s - now; print (d > 0 ? d : 0) }')"
	read -r MADE PROC < <(pg -F ' ' -c "SELECT (SELECT last_value FROM ordflow.order_id_seq) - $SEQ0,
	                                          (SELECT orders_processed FROM ordflow.metrics())")
	T=$(awk -v t0="$T0" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - t0 }')
	echo "$T,$MADE,$PROC,$((MADE - PROC))" >> "$OUT/sustained.csv"
done
pg -c "SELECT ordflow.stop()" >/dev/null
read -r OUTBOX INIT < <(pg -F ' ' -c "SELECT (SELECT count(*) FROM ordflow.outbox),
                                             (SELECT count(*) FROM ordflow.orders WHERE status = 'initialised')")
# rates over the whole window and backlog growth over its second half
awk -F, -v run="$RUN_ID" -v outbox="$OUTBOX" -v init="$INIT" '
	NR > 1 { t[++n] = $1; m[n] = $2; p[n] = $3; b[n] = $4 }
	END {
		h = int(n / 2); if (h < 1) h = 1
		printf "%s,sustained,1,made_per_s,%.1f,orders/s\n", run, m[n] / t[n]
		printf "%s,sustained,1,processed_per_s,%.1f,orders/s\n", run, p[n] / t[n]
		printf "%s,sustained,1,processed_per_s_2nd_half,%.1f,orders/s\n", run, (p[n] - p[h]) / (t[n] - t[h])
		printf "%s,sustained,1,backlog_growth_per_s_2nd_half,%.1f,orders/s\n", run, (b[n] - b[h]) / (t[n] - t[h])
		printf "%s,sustained,1,backlog_end,%d,orders\n", run, b[n]
		printf "%s,sustained,1,outbox_end,%d,rows\n", run, outbox
		printf "%s,sustained,1,initialised_end,%d,orders\n", run, init
	}' "$OUT/sustained.csv" >> "$WORK/results.tmp"
say "  made $(median sustained made_per_s)/s, processed $(median sustained processed_per_s)/s, backlog at the end $(median sustained backlog_end) (outbox $OUTBOX, initialised $INIT)"
reset_pipeline

step "4. latency: generator at 1000 and at 100 orders/s, $LATENCY_S s each"
latency_run latency 1000 "$LATENCY_S"
latency_run latency_100 100 "$LATENCY_S"

step "7. bulk: $N_BULK orders in one transaction, place_orders() and place_order(), $RUNS round(s)"
for ((r = 1; r <= RUNS; r++)); do
	bulk_once orders "$r" "$N_BULK"
	bulk_once order "$r" "$N_BULK"
done

step "8. many clients: pgbench -c 16 -j 2 -T $MC_S, place_order() and the bare CTE, $RUNS round(s)"
for ((r = 1; r <= RUNS; r++)); do
	mc_once place_order "$r"
	mc_once bare "$r"
done
pg -c "TRUNCATE public.bare_orders, public.bare_events, public.bare_outbox" >/dev/null

step "5. metrics() cost with 1k and with $N_BIG processed orders"
pg -c "SELECT ordflow.truncate()" >/dev/null
pg -c "SELECT count(ordflow.place_order(NULL, NULL, 'ABC', 1 + i % 10)) FROM generate_series(1, 1000) i" >/dev/null
pg -c "SELECT public.bench_wait_processed(1000, 120)" >/dev/null || die "1000 orders were not processed"
read -r MED P90 < <(pg -F ' ' -c "SELECT * FROM public.bench_metrics_cost(100)")
record metrics_cost 1k median_ms "$MED" ms
record metrics_cost 1k p90_ms "$P90" ms
# 1M processed orders written directly (the pipeline would take minutes):
# orders rows as the consumer writes them, plus the matching metrics rows,
# spread over 7 days of minutes as continuous load would leave them.
pg >/dev/null <<-EOF || die "filling $N_BIG processed orders failed"
	INSERT INTO ordflow.orders (uid, symbol, quantity, status, execution_price,
	                            created_at, processed_at, source)
	SELECT NULL, 'ABC', 1 + i % 10, 'completed', 1.5 * (1 + i % 10),
	       now() - interval '7 days' + i * interval '600 ms',
	       now() - interval '7 days' + i * interval '600 ms' + interval '2 ms', 'sql'
	  FROM generate_series(1, $N_BIG) AS i;
	UPDATE ordflow.metrics_totals
	   SET processed = processed + $N_BIG, completed = completed + $N_BIG,
	       sum_price = sum_price + (SELECT sum(1.5 * (1 + i % 10)) FROM generate_series(1, $N_BIG) i),
	       latency_hist[1 + 1 + floor(8 * log(2, 2 / 0.01))::int] =
	         latency_hist[1 + 1 + floor(8 * log(2, 2 / 0.01))::int] + $N_BIG
	 WHERE worker = 0;
	INSERT INTO ordflow.metrics_minute (minute, worker, processed, completed, declined, sum_price, latency_hist)
	SELECT date_trunc('minute', now()) - g * interval '1 minute', 0, 100, 100, 0, 825,
	       array_fill(0::bigint, ARRAY[256])
	  FROM generate_series(3, 7 * 24 * 60) AS g
	ON CONFLICT DO NOTHING;
	VACUUM ANALYZE ordflow.orders, ordflow.metrics_totals, ordflow.metrics_minute;
EOF
CHECK=$(pg -c "SELECT (SELECT orders_processed FROM ordflow.metrics()) =
                      (SELECT count(*) FROM ordflow.orders WHERE processed_at IS NOT NULL)")
[ "$CHECK" = t ] || say "  warning: metrics() does not match the orders table after the fill"
read -r MED P90 < <(pg -F ' ' -c "SELECT * FROM public.bench_metrics_cost(100)")
record metrics_cost 1M median_ms "$MED" ms
record metrics_cost 1M p90_ms "$P90" ms
T_END=$(date +%s)

# ---------------------------------------------------------------------------
# summary

for t in raw_pipe:msgs_per_s raw_pipe:cpu_us_per_msg raw_pipe:cpu_rabbitmq_us_per_msg \
	drain_1c:orders_per_s drain_1c_users:orders_per_s drain_2c:orders_per_s \
	naive_batch1:orders_per_s naive_batch1_relay1:orders_per_s \
	drain_1c:cpu_relay drain_1c:cpu_consumer_0 drain_1c:cpu_rabbitmq drain_1c:cpu_other_postgres \
	drain_1c:cpu_us_per_order drain_1c_users:cpu_us_per_order drain_2c:cpu_us_per_order \
	drain_2c:cpu_consumer_0 drain_2c:cpu_consumer_1 drain_2c:cpu_rabbitmq drain_2c:cpu_relay \
	bulk_place_orders:orders_per_s bulk_place_orders:place_per_s bulk_place_order:orders_per_s \
	bulk_place_order:place_per_s bulk_place_orders:cpu_us_per_order \
	mc_place_order:tps mc_place_order:orders_per_s mc_bare:tps; do
	v=$(median "${t%%:*}" "${t#*:}")
	[ -n "$v" ] && record "${t%%:*}" median "${t#*:}" "$v" "$(awk -F, -v t="${t%%:*}" -v m="${t#*:}" '$2 == t && $4 == m { print $6; exit }' "$WORK/results.tmp")"
done

RAW=$(median raw_pipe msgs_per_s)
D1=$(median drain_1c orders_per_s)
D1U=$(median drain_1c_users orders_per_s)
D2=$(median drain_2c orders_per_s)
NAIVE=$(median naive_batch1 orders_per_s)
NAIVE_R=$(median naive_batch1_relay1 orders_per_s)
S_MADE=$(median sustained made_per_s)
S_PROC=$(median sustained processed_per_s)
S_GROW=$(median sustained backlog_growth_per_s_2nd_half)
S_BACK=$(median sustained backlog_end)
L_MP99=$(median latency metrics_p99_ms)
L_MMAX=$(median latency metrics_max_bucket_upper_ms)
L_TP50=$(median latency table_p50_ms)
L_TP99=$(median latency table_p99_ms)
L_TMAX=$(median latency table_max_ms)
L_RATE=$(median latency rate)
L1_TP50=$(median latency_100 table_p50_ms)
L1_TP99=$(median latency_100 table_p99_ms)
L1_MP99=$(median latency_100 metrics_p99_ms)
L1_TMAX=$(median latency_100 table_max_ms)
L1_RATE=$(median latency_100 rate)
M1K=$(awk -F, '$2 == "metrics_cost" && $3 == "1k" && $4 == "median_ms" { print $5 }' "$WORK/results.tmp")
M1M=$(awk -F, '$2 == "metrics_cost" && $3 == "1M" && $4 == "median_ms" { print $5 }' "$WORK/results.tmp")
B_OS=$(median bulk_place_orders orders_per_s)
B_OSP=$(median bulk_place_orders place_per_s)
B_O=$(median bulk_place_order orders_per_s)
B_OP=$(median bulk_place_order place_per_s)
MC_P=$(median mc_place_order tps)
MC_PE=$(median mc_place_order orders_per_s)
MC_PD=$(median mc_place_order drain_after_s)
MC_B=$(median mc_bare tps)
CPU_RAW=$(median raw_pipe cpu_us_per_msg)
CPU_RAW_MQ=$(median raw_pipe cpu_rabbitmq_us_per_msg)
CPU_D1=$(median drain_1c cpu_us_per_order)
CPU_D1U=$(median drain_1c_users cpu_us_per_order)
CPU_D2=$(median drain_2c cpu_us_per_order)
CPU_B=$(median bulk_place_orders cpu_us_per_order)

# TEST/raw_pipe round by round (the two ran back to back), then the median:
# steadier than a ratio of medians when the machine's load drifts
# (paired_ratio TEST REF: against REF's orders/s instead)
paired_ratio()
{
	awk -F, -v t="$1" -v ref="${2:-}" '$3 != "median" && ref == "" && $2 == "raw_pipe" && $4 == "msgs_per_s" { raw[$3] = $5 }
		$3 != "median" && ref != "" && $2 == ref && $4 == "orders_per_s" { raw[$3] = $5 }
		$3 != "median" && $2 == t && $4 == "orders_per_s" { v[$3] = $5 }
		END { for (r in v) if (raw[r] > 0) printf "%.4f\n", v[r] / raw[r] }' "$WORK/results.tmp" |
		sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) printf "%.2f\n", a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
P21=$(paired_ratio drain_1c)
P2U1=$(paired_ratio drain_1c_users)
P2C2=$(paired_ratio drain_2c drain_1c)
R21=$(ratio "$D1" "$RAW")
R2U1=$(ratio "$D1U" "$RAW")
R2C1=$(ratio "$D2" "$RAW")
R2C2=$(ratio "$D2" "$D1")
R31=$(ratio "$S_PROC" "$RAW")
R62=$(ratio "$NAIVE" "$D1")
R26=$(ratio "$D1" "$NAIVE")
RM=$(ratio "$M1M" "$M1K")
RB=$(ratio "$B_OS" "$RAW")
RBO=$(ratio "$B_O" "$RAW")
RMC=$(ratio "$MC_PE" "$MC_B")
RMCT=$(ratio "$MC_P" "$MC_B")
RCPU=$(ratio "$CPU_D1" "$CPU_RAW")
S_BOUNDED=$(awk -v g="$S_GROW" -v p="$S_PROC" 'BEGIN { print (g != "" && p != "" && g <= 0.05 * p) ? "yes" : "no" }')

record ratio median drain_over_raw "$R21" x
record ratio paired_median drain_over_raw "$P21" x
record ratio paired_median drain_users_over_raw "$P2U1" x
record ratio median drain_users_over_raw "$R2U1" x
record ratio median drain_2c_over_raw "$R2C1" x
record ratio median drain_2c_over_1c "$R2C2" x
record ratio paired_median drain_2c_over_1c "$P2C2" x
record ratio median sustained_processed_over_raw "$R31" x
record ratio median naive_over_drain "$R62" x
record ratio median metrics_1M_over_1k "$RM" x
record ratio median bulk_place_orders_over_raw "$RB" x
record ratio median bulk_place_order_over_raw "$RBO" x
record ratio median many_clients_over_bare "$RMC" x
record ratio median many_clients_tps_over_bare "$RMCT" x
record ratio median cpu_per_order_over_raw_per_msg "$RCPU" x

{
	echo "run_id,test,round,metric,value,unit"
	cat "$WORK/results.tmp"
} > "$RESULTS"

# the PNGs of this run (bench/plot.sh redraws them from the CSVs); a plot
# that fails costs the pictures, not the run
# shellcheck source=plot.sh
. "$ROOT/bench/plot.sh"
bench_plot "$OUT" || say "warning: drawing the plots failed (bench/plot.sh $OUT redraws them)"

verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (v == "" || v == "-") { print "n/a"; exit }
	ok = (op == ">=") ? (v + 0 >= t + 0) : (op == "<") ? (v + 0 < t + 0) : (v + 0 <= t + 0); print ok ? "met" : "MISSED" }'; }
row() { printf '  %-4s %-46s %14s   %s\n' "$1" "$2" "$3" "$4"; }
tgt() { printf '  %-50s %6s  %-9s %s\n' "$1" "$2" "$3" "$(verdict "$2" "$4" "$5")${6:+ $6}"; }

cat <<EOF

ordflow benchmark, $RUN_ID, $(nproc) cores, medians of $RUNS round(s)$([ -n "$QUICK" ] && echo ", --quick")
commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo " (+ uncommitted changes)"); run took $((T_END - T_BEGIN)) s of measuring; synchronous_commit = on

$(row '#' measure value unit)
$(row 1 "raw broker pipe ($N_RAW msgs)" "$(fmt "$RAW")" msg/s)
$(row 2 "drain, 1 consumer ($N_DRAIN orders)" "$(fmt "$D1")" orders/s)
$(row 2u "drain, 1 consumer, users' orders" "$(fmt "$D1U")" orders/s)
$(row 2c "drain, 2 consumers" "$(fmt "$D2")" orders/s)
$(row 3 "sustained ($SUSTAIN_S s): made / processed" "$(fmt "$S_MADE") / $(fmt "$S_PROC")" orders/s)
$(row 3 "sustained: backlog growth (2nd half) / end" "$(fmt "$S_GROW") / $(fmt "$S_BACK")" "orders/s, orders")
$(row 4 "latency at $(fmt "$L_RATE")/s: p50 / p99 (recomputed)" "$(fmt "$L_TP50" 1) / $(fmt "$L_TP99" 1)" ms)
$(row 4 "  p99 metrics() / max (recomputed)" "$(fmt "$L_MP99" 1) / $(fmt "$L_TMAX" 1)" ms)
$(row 4 "  max: top histogram bucket" "$(fmt "$L_MMAX" 1)" ms)
$(row 4b "latency at $(fmt "$L1_RATE")/s: p50 / p99 (recomputed)" "$(fmt "$L1_TP50" 1) / $(fmt "$L1_TP99" 1)" ms)
$(row 4b "  p99 metrics() / max (recomputed)" "$(fmt "$L1_MP99" 1) / $(fmt "$L1_TMAX" 1)" ms)
$(row 5 "metrics() median, 1k / 1M processed" "$(fmt "$M1K" 3) / $(fmt "$M1M" 3)" ms)
$(row 6 "naive: batch_size 1 / + relay_batch_size 1" "$(fmt "$NAIVE") / $(fmt "$NAIVE_R")" orders/s)
$(row 7 "bulk place_orders(): whole job / placement" "$(fmt "$B_OS") / $(fmt "$B_OSP")" orders/s)
$(row 7 "bulk place_order(): whole job / placement" "$(fmt "$B_O") / $(fmt "$B_OP")" orders/s)
$(row 8 "pgbench place_order(): tps / all processed" "$(fmt "$MC_P") / $(fmt "$MC_PE")" "tx/s, orders/s")
$(row 8 "  last order processed after pgbench ended" "$(fmt "$MC_PD" 2)" s)
$(row 8 "pgbench bare CTE (plain tables)" "$(fmt "$MC_B")" tx/s)
$(row cpu "raw pipe per message (broker alone)" "$(fmt "$CPU_RAW" 1) ($(fmt "$CPU_RAW_MQ" 1))" "us CPU")
$(row cpu "drain per order: 1c / users / 2c" "$(fmt "$CPU_D1" 1) / $(fmt "$CPU_D1U" 1) / $(fmt "$CPU_D2" 1)" "us CPU")
$(row cpu "bulk place_orders() per order (whole job)" "$(fmt "$CPU_B" 1)" "us CPU")

targets (same run)                                  value  target
$(tgt "2/1  drain / raw pipe" "$R21" ">= 0.75" ">=" 0.75 "(per round: $P21)")
$(tgt "2u/1 drain with credit checks / raw pipe" "$R2U1" ">= 0.65" ">=" 0.65 "(per round: $P2U1)")
$(tgt "2c/2 2 consumers / 1 consumer" "$R2C2" ">= 1" ">=" 1 "(per round: $P2C2)")
$(tgt "3/1  sustained processed / raw pipe" "$R31" ">= 0.6" ">=" 0.6 "(backlog bounded: $S_BOUNDED)")
$(tgt "7/1  bulk place_orders(), whole job / raw pipe" "$RB" ">= 0.6" ">=" 0.6 "(place_order(): $RBO)")
$(tgt "7    place_orders() placement (orders/s)" "$(fmt "$B_OSP")" ">= 60000" ">=" 60000)
$(tgt "8    many clients, all processed / bare CTE" "$RMC" ">= 0.8" ">=" 0.8 "(pgbench tps alone: $RMCT)")
$(tgt "4    p99 at 1000/s, ms (recomputed)" "$(fmt "$L_TP99" 1)" "<= 15" "<=" 15 "(metrics(): $(fmt "$L_MP99" 1))")
$(tgt "5    metrics() at 1M, ms" "$(fmt "$M1M" 3)" "< 1" "<" 1 "(1k: $(fmt "$M1K" 3))")
$(tgt "6/2  naive / drain" "$R62" "<= 0.1" "<=" 0.1 "(drain is ${R26}x naive)")
  CPU per order (1c drain) / raw pipe's per message    $(printf '%6s' "$RCPU")  (reported)

CPU during the drains (share of one core, median):
  1 consumer:  relay $(fmt "$(median drain_1c cpu_relay)" 2), consumer $(fmt "$(median drain_1c cpu_consumer_0)" 2), RabbitMQ $(fmt "$(median drain_1c cpu_rabbitmq)" 2), other postgres $(fmt "$(median drain_1c cpu_other_postgres)" 2)
  2 consumers: relay $(fmt "$(median drain_2c cpu_relay)" 2), consumers $(fmt "$(median drain_2c cpu_consumer_0)" 2) + $(fmt "$(median drain_2c cpu_consumer_1)" 2), RabbitMQ $(fmt "$(median drain_2c cpu_rabbitmq)" 2)

figures: $RESULTS (one per line), $OUT/sustained.csv (one line a second)
plots:   $OUT/figures.png, $OUT/sustained.png
EOF
exit 0
