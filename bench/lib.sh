# shellcheck shell=bash
# bench/lib.sh - private servers for the benchmark scripts (sourced, not run).
#
# Source scripts/lib.sh first: the private servers' set-up shared with
# scripts/demo.sh is there (mq_env, mq_prepare, mq_launch, mq_stop [term|kill],
# mq_down, mqctl, mq_pid; pg_init, pg_conf, pg_launch, pg_stop).  The caller
# sets WORK (a folder it made with mktemp, mode 755); everything lives under it:
#   bench_build ROOT             copy ROOT to $WORK/src, build as postgres, install
#   mq_setup NODE BASE_PORT      RabbitMQ config under $WORK/rabbitmq; sets MQ_PORT, AMQP_URL
#   mq_start                     start the broker and wait until it runs
#   pg_setup BASE_PORT [CONF]    initdb $WORK/pgdata with ordflow preloaded; sets PG_PORT
#   pg_start, pg ARGS            start the server; psql -At on database postgres
#   wait_workers_connected N     until N consumers and the relay are connected
#   bench_traps                  on exit: $BENCH_EXIT_HOOK, stop the servers, clean up $WORK
# The broker keeps its data folder across mq_stop/mq_start, so a restart is
# a real process restart that finds its durable queues and persistent
# messages again.

MQDIR=$WORK/rabbitmq
PGDATA=$WORK/pgdata
SOCK=$WORK/sock
# shellcheck disable=SC2034  # MQ_NODE and MQ_ENV are read by scripts/lib.sh's mq_*
MQ_PORT='' MQ_EPMD='' PG_PORT='' PG_STARTED='' AMQP_URL='' MQ_NODE=''
BENCH_EXIT_HOOK=${BENCH_EXIT_HOOK:-}
# shellcheck disable=SC2034
MQ_ENV=()

bench_build()
{
	local root=$1
	copy_tree "$root" "$WORK/src"
	chown -R postgres: "$WORK"
	as_pg make -s -C "$WORK/src" -j2 PG_CONFIG="$PG_CONFIG" >/dev/null || die "build failed"
	make -s -C "$WORK/src" install PG_CONFIG="$PG_CONFIG" >/dev/null || die "make install failed"
}

# RabbitMQ run directly, as postgres, with everything under $MQDIR
mq_setup()
{
	# shellcheck disable=SC2034  # read by scripts/lib.sh's mq_env and mqctl
	MQ_NODE=$1
	# shellcheck disable=SC2034
	MQ_PORT=$(free_port "$2" 12) || die "no free ports for RabbitMQ"
	mq_env
	mq_prepare warning bench/lib.sh || die "cannot prepare $MQDIR"
}

mq_start() { mq_launch || die "RabbitMQ did not start"; }

# PostgreSQL 15 as postgres: peer auth over a private socket, no TCP
pg_setup()
{
	PG_PORT=$(free_port "$1") || die "no free port for PostgreSQL"
	mkdir -p "$SOCK"
	chown postgres: "$SOCK"
	pg_init -A peer || die "initdb failed"
	{
		pg_conf bench/lib.sh ''
		cat <<-EOF
			max_worker_processes = 20
			shared_buffers = 512MB
			max_wal_size = 4GB
			# synchronous_commit = on (the default): kept, the guarantees need it
		EOF
		[ -n "${2:-}" ] && printf '%s\n' "$2"
	} >> "$PGDATA/postgresql.conf"
	return 0
}

pg_start()
{
	PG_STARTED=1
	pg_launch "$WORK/postgres.log" || die "PostgreSQL did not start"
}

pg() { as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PG_PORT" -d postgres -At "$@"; }

# wait_workers_connected N [TRIES of 0.2 s]: N connected consumers and a
# connected relay; false (after printing status()) when they never were
wait_workers_connected()
{
	local want=$1 tries=${2:-300} i
	for ((i = 0; i < tries; i++)); do
		[ "$(pg -c "SELECT count(*) FILTER (WHERE worker LIKE 'consumer%' AND connected)
		                   || ' ' || count(*) FILTER (WHERE worker = 'relay' AND connected)
		              FROM ordflow.status()" 2>/dev/null)" = "$want 1" ] && return 0
		sleep 0.2
	done
	pg -c "SELECT * FROM ordflow.status()" >&2
	return 1
}

# bench_traps: when the script exits (INT and TERM exit with 130), run the
# command in BENCH_EXIT_HOOK if the script set one, stop the servers started
# here, keep or remove $WORK (--keep), and exit with the script's status
bench_traps()
{
	trap bench_finish EXIT
	trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
bench_finish()
{
	local rc=$?
	trap - EXIT INT TERM
	[ -n "$BENCH_EXIT_HOOK" ] && "$BENCH_EXIT_HOOK"
	if [ -n "$PG_STARTED" ]; then
		say "stopping PostgreSQL"
		pg_stop
	fi
	[ -n "$(mq_pid)" ] && say "stopping RabbitMQ"
	mq_down
	if [ -n "${KEEP:-}" ]; then
		say "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
