# shellcheck shell=bash
# Shared by scripts/demo.sh, scripts/test.sh and bench/*.sh (sourced, not run).

# shellcheck disable=SC2034  # used by the scripts that source this
PG_MAJOR=15
# ORDFLOW_PG_BINDIR points at a relocated copy of the server (developers
# running several suites at once); by default, Debian's.
PG_BINDIR=${ORDFLOW_PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}
# shellcheck disable=SC2034
PG_CONFIG=$PG_BINDIR/pg_config
# shellcheck disable=SC2034
RABBIT_BIN=/usr/lib/rabbitmq/bin

# Everything the build, the demo and the tests need on a fresh Debian 12.
ORDFLOW_PACKAGES=(
	"postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
	librabbitmq-dev rabbitmq-server amqp-tools
	libipc-run-perl perl
	docker-compose
	make gcc libc6-dev rsync
	procps
	# monitoring/ and the plots (t/050_prometheus.pl, scripts/plot.sh,
	# bench/plot.sh); the exporter's system service is kept from starting
	# like the servers' (the test runs its own on a free port)
	prometheus-postgres-exporter gnuplot-nox
)

say()  { printf '%s\n' "$*" >&2; }
step() { printf '\n==> %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

# usage [STATUS]: the running script's header comment (from line 2 to its
# first non-comment line, without the "# "), then exit STATUS (default 0;
# any other status prints to stderr, as for a bad option)
usage()
{
	local rc=${1:-0}
	if [ "$rc" -eq 0 ]; then
		script_header "$0"
	else
		script_header "$0" >&2
	fi
	exit "$rc"
}
script_header() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$1"; }

require_root()
{
	[ "$(id -u)" -eq 0 ] || die "run this as root (it installs packages and runs servers as the postgres user)"
}

# Install whatever of ORDFLOW_PACKAGES is missing; does nothing (no apt-get
# update, no network) when everything is there.
ensure_packages()
{
	local missing=() p st
	for p in "${ORDFLOW_PACKAGES[@]}"; do
		st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		[ "$st" = "install ok installed" ] || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0

	step "installing missing Debian packages: ${missing[*]}"
	# The Debian packages would start a system RabbitMQ and a system
	# PostgreSQL on the default ports; we run private ones, so keep the
	# system services from starting during this install.
	local policy=/usr/sbin/policy-rc.d made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' > "$policy"
		chmod 755 "$policy"
		made_policy=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends "${missing[@]}"
	} || rc=$?
	[ -n "$made_policy" ] && rm -f "$policy"
	[ $rc -eq 0 ] || die "apt-get failed (exit $rc)"
}

# run a command as the postgres user, with the PostgreSQL binaries first in
# PATH, from / (the caller's folder may be closed to postgres, and psql
# would warn about it on every call), in a UTF-8 locale (a fresh machine
# may have no LANG at all, and initdb would then make SQL_ASCII clusters)
as_pg()
{
	(cd / && runuser -u postgres -- env -u LANGUAGE LANG=C.UTF-8 LC_ALL=C.UTF-8 \
		PATH="$PG_BINDIR:/usr/local/bin:/usr/bin:/bin" "$@")
}

# copy a source tree without VCS data, build products or runtime state
copy_tree()
{
	local from=$1 to=$2
	mkdir -p "$to"
	rsync -a --delete \
		--exclude .git --exclude /.run --exclude /build --exclude tmp_check \
		--exclude results --exclude '*.o' --exclude '*.so' --exclude '*.bc' \
		--exclude regression.diffs --exclude regression.out --exclude log/ \
		"$from"/ "$to"/
}

# true if nothing listens on / holds 127.0.0.1:$1 (perl-base has Socket,
# unlike a minimal image that may lack ss or nc)
port_free()
{
	perl -MSocket -e '
		socket(my $s, PF_INET, SOCK_STREAM, 0) or exit 1;
		bind($s, sockaddr_in($ARGV[0], inet_aton("127.0.0.1"))) or exit 1;
		listen($s, 1) or exit 1; exit 0;' "$1"
}

