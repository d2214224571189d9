#!/usr/bin/env bash
# bench/soak.sh [--minutes N] [--rate R] [options] - ordflow's soak run.
#
# As root on Debian 12: builds and installs the extension from a private
# copy, starts its own RabbitMQ and PostgreSQL 15 (free loopback ports,
# everything under /var/tmp/ordflow-soak.*), creates the extension and
# --users users with large credit limits, runs the generator at
# ordflow.start(R) for N minutes and, at the middle, restarts the broker
# process (stopped, down for --down seconds, started again on the same data
# folder).  Every --interval seconds it samples each ordflow worker's memory
# (VmRSS and RssAnon from /proc/<pid>/status, pids from ordflow.status()),
# the broker's RSS, orders made and processed, the backlog (orders still
# 'initialised'), the outbox and the dead letters.  Then it stops the
# generator, waits for the backlog to drain and checks the outcome:
#   lost     committed orders still 'initialised' after the drain
#   doubled  orders with more than one final event, and users whose balance
#            is not credit_limit - sum(completed execution prices)
#   plus dead letters, broker queues, metrics() against a recompute from
#   the orders table, worker restarts and crash lines in the server log.
# Writes bench/out/soak.csv (the samples), prints a summary and appends it,
# dated, to bench/SOAK.md.  Stops every server it started.  Exits non-zero
# when an order was lost or doubled, the drain timed out, metrics() differs
# from the recompute, the workers did not reconnect, or memory grew.
#
# Options:
#   --minutes N      run length, minutes (default 10; decimals allowed)
#   --rate R         generator rate, orders/s (default 1000)
#   --users N        users created (default 100, credit limit 1e12 each)
#   --consumers N    ordflow.consumers (default 1)
#   --interval S     seconds between samples (default 10)
#   --down S         seconds the broker stays down (default 5)
#   --broker-stop M  term (orderly SIGTERM shutdown, default) or kill (kill -9)
#   --drain-timeout S  give up waiting for the drain after S s (default 300)
#   --no-append      do not append the summary to bench/SOAK.md
#   --keep           keep the work folder (server logs) for a post-mortem
#
# A worker's VmRSS counts the shared buffers it has touched, which grows
# towards shared_buffers for reasons that are not leaks; the flatness verdict
# is therefore made on RssAnon (private memory) after a warm-up of one
# minute (or a fifth of the run if shorter), and both are reported.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

MINUTES=10
RATE=1000
N_USERS=100
CONSUMERS=1
INTERVAL=10
DOWN=5
STOP_MODE=term
DRAIN_TIMEOUT=300
APPEND=1
KEEP=
FLAT_KB=4096			# private-memory growth after warm-up still called flat

num()
{
	if ! [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v v="$2" 'BEGIN { exit !(v > 0) }'; then
		die "$1 needs a positive number, not '$2'"
	fi
}
while [ $# -gt 0 ]; do
	opt=$1
	case $opt in
		--*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; continue ;;
	esac
	case $opt in
		--minutes) MINUTES=${2:-}; num "$opt" "$MINUTES"; shift 2 ;;
		--rate) RATE=${2:-}; num "$opt" "$RATE"; shift 2 ;;
		--users) N_USERS=${2:-}; [[ $N_USERS =~ ^[1-9][0-9]*$ ]] || die "--users needs a whole number"; shift 2 ;;
		--consumers) CONSUMERS=${2:-}; [[ $CONSUMERS =~ ^[1-9][0-9]?$ ]] || die "--consumers needs 1..32"; shift 2 ;;
		--interval) INTERVAL=${2:-}; [[ $INTERVAL =~ ^[1-9][0-9]*$ ]] || die "--interval needs whole seconds"; shift 2 ;;
		--down) DOWN=${2:-}; num "$opt" "$DOWN"; shift 2 ;;
		--broker-stop) STOP_MODE=${2:-}; [[ $STOP_MODE =~ ^(term|kill)$ ]] || die "--broker-stop is term or kill"; shift 2 ;;
		--drain-timeout) DRAIN_TIMEOUT=${2:-}; [[ $DRAIN_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--drain-timeout needs whole seconds"; shift 2 ;;
		--no-append) APPEND=; shift ;;
		--keep) KEEP=1; shift ;;
		-h|--help) usage 0 ;;
		*) say "unknown option: $opt"; usage 1 ;;
	esac
