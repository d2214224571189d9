#!/usr/bin/env bash
# scripts/plot.sh [--dsn DSN] [--since INTERVAL] [--output FILE] [--size WxH] [--title TEXT]
#
# Draws ordflow.metrics_history() of a running system into a PNG with
# gnuplot (Debian gnuplot-nox): orders processed per minute (completed and
# declined), and per minute the p99 latency and the average execution
# price.  The x axis spans the whole window asked for, in UTC.
#
#   --dsn DSN        libpq connection string or URI, used as given by the
#                    current user (PGPASSWORD, PGPASSFILE, ~/.pgpass work).
#                    Without it: the server of scripts/demo.sh, as user
#                    postgres over its socket (run as root or postgres).
#   --since INTERVAL the window, as metrics_history(since) takes it
#                    (default '1 hour')
#   --output FILE    the PNG to write (default ordflow-metrics.png)
#   --size WxH       in pixels (default 1000x700)
#   --title TEXT     the title (default: "ordflow, last <INTERVAL>")
#
# Exit status: 0 when FILE was written; 1 for a bad argument or a failed
# query; 2 when the window holds no processed order (nothing is written);
# otherwise gnuplot's own exit status (FILE is then left as it was).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

DSN=
SINCE='1 hour'
OUTPUT=ordflow-metrics.png
SIZE=1000x700
TITLE=
while [ $# -gt 0 ]; do
	case $1 in
		--*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;	# --opt=V as --opt V
		--dsn) DSN=${2:?--dsn needs a value}; shift 2 ;;
		--since) SINCE=${2:?--since needs a value}; shift 2 ;;
		--output|-o) OUTPUT=${2:?--output needs a value}; shift 2 ;;
		--size) SIZE=${2:?--size needs a value}; shift 2 ;;
		--title) TITLE=${2?--title needs a value}; shift 2 ;;
		-h|--help) usage 0 ;;
		*) say "unknown option: $1"; usage 1 ;;
	esac
done
[[ $SIZE =~ ^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$ ]] || die "--size must be WIDTHxHEIGHT in pixels, e.g. 1000x700"
WIDTH=${BASH_REMATCH[1]} HEIGHT=${BASH_REMATCH[2]}
[ -n "$TITLE" ] || TITLE="ordflow, last $SINCE"
command -v gnuplot >/dev/null || die "gnuplot is missing (apt-get install gnuplot-nox)"

# psql: the ORDFLOW_PG_BINDIR / Debian one, else whatever PATH has
PSQL=$PG_BINDIR/psql
[ -x "$PSQL" ] || PSQL=psql

# query: psql -XAt, SQL on stdin (so that :'since' is quoted by psql)
query()
{
	if [ -n "$DSN" ]; then
		"$PSQL" -X -q -A -t -F ',' -v ON_ERROR_STOP=1 -v since="$SINCE" -d "$DSN" -f -
		return
	fi
	# the demo's server (scripts/lib.sh's demo_run_dir, as scripts/demo.sh)
	local run pg_port=
	run=$(demo_run_dir "$ROOT")
	[ -f "$run/ports.env" ] || die "no demo server found ($run/ports.env is missing): start scripts/demo.sh or pass --dsn"
	pg_port=$(sed -n 's/^PG_PORT=\([0-9]*\)$/\1/p' "$run/ports.env")
	[ -n "$pg_port" ] || die "no PG_PORT in $run/ports.env"
	local cmd=("$PSQL" -X -q -A -t -F ',' -v ON_ERROR_STOP=1 -v since="$SINCE"
		-h "$run/sock" -p "$pg_port" -U postgres -d postgres -f -)
	case $(id -un) in
		postgres) "${cmd[@]}" ;;
		root) as_pg "${cmd[@]}" ;;
		*) die "to reach the demo's server run this as root or postgres, or pass --dsn" ;;
	esac
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ordflow-plot.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$TMP"' EXIT
chmod 755 "$TMP"