# first free port at or after $1 whose $2 successors (default 0) are free too
free_port()
{
	local p=$1 n=${2:-0} i ok
	while [ "$p" -lt 65000 ]; do
		ok=1
		for ((i = 0; i <= n; i++)); do
			port_free $((p + i)) || { ok=; break; }
		done
		[ -n "$ok" ] && { echo "$p"; return 0; }
		p=$((p + n + 1))
	done
	return 1
}

# true if user postgres can enter directory $1
postgres_can_enter()
{
	(cd / && runuser -u postgres -- test -x "$1") 2>/dev/null
}

# demo_run_dir ROOT: where scripts/demo.sh keeps its servers' state for the
# tree ROOT: ROOT/.run (or what that link points to), or, if the postgres
# user cannot enter ROOT, a folder under /var/tmp named by ROOT's checksum
# (scripts/plot.sh finds the demo's server the same way)
demo_run_dir()
{
	if [ -L "$1/.run" ]; then
		readlink -f "$1/.run"
	elif [ -d "$1/.run" ] || postgres_can_enter "$1"; then
		echo "$1/.run"
	else
		echo "/var/tmp/ordflow-$(printf '%s' "$1" | cksum | cut -d' ' -f1)"
	fi
}

# ---------------------------------------------------------------------------
# A private RabbitMQ, run as postgres with everything under $MQDIR.  The
# caller sets MQDIR, MQ_NODE and MQ_PORT (AMQP; the 12 ports after it are
# the broker's distribution port, epmd and rabbitmqctl's range).

# mq_env: MQ_EPMD, AMQP_URL (guest on loopback) and MQ_ENV, the environment
# of the broker and of every rabbitmqctl call (call again when MQ_PORT changes)
mq_env()
{
	MQ_EPMD=$((MQ_PORT + 2))
	AMQP_URL="amqp://guest:guest@127.0.0.1:$MQ_PORT/%2f"
	MQ_ENV=(
		HOME="$MQDIR/home"
		RABBITMQ_NODENAME="$MQ_NODE"
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$MQ_PORT"
		RABBITMQ_DIST_PORT=$((MQ_PORT + 1))
		RABBITMQ_MNESIA_BASE="$MQDIR/mnesia"
		RABBITMQ_LOG_BASE="$MQDIR/log"
		RABBITMQ_CONFIG_FILE="$MQDIR/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$MQDIR/advanced.config"
		RABBITMQ_ENABLED_PLUGINS_FILE="$MQDIR/enabled_plugins"
		RABBITMQ_PID_FILE="$MQDIR/rabbitmq.pid"
		RABBITMQ_CONF_ENV_FILE=/dev/null
		RABBITMQ_CTL_DIST_PORT_MIN=$((MQ_PORT + 3))
		RABBITMQ_CTL_DIST_PORT_MAX=$((MQ_PORT + 12))
		ERL_EPMD_PORT="$MQ_EPMD"
		ERL_EPMD_ADDRESS=127.0.0.1
		LANG=C.UTF-8
		LC_ALL=C.UTF-8
	)
}

# run as postgres, from /, with the broker's environment
mq_run() { (cd / && runuser -u postgres -- env "${MQ_ENV[@]}" "$@"); }
mqctl() { mq_run "$RABBIT_BIN/rabbitmqctl" -n "$MQ_NODE" "$@"; }

# pid of the running broker (beam) or nothing
mq_pid()
{
	local pid
	[ -f "$MQDIR/rabbitmq.pid" ] || return 0
	pid=$(grep -o '[0-9]*' "$MQDIR/rabbitmq.pid" | head -n1)
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
	return 0
}