done
DURATION=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 0.5 }')
[ "$DURATION" -ge 20 ] || die "--minutes must give at least 20 s"
MID=$((DURATION / 2))
# warm-up: caches fill during the first minute; growth after it is what counts
WARM=$((DURATION / 5 < 60 ? DURATION / 5 : 60))

require_root
ensure_packages

OUT=$ROOT/bench/out
mkdir -p "$OUT"
CSV=$OUT/soak.csv
WORK=$(mktemp -d /var/tmp/ordflow-soak.XXXXXX) || die "mktemp failed"
chmod 755 "$WORK"
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
RUN_ID=$(date -u +%Y-%m-%dT%H:%M:%SZ)
RESTART_JOB=''

# on exit, before bench/lib.sh stops the servers: a broker restart in
# flight ends within its own timeouts; let it, so the broker it may be
# starting has a pid file and gets stopped too
# shellcheck disable=SC2317  # invoked by the EXIT trap
wait_restart()
{
	if [ -n "$RESTART_JOB" ] && kill -0 "$RESTART_JOB" 2>/dev/null; then
		say "waiting for the broker restart in progress"
		wait "$RESTART_JOB" 2>/dev/null
	fi
	return 0
}
BENCH_EXIT_HOOK=wait_restart
bench_traps

# seconds since T0, one decimal
el() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------
# build, servers, extension, users

step "building ordflow in $WORK/src and installing it"
bench_build "$ROOT"

mq_setup "ordflow_soak_$$@localhost" 18672
step "starting RabbitMQ on 127.0.0.1:$MQ_PORT"
mq_start

pg_setup 18432 "ordflow.consumers = $CONSUMERS"
step "starting PostgreSQL on $SOCK, port $PG_PORT"
pg_start
pg -c "CREATE EXTENSION ordflow" >/dev/null || die "CREATE EXTENSION failed"
pg -c "SELECT count(ordflow.create_user('Soak' || i, 'User' || i, 1e12))
       FROM generate_series(1, $N_USERS) AS i" >/dev/null || die "create_user failed"
wait_workers_connected "$CONSUMERS" || die "the workers did not connect to the broker"

# the workers sampled, in a fixed order: "name pid" lines
pg -F ' ' -c "SELECT replace(worker, ' ', '_'), pid FROM ordflow.status()
              ORDER BY CASE worker WHEN 'supervisor' THEN 0 WHEN 'generator' THEN 1
                                   WHEN 'relay' THEN 2 ELSE 3 END, worker" > "$WORK/workers0"
