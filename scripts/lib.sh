# shellcheck shell=bash
# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).

# shellcheck disable=SC2034  # used by the scripts that source this
PG_MAJOR=15
PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
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
)

say()  { printf '%s\n' "$*" >&2; }
step() { printf '\n==> %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

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