# mq_prepare LOG_LEVEL WRITER: $MQDIR with its data, log and home folders,
# rabbitmq.conf (guest on loopback only) and an empty plugin list, all
# owned by postgres; keeps the data of an earlier run
mq_prepare()
{
	mkdir -p "$MQDIR"/{mnesia,log,home} || return 1
	cat > "$MQDIR/rabbitmq.conf" <<-EOF
		# written by $2
		loopback_users.guest = true
		log.file.level = $1
		log.console = false
		disk_free_limit.absolute = 50MB
	EOF
	echo '[].' > "$MQDIR/enabled_plugins"
	chown postgres: "$MQDIR" "$MQDIR"/{mnesia,log,home} \
		"$MQDIR/rabbitmq.conf" "$MQDIR/enabled_plugins"
}

# mq_launch: start the broker in the background and wait until it runs;
# false (after the tail of its output) when it did not start within 90 s
mq_launch()
{
	# a pid file left by kill -9 would make `rabbitmqctl wait` look at a dead pid
	rm -f "$MQDIR/rabbitmq.pid"
	mq_run setsid "$RABBIT_BIN/rabbitmq-server" \
		>> "$MQDIR/log/server.out" 2>&1 < /dev/null &
	mqctl wait "$MQDIR/rabbitmq.pid" --timeout 90 >/dev/null 2>&1 && return 0
	tail -n 40 "$MQDIR/log/server.out" >&2
	return 1
}

# mq_stop [term|kill]: term = SIGTERM, the broker's orderly shutdown
# (escalates to SIGKILL after 60 s); kill = SIGKILL at once.  Returns when
# the process is gone.  epmd stays (mq_down stops it too).
mq_stop()
{
	local pid
	pid=$(mq_pid)
	[ -n "$pid" ] || return 0
	if [ "${1:-term}" = kill ]; then
		kill -KILL "$pid" 2>/dev/null
	else
		kill -TERM "$pid" 2>/dev/null
	fi
	wait_gone "$pid" 600 && return 0
	kill -KILL "$pid" 2>/dev/null
	wait_gone "$pid" 100
}

# wait_gone PID TENTHS: true once process PID is gone, false if it is still
# there after TENTHS tenths of a second
wait_gone()
{
	local i
	for ((i = 0; i < $2; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

# mq_down: stop the broker (orderly) and the epmd it started
mq_down()
{
	mq_stop term
	[ -n "${MQ_EPMD:-}" ] && epmd -port "$MQ_EPMD" -kill >/dev/null 2>&1
	return 0
}

# pg_init INITDB_OPTIONS...: initdb $PGDATA as postgres (superuser
# postgres, UTF-8, C.UTF-8), quietly
pg_init()
{
	as_pg "$PG_BINDIR/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 "$@" >/dev/null
}

# pg_conf WRITER LISTEN: prints the settings of a private ordflow server:
# listen_addresses LISTEN, port $PG_PORT, socket folder $SOCK, ordflow
# preloaded on database postgres with broker $AMQP_URL
pg_conf()
{
	cat <<-EOF
		# written by $1
		listen_addresses = '$2'
		port = $PG_PORT
		unix_socket_directories = '$SOCK'
		shared_preload_libraries = 'ordflow'
		ordflow.database = 'postgres'
		ordflow.amqp_url = '$AMQP_URL'
		log_line_prefix = '%m [%p] %b '
	EOF
}

# pg_launch LOG: start the cluster in $PGDATA, logging to LOG, and wait up
# to 60 s; false (after the tail of LOG) when it did not start
pg_launch()
{
	as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" -l "$1" -w -t 60 start >/dev/null && return 0
	tail -n 30 "$1" >&2
	return 1
}

# pg_running: true if a postmaster runs in $PGDATA
pg_running()
{
	[ -f "$PGDATA/postmaster.pid" ] &&
		as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

# pg_stop: stop the cluster in $PGDATA if it runs (fast shutdown; immediate
# if that has not finished within 30 s)
pg_stop()
{
	pg_running || return 0
	as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t 30 stop >/dev/null && return 0
	say "fast shutdown did not finish in 30 s; stopping immediately"
	as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null
}