mapfile -t WORKERS < <(awk '{ print $1 }' "$WORK/workers0")
[ ${#WORKERS[@]} -ge 3 ] || die "ordflow.status() shows only: ${WORKERS[*]}"
say "workers: $(tr '\n' ' ' < "$WORK/workers0")"
# workers that hold a broker connection (relay and consumers)
N_CONN=$(pg -c "SELECT count(*) FROM ordflow.status() WHERE connected")

# ---------------------------------------------------------------------------
# sampling

{
	printf 't_s,phase,made,processed,backlog,outbox,dead_letters,connected,broker_rss_kb'
	for w in "${WORKERS[@]}"; do printf ',%s_pid,%s_rss_kb,%s_anon_kb' "$w" "$w" "$w"; done
	echo
} > "$CSV"

# "VmRSS,RssAnon" in kB of a pid, or "," when it is gone
mem_kb()
{
	local s
	s=$(cat "/proc/$1/status" 2>/dev/null)
	awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } END { print r "," a }' <<< "$s"
}

# sample PHASE: one CSV line
sample()
{
	local t phase=$1 counts line w pid
	t=$(el)
	counts=$(pg -F ',' -c "SELECT o.made, m.orders_processed, o.initialised,
	                             (SELECT count(*) FROM ordflow.outbox),
	                             (SELECT count(*) FROM ordflow.dead_letters),
	                             (SELECT count(*) FROM ordflow.status() WHERE connected)
	                        FROM (SELECT count(*) AS made,
	                                     count(*) FILTER (WHERE status = 'initialised') AS initialised
	                                FROM ordflow.orders) AS o,
	                             ordflow.metrics() AS m" 2>/dev/null) || counts=',,,,,'
	pg -F ' ' -c "SELECT replace(worker, ' ', '_'), pid FROM ordflow.status()" > "$WORK/workers.now" 2>/dev/null
	pid=$(mq_pid)
	line="$t,$phase,$counts,$([ -n "$pid" ] && mem_kb "$pid" | cut -d, -f1)"
	for w in "${WORKERS[@]}"; do
		pid=$(awk -v w="$w" '$1 == w { print $2 }' "$WORK/workers.now")
		if [ -n "$pid" ]; then
			line="$line,$pid,$(mem_kb "$pid")"
		else
			line="$line,,,"
		fi
	done
	echo "$line" >> "$CSV"
	awk -F, -v w="${WORKERS[*]}" 'BEGIN { n = split(w, names, " ") }
		{ printf "  t=%6.1f %-15s made %7s done %7s backlog %6s outbox %6s dead %s conn %s | MB rss/anon", $1, $2, $3, $4, $5, $6, $7, $8
		  for (i = 1; i <= n; i++) printf " %s %.1f/%.1f", names[i], $(10 + 3 * (i - 1) + 1) / 1024, $(10 + 3 * (i - 1) + 2) / 1024
		  print "" }' <<< "$line" >&2
}

# ---------------------------------------------------------------------------
# the broker restart, in the background: times (s since T0) go to
# $WORK/restart.times as "key value" lines, the current phase to restart.state

restart_broker()
{
	trap - EXIT INT TERM
	local i
	rt() { echo "$1 $(el)" >> "$WORK/restart.times"; }
	echo broker_stopping > "$WORK/restart.state"
	rt stop_begin
	echo "outbox_before $(pg -c 'SELECT count(*) FROM ordflow.outbox')" >> "$WORK/restart.times"
	mq_stop "$STOP_MODE"
	rt stopped
	echo broker_down > "$WORK/restart.state"
	# while it is down: when did every worker notice?
	local until_t
	until_t=$(awk -v a="$EPOCHREALTIME" -v d="$DOWN" 'BEGIN { printf "%.3f", a + d }')
	while awk -v a="$EPOCHREALTIME" -v b="$until_t" 'BEGIN { exit !(a < b) }'; do
		if [ ! -f "$WORK/restart.noticed" ] &&
			[ "$(pg -c "SELECT count(*) FROM ordflow.status() WHERE connected" 2>/dev/null)" = 0 ]; then
			touch "$WORK/restart.noticed"
			rt all_disconnected
		fi
		sleep 0.2
	done
	echo "outbox_down_end $(pg -c 'SELECT count(*) FROM ordflow.outbox')" >> "$WORK/restart.times"
	echo broker_starting > "$WORK/restart.state"
	rt start_begin
	( mq_start ) || { rt start_failed; echo run > "$WORK/restart.state"; return 1; }
	rt started
	echo reconnecting > "$WORK/restart.state"
	for ((i = 0; i < 600; i++)); do
		[ "$(pg -c "SELECT count(*) FROM ordflow.status() WHERE connected" 2>/dev/null)" = "$N_CONN" ] && break
		sleep 0.1
	done
	if [ "$i" -lt 600 ]; then rt reconnected; else rt reconnect_timeout; fi
	echo "outbox_reconnected $(pg -c 'SELECT count(*) FROM ordflow.outbox')" >> "$WORK/restart.times"
	echo recovering > "$WORK/restart.state"
	# until the backlog is back under 2 s of orders (at most 120 s): its
	# peak and when it got there, finer than the regular samples
	local ob bl ob_max=0 bl_max=0 lim
	lim=$(awk -v r="$RATE" 'BEGIN { printf "%d", 2 * r }')
	for ((i = 0; i < 240; i++)); do
		IFS='|' read -r ob bl < <(pg -F '|' -c "SELECT (SELECT count(*) FROM ordflow.outbox),
		                 (SELECT count(*) FROM ordflow.orders WHERE status = 'initialised')" 2>/dev/null)
		[ -n "$ob" ] || { sleep 0.5; continue; }
		[ "$ob" -gt "$ob_max" ] && ob_max=$ob
		[ "$bl" -gt "$bl_max" ] && bl_max=$bl
		[ "$bl" -le "$lim" ] && { rt recovered; break; }
		sleep 0.5
	done
	echo "outbox_peak $ob_max" >> "$WORK/restart.times"
	echo "backlog_peak $bl_max" >> "$WORK/restart.times"
	echo run > "$WORK/restart.state"
}

# ---------------------------------------------------------------------------
# the run

step "soak: ordflow.start($RATE) for $DURATION s, broker restart ($STOP_MODE, down ${DOWN} s) at $MID s, a sample every $INTERVAL s"
echo run > "$WORK/restart.state"
: > "$WORK/restart.times"
LOG_OFFSET=$(stat -c %s "$WORK/postgres.log")
pg -c "SELECT ordflow.start($RATE)" >/dev/null || die "ordflow.start failed"
T0=$EPOCHREALTIME
NEXT=0
RESTARTED=
while :; do
	NOW=$(el)
	if [ -z "$RESTARTED" ] && awk -v n="$NOW" -v m="$MID" 'BEGIN { exit !(n >= m) }'; then
		say "  t=$NOW restarting the broker ($STOP_MODE)"
		restart_broker &
		RESTART_JOB=$!
		RESTARTED=1
	fi
	if awk -v n="$NOW" -v x="$NEXT" 'BEGIN { exit !(n >= x) }'; then
		sample "$(cat "$WORK/restart.state")"
		[ "$NEXT" -ge "$DURATION" ] && break
		NEXT=$((NEXT + INTERVAL > DURATION ? DURATION : NEXT + INTERVAL))
	fi
	TARGET=$NEXT
	[ -z "$RESTARTED" ] && [ "$MID" -lt "$TARGET" ] && TARGET=$MID
	sleep "$(awk -v t="$TARGET" -v n="$(el)" 'BEGIN { d = t - n; print (d > 0 ? d : 0) }')"
done
pg -c "SELECT ordflow.stop()" >/dev/null || die "ordflow.stop failed"
T_STOP=$(el)
if [ -n "$RESTART_JOB" ]; then
	wait "$RESTART_JOB"
	RESTART_JOB=''
fi

step "generator stopped at t=$T_STOP; waiting for the backlog to drain"
DRAINED=
LAST_SAMPLE=$T_STOP
while awk -v n="$(el)" -v s="$T_STOP" -v d="$DRAIN_TIMEOUT" 'BEGIN { exit !(n < s + d) }'; do
	if [ "$(pg -c "SELECT (SELECT count(*) FROM ordflow.outbox) = 0 AND
	                      NOT EXISTS (SELECT FROM ordflow.orders WHERE status = 'initialised')")" = t ]; then
		DRAINED=1
		break
	fi
	if awk -v n="$(el)" -v l="$LAST_SAMPLE" -v i="$INTERVAL" 'BEGIN { exit !(n >= l + i) }'; then
		sample drain
		LAST_SAMPLE=$(el)
	fi
	sleep 0.5
done
T_DRAINED=$(el)
sample "$([ -n "$DRAINED" ] && echo drained || echo drain_timeout)"
# Redeliveries of orders already processed may still sit in the broker; wait
# until its orders queue is empty (ready and unacked) so that a late
# duplicate cannot slip in after the checks below.
QUEUES_EMPTY=
for ((i = 0; i < 30; i++)); do
	mqctl -q list_queues name messages messages_unacknowledged > "$WORK/queues" 2>/dev/null
	QUEUES=$(awk '$1 ~ /^ordflow/ { printf "%s%s %s ready + %s unacked", sep, $1, $2, $3; sep = ", " }' "$WORK/queues")
	if [ "$(awk '$1 == "ordflow.orders" { print $2 + $3 }' "$WORK/queues")" = 0 ]; then
		QUEUES_EMPTY=1
		break
	fi
	sleep 1
done

# ---------------------------------------------------------------------------
# the outcome

step "checking every order"
OUTCOME=$(pg -F '|' <<-'EOF'
	WITH ev AS (
		SELECT order_id,
		       count(*) FILTER (WHERE status <> 'initialised') AS nfinal,
		       count(*) FILTER (WHERE status = 'initialised') AS ninit,
		       max(status::text) FILTER (WHERE status <> 'initialised') AS final
		  FROM ordflow.order_events GROUP BY order_id),
	o AS (SELECT o.order_id, o.status, coalesce(ev.nfinal, 0) AS nfinal,
	             coalesce(ev.ninit, 0) AS ninit, ev.final
	        FROM ordflow.orders AS o LEFT JOIN ev USING (order_id)),
	spent AS (SELECT uid, sum(execution_price) AS s FROM ordflow.orders
	           WHERE status = 'completed' GROUP BY uid),
	r AS (SELECT count(*) FILTER (WHERE processed_at IS NOT NULL) AS processed,
	             count(*) FILTER (WHERE status = 'completed') AS completed,
	             count(*) FILTER (WHERE status = 'declined') AS declined,
	             coalesce(sum(execution_price) FILTER (WHERE status = 'completed'), 0) AS total,
	             round(avg(execution_price) FILTER (WHERE status = 'completed'), 9) AS avg,
	             percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at) * 1000) AS p50,
	             percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at) * 1000) AS p99,
	             max(extract(epoch FROM processed_at - created_at) * 1000) AS mx
	        FROM ordflow.orders),
	m AS (SELECT *, round(avg_execution_price, 9) AS avg FROM ordflow.metrics()),
	mm AS (SELECT coalesce(sum(processed), 0) AS processed FROM ordflow.metrics_minute)
	SELECT (SELECT count(*) FROM o),
	       (SELECT count(*) FROM o WHERE status = 'initialised'),
	       (SELECT count(*) FROM o WHERE nfinal > 1),
	       (SELECT count(*) FROM o WHERE status <> 'initialised' AND nfinal = 0),
	       (SELECT count(*) FROM o WHERE ninit <> 1),
	       (SELECT count(*) FROM o WHERE nfinal = 1 AND final <> status::text),
	       (SELECT count(*) FROM ordflow.users AS u LEFT JOIN spent USING (uid)
	         WHERE u.credit_balance <> u.credit_limit - coalesce(spent.s, 0)),
	       (SELECT count(*) FROM ordflow.users WHERE credit_balance < 0),
	       (SELECT count(*) FROM ordflow.dead_letters),
	       m.orders_processed, r.processed, m.orders_completed, r.completed,
	       m.orders_declined, r.declined, m.total_execution_amount, r.total, m.avg, r.avg,
	       round(m.latency_p50_ms::numeric, 2), round(m.latency_p99_ms::numeric, 2),
	       round(r.p50::numeric, 2), round(r.p99::numeric, 2), round(r.mx::numeric, 1),
	       mm.processed,
	       CASE WHEN m.orders_processed = r.processed AND m.orders_completed = r.completed
	                 AND m.orders_declined = r.declined AND m.total_execution_amount = r.total
	                 AND m.avg IS NOT DISTINCT FROM r.avg AND mm.processed = r.processed
	            THEN 'yes' ELSE 'no' END
	  FROM m, r, mm
	EOF
) || die "the outcome query failed"
IFS='|' read -r N_ORDERS LOST DOUBLED_EVENTS NO_FINAL BAD_INIT STATUS_MISMATCH BAL_MISMATCH NEG_BAL DEAD \
	M_PROC R_PROC M_COMP R_COMP M_DECL R_DECL M_SUM R_SUM M_AVG R_AVG M_P50 M_P99 R_P50 R_P99 R_MAX \
	MINUTE_SUM METRICS_OK <<< "$OUTCOME"
