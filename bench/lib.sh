# shellcheck shell=bash
# bench/lib.sh - private servers for the benchmark scripts (sourced, not run).
#
# Source scripts/lib.sh first (mq_env, mqctl, mq_pid, mq_launch and
# pg_launch, shared with scripts/demo.sh, are there).  The caller sets WORK
# (a folder it made with mktemp, mode 755); everything lives under it:
#   bench_build ROOT             copy ROOT to $WORK/src, build as postgres, install
#   mq_setup NODE BASE_PORT      RabbitMQ config under $WORK/rabbitmq; sets MQ_PORT, AMQP_URL
#   mq_start / mq_stop [MODE]    start and wait; stop (MODE term = orderly, kill = kill -9)
#   mqctl ARGS                   rabbitmqctl against that node
#   pg_setup BASE_PORT [CONF]    initdb $WORK/pgdata with ordflow preloaded; sets PG_PORT
#   pg_start / pg_stop, pg ARGS  server control; psql -At on database postgres
#   wait_workers_connected N     until N consumers and the relay are connected
#   bench_stop_servers           stop whatever of the above runs (for an EXIT trap)
# The broker keeps its data folder across mq_stop/mq_start, so a restart is
# a real process restart that finds its durable queues and persistent
# messages again.

MQDIR=$WORK/rabbitmq
PGDATA=$WORK/pgdata
SOCK=$WORK/sock
# shellcheck disable=SC2034  # MQ_NODE and MQ_ENV are read by scripts/lib.sh's mq_*
MQ_PORT='' MQ_EPMD='' PG_PORT='' PG_STARTED='' AMQP_URL='' MQ_NODE=''
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
# (mq_env, mqctl, mq_pid and mq_launch are in scripts/lib.sh)
mq_setup()
{
	# shellcheck disable=SC2034  # read by scripts/lib.sh's mq_env and mqctl
	MQ_NODE=$1
	MQ_PORT=$(free_port "$2" 12) || die "no free ports for RabbitMQ"
	mq_env
	mkdir -p "$MQDIR"/{mnesia,log,home}
	mq_write_conf warning bench/lib.sh
	chown -R postgres: "$MQDIR"
	AMQP_URL="amqp://guest:guest@127.0.0.1:$MQ_PORT/%2f"
}

mq_start() { mq_launch || die "RabbitMQ did not start"; }

# mq_stop [term|kill]: term = SIGTERM, an orderly shutdown (escalates to
# SIGKILL after 60 s); kill = SIGKILL at once.  Returns when the process is gone.
mq_stop()
{
	local mode=${1:-term} pid i
	pid=$(mq_pid)
	[ -n "$pid" ] || return 0
	if [ "$mode" = kill ]; then
		kill -KILL "$pid" 2>/dev/null
	else
		kill -TERM "$pid" 2>/dev/null
	fi
	for ((i = 0; i < 600; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
}

# PostgreSQL 15 as postgres: peer auth over a private socket, no TCP
pg_setup()
{
	PG_PORT=$(free_port "$1") || die "no free port for PostgreSQL"
	mkdir -p "$SOCK"
	chown postgres: "$SOCK"
	as_pg "$PG_BINDIR/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 -A peer \
		>/dev/null || die "initdb failed"
	cat >> "$PGDATA/postgresql.conf" <<-EOF
		# written by bench/lib.sh
		listen_addresses = ''
		port = $PG_PORT
		unix_socket_directories = '$SOCK'
		shared_preload_libraries = 'ordflow'
		ordflow.database = 'postgres'
		ordflow.amqp_url = '$AMQP_URL'
		max_worker_processes = 20
		shared_buffers = 512MB
		max_wal_size = 4GB
		# synchronous_commit = on (the default): kept, the guarantees need it
		log_line_prefix = '%m [%p] %b '
	EOF
	[ -n "${2:-}" ] && printf '%s\n' "$2" >> "$PGDATA/postgresql.conf"
	return 0
}

pg_start()
{
	PG_STARTED=1
	pg_launch "$WORK/postgres.log" || die "PostgreSQL did not start"
}

pg_stop()
{
	[ -f "$PGDATA/postmaster.pid" ] || return 0
	as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
		as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
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

bench_stop_servers()
{
	if [ -n "$PG_STARTED" ]; then
		say "stopping PostgreSQL"
		pg_stop
	fi
	if [ -n "$(mq_pid)" ]; then
		say "stopping RabbitMQ"
		mq_stop term
	fi
	[ -n "$MQ_EPMD" ] && epmd -port "$MQ_EPMD" -kill >/dev/null 2>&1
	return 0
}

# The end of an EXIT trap: stop our servers, keep or remove $WORK (--keep),
# and exit with the status the script had.
bench_finish()
{
	local rc=$1
	bench_stop_servers
	if [ -n "${KEEP:-}" ]; then
		say "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
