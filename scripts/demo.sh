#!/usr/bin/env bash
# scripts/demo.sh - bring ordflow up on this machine and watch it work.
#
#   scripts/demo.sh [--rate R] [--duration SECONDS] [--users N] [--consumers N] [--stop]
#   scripts/demo.sh --down
#   scripts/demo.sh --rabbitmqctl ARGS...   (e.g. list_queues name messages)
#
# As root on Debian 12: installs missing packages, builds and installs the
# extension (in build/), starts a private RabbitMQ and a private PostgreSQL
# 15 cluster on loopback ports (state under .run/), creates the extension
# and some users, starts the order generator at R orders/s and prints one
# progress line a second until Ctrl-C or --duration.  Then it leaves
# everything running and prints how to connect, or with --stop stops the
# generator and both servers.  Running it again reuses running servers.
# --down stops both servers (the data stays in .run/ for next time).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

RATE=100
DURATION=0
USERS=20
CONSUMERS=
STOP=
DOWN=
CTL=

while [ $# -gt 0 ]; do
	case $1 in
		--*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;	# --opt=V as --opt V
		--rate) RATE=${2:?--rate needs a value}; shift 2 ;;
		--duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
		--users) USERS=${2:?--users needs a value}; shift 2 ;;
		--consumers) CONSUMERS=${2:?--consumers needs a value}; shift 2 ;;
		--stop) STOP=1; shift ;;
		--down) DOWN=1; shift ;;
		--rabbitmqctl) CTL=1; shift; break ;;
		-h|--help) usage 0 ;;
		*) say "unknown option: $1"; usage 1 ;;
	esac