[ -n "${METRICS_OK:-}" ] || die "the outcome query answered nothing"
DOUBLED=$((DOUBLED_EVENTS + BAL_MISMATCH))

# the server log of the run: ordflow's lines, errors, crashes
tail -c +$((LOG_OFFSET + 1)) "$WORK/postgres.log" > "$WORK/run.log"
LOG_ORDFLOW=$(grep -c 'ordflow' "$WORK/run.log")
LOG_ERRORS=$(grep -cE '(ERROR|FATAL|PANIC):' "$WORK/run.log")
LOG_CRASHES=$(grep -cE 'terminated by signal|exited with exit code|server process .* was terminated' "$WORK/run.log")
# what the workers logged (the broker restart's lines among them)
grep -E 'ordflow' "$WORK/run.log" | grep -vE 'statement:|duration:' | head -n 40 > "$WORK/run.ordflow.log"

# worker pid changes over the run
RESTARTS=$(awk -F, -v w="${WORKERS[*]}" '
	BEGIN { n = split(w, names, " ") }
	NR > 1 { for (i = 1; i <= n; i++) { p = $(10 + 3 * (i - 1)); if (p != "" && last[i] != "" && p != last[i]) c[i]++; if (p != "") last[i] = p } }
	END { s = ""; for (i = 1; i <= n; i++) if (c[i]) s = s (s ? ", " : "") names[i] " " c[i] "x"; print (s ? s : "none") }' "$CSV")

# ---------------------------------------------------------------------------
# summary

LIM2=$(awk -v r="$RATE" 'BEGIN { printf "%d", 2 * r }')
rt_get() { awk -v k="$1" '$1 == k { print $2; exit }' "$WORK/restart.times"; }
RS_BEGIN=$(rt_get stop_begin) RS_STOPPED=$(rt_get stopped) RS_NOTICED=$(rt_get all_disconnected)
RS_START=$(rt_get start_begin) RS_STARTED=$(rt_get started) RS_RECONN=$(rt_get reconnected)
RS_OB_BEFORE=$(rt_get outbox_before) RS_OB_DOWN=$(rt_get outbox_down_end) RS_OB_RECONN=$(rt_get outbox_reconnected)
d() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "?"; else printf "%.1f", b - a }'; }
if [ -n "$RS_RECONN" ]; then
	RS_RECOVERED=$(rt_get recovered)
	RESTART_LINE="stop began at t=$RS_BEGIN s, process gone after $(d "$RS_BEGIN" "$RS_STOPPED") s; every worker saw the connection down $(
		[ -n "$RS_NOTICED" ] && echo "$(d "$RS_STOPPED" "$RS_NOTICED") s after that" || echo "NOT within the ${DOWN} s down")
  broker down ${DOWN} s, start took $(d "$RS_START" "$RS_STARTED") s; relay and $CONSUMERS consumer(s) reconnected $(d "$RS_STARTED" "$RS_RECONN") s after the broker was up (t=$RS_RECONN s)
  outbox: $RS_OB_BEFORE rows before the stop, $RS_OB_DOWN at the end of the down time, $RS_OB_RECONN at reconnection, peak $(rt_get outbox_peak)
  backlog peak $(rt_get backlog_peak); back under $LIM2 orders (2 s of orders) $(
		[ -n "$RS_RECOVERED" ] && echo "$(d "$RS_RECONN" "$RS_RECOVERED") s after reconnecting (t=$RS_RECOVERED s)" || echo "NOT within 120 s of reconnecting")"