# First line: the window (epoch seconds); then one line a minute: epoch,
# processed, completed, declined, avg price, p99 ms (NaN: no value, which
# gnuplot skips).
query > "$TMP/history.csv" <<-'EOF' || die "reading ordflow.metrics_history() failed"
	SELECT 'window', extract(epoch FROM date_trunc('minute', now() - :'since'::interval))::bigint,
	       extract(epoch FROM now())::bigint;
	SELECT extract(epoch FROM h.minute)::bigint, h.processed, h.completed, h.declined,
	       coalesce(round(h.avg_execution_price, 6)::text, 'NaN'),
	       coalesce(round(h.latency_p99_ms::numeric, 3)::text, 'NaN')
	  FROM ordflow.metrics_history(:'since'::interval) AS h
	 ORDER BY h.minute;
EOF
read -r X0 X1 < <(awk -F, '$1 == "window" { print $2, $3 }' "$TMP/history.csv")
# a minute without a row processed nothing: 0 orders, no latency or price
# (NaN breaks the line there instead of joining the minutes around it)
grep -v '^window,' "$TMP/history.csv" | awk -F, -v OFS=, -v x0="$X0" -v x1="$X1" '
	{ row[$1] = $0 }
	END { for (t = x0; t <= x1; t += 60) print (t in row) ? row[t] : t ",0,0,0,NaN,NaN" }' \
	> "$TMP/minutes.csv"
# which series have a value at all: gnuplot stops at a series without one
read -r N_ROWS N_PROC N_PRICE N_P99 < <(awk -F, '
	$2 > 0 { n++ } { p += $2; if ($5 != "NaN") a++; if ($6 != "NaN") l++ }
	END { printf "%d %d %d %d\n", n, p, a, l }' "$TMP/minutes.csv")
if [ "$N_PROC" -eq 0 ]; then
	say "nothing to plot: no processed order in the last $SINCE"
	exit 2
fi

# gnuplot reads the title from a file: no quoting of user text into the script
printf '%s' "$TITLE" > "$TMP/title.txt"
cat > "$TMP/plot.gp" <<-EOF
	set terminal pngcairo size $WIDTH,$HEIGHT enhanced font 'DejaVu Sans,10'
	set output '$TMP/out.png'
	set datafile separator ','
	set xdata time
	set timefmt '%s'
	set xrange ['$X0':'$X1']
	set format x '%H:%M'
	set grid
	set key tmargin right horizontal
	title_text = system("cat '$TMP/title.txt'")
	set multiplot layout 2,1 title title_text noenhanced
	set ylabel 'orders per minute'
	set yrange [0:*]
	plot '$TMP/minutes.csv' using 1:2 with linespoints pt 7 ps 0.5 lw 2 title 'processed', \
	     '' using 1:3 with linespoints pt 7 ps 0.5 title 'completed', \
	     '' using 1:4 with linespoints pt 7 ps 0.5 title 'declined'
	set xlabel 'time (UTC)'
	set ylabel 'p99 latency (ms)'
	set ytics nomirror
	set y2label 'average execution price'
	set y2tics
	if ($N_P99 > 0 && $N_PRICE > 0) {
	    plot '$TMP/minutes.csv' using 1:6 axes x1y1 with linespoints pt 7 ps 0.5 lw 2 title 'p99 latency (ms)', \
	         '' using 1:5 axes x1y2 with linespoints pt 7 ps 0.5 title 'average execution price'
	} else {
	    if ($N_P99 > 0) {
	        plot '$TMP/minutes.csv' using 1:6 with linespoints pt 7 ps 0.5 lw 2 title 'p99 latency (ms)'
	    } else {
	        set yrange [0:1]
	        plot '$TMP/minutes.csv' using 1:5 axes x1y2 with linespoints pt 7 ps 0.5 title 'average execution price'
	    }
	}
	unset multiplot
EOF
gnuplot "$TMP/plot.gp" 2> "$TMP/gnuplot.err"
RC=$?
if [ $RC -ne 0 ]; then
	cat "$TMP/gnuplot.err" >&2
	say "gnuplot failed (exit $RC)"
	exit "$RC"
fi
mv -f "$TMP/out.png" "$OUTPUT" || die "cannot write $OUTPUT"
say "wrote $OUTPUT ($N_PROC orders processed in $N_ROWS minutes)"
exit 0