done
[[ $RATE =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate must be a number of orders per second"
[[ $DURATION =~ ^[0-9]+$ ]] || die "--duration must be whole seconds"
[[ $USERS =~ ^[0-9]+$ ]] || die "--users must be a whole number"
[ -z "$CONSUMERS" ] || [[ $CONSUMERS =~ ^[0-9]+$ ]] || die "--consumers must be a whole number"

require_root

# ---------------------------------------------------------------------------
# where state lives: .run/ in the project, or (if the postgres user cannot
# enter the project folder) a folder under /var/tmp that .run points to

HASH=$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
RUN=$(demo_run_dir "$ROOT")
PGDATA=$RUN/pgdata
SOCK=$RUN/sock
MQDIR=$RUN/rabbitmq
PORTS=$RUN/ports.env
MQ_NODE=ordflow_demo_$HASH@localhost

PG_PORT='' MQ_PORT=''
# shellcheck disable=SC1090
[ -f "$PORTS" ] && . "$PORTS"
# mq_env, mqctl, mq_pid, mq_prepare, mq_launch, mq_down, pg_running,
# pg_init, pg_conf, pg_launch, pg_stop: scripts/lib.sh
[ -n "$MQ_PORT" ] && mq_env

mq_running()
{
	[ -n "$MQ_PORT" ] && [ -n "$(mq_pid)" ] || return 1
	mqctl -q status >/dev/null 2>&1
}

pgsql()
{
	as_pg env PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PG_PORT" -U postgres -d postgres "$@"
}

save_ports()
{
	printf 'PG_PORT=%s\nMQ_PORT=%s\n' "$PG_PORT" "$MQ_PORT" > "$PORTS"
}

stop_rabbitmq()
{
	mq_running && say "stopping RabbitMQ ($MQ_NODE, port $MQ_PORT)"
	mq_down
}

stop_postgres()
{
	pg_running && say "stopping PostgreSQL (port $PG_PORT)"
	pg_stop
}

if [ -n "$CTL" ]; then
	mq_running || die "the demo's RabbitMQ is not running"
	mqctl "$@"
	exit $?
fi

if [ -n "$DOWN" ]; then
	[ -d "$RUN" ] || { say "nothing to stop: $RUN does not exist"; exit 0; }
	stop_postgres
	stop_rabbitmq
	say "both servers are stopped; data kept in $RUN"
	exit 0
fi

# ---------------------------------------------------------------------------
# packages, build, install

ensure_packages

step "building ordflow in build/ and installing it"
BUILD=$ROOT/build/src
copy_tree "$ROOT" "$BUILD" || die "copying the source to $BUILD failed"
make -s -C "$BUILD" -j2 PG_CONFIG="$PG_CONFIG" || die "build failed"
# install only when the module changed: a running server keeps its copy
# mapped, and an unchanged install would only churn files
PKGLIB=$("$PG_CONFIG" --pkglibdir)
SHAREDIR=$("$PG_CONFIG" --sharedir)
if ! cmp -s "$BUILD/ordflow.so" "$PKGLIB/ordflow.so" ||
	! cmp -s "$BUILD/ordflow.control" "$SHAREDIR/extension/ordflow.control" ||
	! cmp -s "$BUILD/ordflow--1.0.sql" "$SHAREDIR/extension/ordflow--1.0.sql"; then
	make -s -C "$BUILD" install PG_CONFIG="$PG_CONFIG" >/dev/null || die "make install failed"
	say "installed into $PKGLIB"
	MODULE_CHANGED=1
else
	say "already installed and up to date"
	MODULE_CHANGED=
fi

# ---------------------------------------------------------------------------
# state folder

if [ "$RUN" != "$ROOT/.run" ] && [ ! -e "$ROOT/.run" ]; then
	ln -s "$RUN" "$ROOT/.run"
	say "the postgres user cannot enter $ROOT, so the servers' data live in $RUN (.run points there)"
fi
mkdir -p "$RUN" "$SOCK"
chown postgres: "$RUN" "$SOCK"
chmod 700 "$SOCK"

# ---------------------------------------------------------------------------
# RabbitMQ

if mq_running; then
	say "RabbitMQ already running on 127.0.0.1:$MQ_PORT (reused)"
else
	step "starting RabbitMQ"
	if [ -z "$MQ_PORT" ] || ! free_port "$MQ_PORT" 12 >/dev/null ||
		[ "$(free_port "$MQ_PORT" 12)" != "$MQ_PORT" ]; then
		MQ_PORT=$(free_port 16672 12) || die "no free ports for RabbitMQ"
	fi
	mq_env
	save_ports
	mq_prepare info scripts/demo.sh || die "cannot prepare $MQDIR"
	mq_launch || die "RabbitMQ did not start (log: $MQDIR/log/)"
	say "RabbitMQ $MQ_NODE ready on 127.0.0.1:$MQ_PORT (log: $MQDIR/log/)"
fi

# ---------------------------------------------------------------------------
# PostgreSQL

write_pg_conf()
{
	{
		pg_conf "scripts/demo.sh on every start; ALTER SYSTEM overrides it" 127.0.0.1
		echo "max_worker_processes = 16"
		[ -n "$CONSUMERS" ] && echo "ordflow.consumers = $CONSUMERS"
	} > "$PGDATA/ordflow-demo.conf"
	chown postgres: "$PGDATA/ordflow-demo.conf"
}

if [ ! -f "$PGDATA/PG_VERSION" ]; then
	step "creating the PostgreSQL cluster in $PGDATA"
	PGPASS_VALUE=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
	umask 077
	printf '%s\n' "$PGPASS_VALUE" > "$RUN/pwfile"
	chown postgres: "$RUN/pwfile"
	pg_init --auth-local=peer --auth-host=scram-sha-256 --pwfile="$RUN/pwfile" ||
		die "initdb failed"
	rm -f "$RUN/pwfile"
	umask 022
	# for the psql line we print (only root can read it)
	printf '127.0.0.1:*:*:postgres:%s\n' "$PGPASS_VALUE" > "$RUN/pgpass"
	chmod 600 "$RUN/pgpass"
	echo "include_if_exists = 'ordflow-demo.conf'" >> "$PGDATA/postgresql.conf"
fi

# a running postmaster may still be starting or recovering from a crash
wait_pg_ready()
{
	local i
	for ((i = 0; i < 120; i++)); do
		as_pg pg_isready -q -h "$SOCK" -p "$PG_PORT" -d postgres && return 0
		sleep 0.5
	done
	tail -n 30 "$RUN/postgres.log" >&2
	die "PostgreSQL does not accept connections (log: $RUN/postgres.log)"
}

if pg_running; then
	say "PostgreSQL already running on 127.0.0.1:$PG_PORT (reused)"
	wait_pg_ready
	# the broker may have moved to another port
	CUR_URL=$(pgsql -Atc "SELECT setting FROM pg_settings WHERE name = 'ordflow.amqp_url'") ||
		die "cannot query the running server"
	if [ "$CUR_URL" != "$AMQP_URL" ]; then
		write_pg_conf
		pgsql -c 'SELECT pg_reload_conf()' >/dev/null
		say "pointed ordflow.amqp_url at the broker (reload)"
	fi
	[ -n "$MODULE_CHANGED" ] && say "note: the module was reinstalled; run --down and again to load it"
else
	step "starting PostgreSQL"
	if [ -z "$PG_PORT" ] || [ "$(free_port "$PG_PORT")" != "$PG_PORT" ]; then
		PG_PORT=$(free_port 16432) || die "no free port for PostgreSQL"
	fi
	save_ports
	write_pg_conf
	pg_launch "$RUN/postgres.log" || die "PostgreSQL did not start (log: $RUN/postgres.log)"
	wait_pg_ready
	say "PostgreSQL ready on 127.0.0.1:$PG_PORT (log: $RUN/postgres.log)"
fi

# ---------------------------------------------------------------------------
# extension, users, generator

step "creating the extension, $USERS users, starting the generator at $RATE orders/s"
pgsql -c 'CREATE EXTENSION IF NOT EXISTS ordflow' || die "CREATE EXTENSION failed"
NUSERS=$(pgsql -Atc 'SELECT count(*) FROM ordflow.users') || die "cannot read ordflow.users"
if [ "$NUSERS" -lt "$USERS" ]; then
	pgsql -c "SELECT ordflow.create_user('Demo' || i, 'User' || i, (1000 + 100 * (i % 50))::numeric)
	          FROM generate_series($NUSERS + 1, $USERS) AS i" >/dev/null || die "create_user failed"
fi
pgsql -Atc "SELECT ordflow.start($RATE)" >/dev/null || die "ordflow.start($RATE) failed"

PSQL_LINE="PGPASSFILE=$RUN/pgpass psql -h 127.0.0.1 -p $PG_PORT -U postgres postgres"

# ---------------------------------------------------------------------------
# progress

INTERRUPTED=
trap 'INTERRUPTED=1' INT TERM

printf '\n%-8s %9s %10s %10s %9s %6s %10s %9s\n' \
	time 'orders/s' processed completed declined dead 'avg price' 'p99 ms'
STATS_SQL="SELECT to_char(now(), 'HH24:MI:SS'), m.orders_processed, m.orders_completed,
	m.orders_declined, (SELECT count(*) FROM ordflow.dead_letters),
	coalesce(round(m.avg_execution_price, 2)::text, '-'),
	coalesce(round(m.latency_p99_ms::numeric, 1)::text, '-'),
	extract(epoch FROM clock_timestamp())
	FROM ordflow.metrics() m"
START=$(date +%s)
PREV_N='' PREV_T=''
LAST_ERR=
while [ -z "$INTERRUPTED" ]; do
	if OUT=$(pgsql -AtF ' ' -c "$STATS_SQL" 2>&1); then
		read -r T N C D DL AVG P99 EPOCH <<< "$OUT"
		if [ -n "$PREV_N" ]; then
			RATE_NOW=$(awk -v a="$N" -v b="$PREV_N" -v t="$EPOCH" -v u="$PREV_T" \
				'BEGIN { d = t - u; r = (d > 0) ? (a - b) / d : 0; printf "%.1f", r }')
		else
			RATE_NOW=-
		fi
		PREV_N=$N PREV_T=$EPOCH
		printf '%-8s %9s %10s %10s %9s %6s %10s %9s\n' "$T" "$RATE_NOW" "$N" "$C" "$D" "$DL" "$AVG" "$P99"
		LAST_ERR=
	elif [ "$OUT" != "$LAST_ERR" ]; then
		say "metrics query failed: $OUT"
		LAST_ERR=$OUT
	fi
	if [ "$DURATION" -gt 0 ] && [ $(( $(date +%s) - START )) -ge "$DURATION" ]; then
		break
	fi
	sleep 1 &
	wait $! 2>/dev/null
done
trap - INT TERM
echo

if [ -n "$STOP" ]; then
	step "stopping"
	pgsql -Atc 'SELECT ordflow.stop()' >/dev/null && say "generator stopped"
	stop_postgres
	stop_rabbitmq
	say "both servers are stopped; data kept in $RUN (scripts/demo.sh starts them again)"
else
	cat <<-EOF
	ordflow keeps running (the generator makes $RATE orders/s; SELECT ordflow.stop() pauses it).
	  connect:   $PSQL_LINE
	  or:        runuser -u postgres -- psql -h $SOCK -p $PG_PORT postgres
	  try:       SELECT * FROM ordflow.metrics();  SELECT * FROM ordflow.status();
	  broker:    $AMQP_URL
	  queues:    scripts/demo.sh --rabbitmqctl list_queues name messages consumers
	  logs:      $RUN/postgres.log  $MQDIR/log/
	  stop all:  scripts/demo.sh --down
	EOF
fi