elif [ -n "$(rt_get start_failed)" ]; then
	RESTART_LINE="FAILED: the broker did not start again"
else
	RESTART_LINE="FAILED: the workers did not reconnect within 60 s of the broker's start (t=$RS_STARTED)"
fi

# RSS table: per worker start (first sample), mid (last before the restart),
# end (last sample), max; VmRSS and RssAnon in MB; RssAnon growth after warm-up
RSS_TABLE=$(awk -F, -v w="${WORKERS[*]}" -v mid="$MID" -v warm="$WARM" -v flat="$FLAT_KB" '
	BEGIN { n = split(w, names, " ") }
	NR == 1 { next }
	{
		for (i = 1; i <= n; i++) {
			c = 10 + 3 * (i - 1); r = $(c + 1); a = $(c + 2)
			if (r == "") continue
			if (!(i in r0)) { r0[i] = r; a0[i] = a }
			if ($1 < mid) { rm[i] = r; am[i] = a }
			if ($1 >= warm && !(i in aw)) aw[i] = a
			re[i] = r; ae[i] = a
			if (r > rx[i]) rx[i] = r
			if (a > ax[i]) ax[i] = a
		}
		b = $9; if (b != "") { if (!bs) bs = b; if ($1 < mid) bm = b; be = b; if (b > bx) bx = b }
	}
	END {
		printf "  %-12s %29s   %29s   %s\n", "worker", "VmRSS MB start/mid/end/max", "RssAnon MB start/mid/end/max", "RssAnon growth after warm-up"
		bad = 0
		for (i = 1; i <= n; i++) {
			g = ae[i] - aw[i]
			if (g > flat) bad++
			printf "  %-12s %6.1f %6.1f %6.1f %6.1f     %6.1f %6.1f %6.1f %6.1f     %+d kB\n", names[i],
				r0[i] / 1024, rm[i] / 1024, re[i] / 1024, rx[i] / 1024,
				a0[i] / 1024, am[i] / 1024, ae[i] / 1024, ax[i] / 1024, g
		}
		printf "  %-12s %6.1f %6.1f %6.1f %6.1f     (beam.smp VmRSS; restarted at the middle)\n", "rabbitmq", bs / 1024, bm / 1024, be / 1024, bx / 1024
		print (bad ? "FLAT=no" : "FLAT=yes")
	}' "$CSV")
FLAT=${RSS_TABLE##*FLAT=}
RSS_TABLE=${RSS_TABLE%$'\n'FLAT=*}
# the same over time: VmRSS/RssAnon MB per worker, a line a minute (a line
# a sample on runs under 5 minutes), plus the sample after the drain
SERIES_STEP=$((DURATION >= 300 ? 60 : INTERVAL))
RSS_SERIES=$(awk -F, -v w="${WORKERS[*]}" -v step="$SERIES_STEP" '
	BEGIN { n = split(w, names, " ")
		printf "  %7s", "t (s)"; for (i = 1; i <= n; i++) printf " %14s", names[i]; printf " %9s\n", "rabbitmq" }
	NR == 1 { next }
	{
		k = int($1 / step + 0.5)
		if ($2 !~ /drain/ && (k in seen || ($1 - k * step) > 2 || ($1 - k * step) < -2)) next
		seen[k] = 1
		printf "  %7.0f", $1
		for (i = 1; i <= n; i++) { c = 10 + 3 * (i - 1); printf " %14s", ($(c + 1) == "" ? "-" : sprintf("%.1f/%.1f", $(c + 1) / 1024, $(c + 2) / 1024)) }
		printf " %9s", ($9 == "" ? "down" : sprintf("%.1f", $9 / 1024))
		print ($2 == "run" ? "" : "  " $2)
	}' "$CSV")
IFS='|' read -r MAX_OUTBOX MAX_OUTBOX_T MAX_BACKLOG MAX_BACKLOG_T MADE_END < <(awk -F, '
	NR > 1 && $6 != "" { if ($6 + 0 >= mo) { mo = $6; mot = $1 " s" } if ($5 + 0 >= mb) { mb = $5; mbt = $1 " s" } }
	NR > 1 && $2 !~ /drain/ && $3 != "" { made = $3 }
	END { print mo + 0 "|t=" mot "|" mb + 0 "|t=" mbt "|" made + 0 }' "$CSV")
for k in outbox backlog; do
	v=$(rt_get "${k}_peak")
	if [ -n "$v" ]; then
		if [ "$k" = outbox ] && [ "$v" -gt "$MAX_OUTBOX" ]; then MAX_OUTBOX=$v MAX_OUTBOX_T="just after the broker restart"; fi
		if [ "$k" = backlog ] && [ "$v" -gt "$MAX_BACKLOG" ]; then MAX_BACKLOG=$v MAX_BACKLOG_T="just after the broker restart"; fi
	fi
done
MADE_RATE=$(awk -v m="$MADE_END" -v t="$DURATION" 'BEGIN { printf "%.1f", m / t }')

verdict0() { [ "$1" = 0 ] && echo "$1" || echo "$1 (MUST BE 0)"; }
SUMMARY=$(cat <<-EOF
	ordflow soak, $RUN_ID, $(nproc) cores, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && echo ' + uncommitted changes')
	command: bench/soak.sh --minutes $MINUTES --rate $RATE (users $N_USERS, consumers $CONSUMERS, broker stop: $STOP_MODE, down ${DOWN} s, sample every $INTERVAL s)
	generator: $MADE_END orders in $DURATION s = $MADE_RATE orders/s (asked $RATE/s); stopped at t=$T_STOP s
	drain: $([ -n "$DRAINED" ] && echo "done $(d "$T_STOP" "$T_DRAINED") s after stop()" || echo "TIMED OUT after $DRAIN_TIMEOUT s")

	memory per worker (samples in bench/out/soak.csv; mid = last sample before the broker restart at $MID s;
	warm-up = first $WARM s; flat = RssAnon growth after warm-up <= $FLAT_KB kB):
	$RSS_TABLE
	over time (MB, VmRSS/RssAnon per worker; broker VmRSS):
	$RSS_SERIES
	  RSS flat: $FLAT$( [ "$FLAT" = yes ] && echo " - every worker's private memory stayed flat" )
	  worker restarts (pid changes): $RESTARTS

	outbox max $MAX_OUTBOX rows ($MAX_OUTBOX_T); backlog (orders not yet processed) max $MAX_BACKLOG ($MAX_BACKLOG_T)

	broker restart ($STOP_MODE) at the middle:
	  $RESTART_LINE

	orders: $N_ORDERS committed; lost $(verdict0 "$LOST"); doubled $(verdict0 "$DOUBLED")
	  (more than one final event: $DOUBLED_EVENTS; balance != limit - completed sum: $BAL_MISMATCH users;
	   processed without a final event: $NO_FINAL; not exactly one initialised event: $BAD_INIT;
	   final event disagreeing with the order's status: $STATUS_MISMATCH; negative balances: $NEG_BAL)
	dead letters: $(verdict0 "$DEAD"); broker queues after the drain: ${QUEUES:-?}$([ -z "$QUEUES_EMPTY" ] && echo " (orders queue NOT empty after 30 s)")
	metrics() vs recompute from orders: $([ "$METRICS_OK" = yes ] && echo equal || echo DIFFERENT)
	  processed $M_PROC / $R_PROC, completed $M_COMP / $R_COMP, declined $M_DECL / $R_DECL,
	  total amount $M_SUM / $R_SUM, avg price $M_AVG / $R_AVG, metrics_minute sum $MINUTE_SUM
	  latency p50 $M_P50 / $R_P50 ms, p99 $M_P99 / $R_P99 ms (histogram / exact), max $R_MAX ms
	server log during the run: $LOG_ORDFLOW ordflow lines, $LOG_ERRORS ERROR/FATAL/PANIC, $LOG_CRASHES worker crashes
	EOF
)

printf '\n%s\n' "$SUMMARY"
if [ -s "$WORK/run.ordflow.log" ]; then
	printf '\nordflow lines in the server log (first 40):\n' >&2
	sed 's/^/  /' "$WORK/run.ordflow.log" >&2
fi
if [ -n "$APPEND" ]; then
	# shellcheck disable=SC2016  # backquotes are Markdown
	[ -f "$ROOT/bench/SOAK.md" ] || printf '# ordflow soak runs\n\nAppended by `bench/soak.sh` (see its header for what is measured).\n' > "$ROOT/bench/SOAK.md"
	{
		# shellcheck disable=SC2016
		printf '\n## %s\n\n```\n%s\n```\n' "$RUN_ID" "$SUMMARY"
		if [ -s "$WORK/run.ordflow.log" ]; then
			printf '\nordflow lines in the server log:\n\n```\n'
			cat "$WORK/run.ordflow.log"
			printf '```\n'
		fi
	} >> "$ROOT/bench/SOAK.md"
	say "summary appended to bench/SOAK.md"
fi

# non-zero when the run found a fault
[ "$LOST" = 0 ] && [ "$DOUBLED" = 0 ] && [ -n "$DRAINED" ] && [ "$METRICS_OK" = yes ] &&
	[ -n "$RS_RECONN" ] && [ -n "$QUEUES_EMPTY" ] && [ "$FLAT" = yes ]
