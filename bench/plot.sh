#!/usr/bin/env bash
# bench/plot.sh [DIR] - draws bench/run.sh's figures as PNGs with gnuplot.
#
# DIR (default bench/out) holds what bench/run.sh writes: results.csv (one
# figure a line: run_id,test,round,metric,value,unit) and sustained.csv
# (the sustained run, one line a second: seconds,made,processed,backlog).
# Writes, next to them:
#   figures.png    throughput of each test (bar: median; dots: each round),
#                  latency at 1000/s (p50, p99, max: metrics() and
#                  recomputed from the orders) and at 100/s, CPU during the drains, and
#                  the ratios against their targets
#   sustained.png  the sustained run second by second: orders made and
#                  processed per second, and the backlog
# bench/run.sh sources this file and calls bench_plot DIR after a run; run
# it by hand to redraw a run's figures.  Needs gnuplot (gnuplot-nox).
# Exit status: 0 when both were drawn (sustained.png is skipped without
# sustained.csv), non-zero otherwise.

# bench_plot DIR: the PNGs of DIR/results.csv and DIR/sustained.csv
bench_plot()
{
	local dir=$1 tmp rc=0
	[ -s "$dir/results.csv" ] || { printf 'bench_plot: no %s\n' "$dir/results.csv" >&2; return 1; }
	command -v gnuplot >/dev/null || { printf 'bench_plot: gnuplot is missing (apt-get install gnuplot-nox)\n' >&2; return 1; }
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/ordflow-bench-plot.XXXXXX") || return 1
	_bench_plot_figures "$dir" "$tmp" || rc=$?
	if [ -s "$dir/sustained.csv" ]; then
		_bench_plot_sustained "$dir" "$tmp" || rc=$?
	fi
	rm -rf "$tmp"
	return $rc
}

# data files for figures.png, from results.csv:
#   tput.dat    i,label,median       tput_rounds.dat  i,value
#   lat.dat     i,label,metrics,table
#   cpu.dat     i,label,drain_1c,drain_2c
#   ratio.dat   i,label,value,target
_bench_plot_data()
{
	local csv=$1 tmp=$2
	awk -F, -v tmp="$tmp" '
		function med(key,    n, i, j, t, a) {
			n = split(vals[key], a, " ")
			if (n == 0 || vals[key] == "") return ""
			for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
			return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		NR == 1 && $1 == "run_id" { next }
		{ run = $1 }
		$3 == "median" || $3 == "paired_median" { m[$2 "," $3 "," $4] = $5; next }
		{ k = $2 "," $4; vals[k] = vals[k] " " $5; rounds[k, ++nr[k]] = $5 }
		END {
			# throughput: test, metric, label
			nt = split("raw_pipe,msgs_per_s,raw broker pipe;drain_1c,orders_per_s,drain 1 consumer;" \
			           "drain_1c_users,orders_per_s,drain users;drain_2c,orders_per_s,drain 2 consumers;" \
			           "sustained,processed_per_s,sustained processed;naive_batch1,orders_per_s,naive batch 1;" \
			           "naive_batch1_relay1,orders_per_s,naive + relay 1;bulk_place_orders,orders_per_s,bulk place_orders;" \
			           "bulk_place_order,orders_per_s,bulk place_order;mc_place_order,orders_per_s,pgbench place_order;" \
			           "mc_bare,tps,pgbench bare CTE", T, ";")
			x = 0
			for (i = 1; i <= nt; i++) {
				split(T[i], f, ",")
				k = f[1] "," f[2]
				v = (f[1] "," "median" "," f[2]) in m ? m[f[1] ",median," f[2]] : med(k)
				if (v == "") continue
				printf "%d,%s,%s\n", x, f[3], v > (tmp "/tput.dat")
				for (r = 1; r <= nr[k]; r++) printf "%d,%s\n", x, rounds[k, r] > (tmp "/tput_rounds.dat")
				x++
			}
			# latency at 1000/s
			printf "0,p50,%s,%s\n", med("latency,metrics_p50_ms"), med("latency,table_p50_ms") > (tmp "/lat.dat")
			printf "1,p99,%s,%s\n", med("latency,metrics_p99_ms"), med("latency,table_p99_ms") > (tmp "/lat.dat")
			printf "2,max,%s,%s\n", med("latency,metrics_max_bucket_upper_ms"), med("latency,table_max_ms") > (tmp "/lat.dat")
			printf "3,p50 at 100/s,%s,%s\n", med("latency_100,metrics_p50_ms"), med("latency_100,table_p50_ms") > (tmp "/lat.dat")
			printf "4,p99 at 100/s,%s,%s\n", med("latency_100,metrics_p99_ms"), med("latency_100,table_p99_ms") > (tmp "/lat.dat")
			# CPU share of one core during the drains
			nc = split("relay;consumer_0;consumer_1;rabbitmq;other_postgres", C, ";")
			x = 0
			for (i = 1; i <= nc; i++) {
				a = med("drain_1c,cpu_" C[i]); b = med("drain_2c,cpu_" C[i])
				if (a == "" && b == "") continue
				lbl = C[i]; gsub("_", " ", lbl)
				printf "%d,%s,%s,%s\n", x++, lbl, (a == "" ? "NaN" : a), (b == "" ? "NaN" : b) > (tmp "/cpu.dat")
			}
			# ratios against the targets of the benchmark issue
			nr2 = split("median,drain_over_raw,drain/raw >= 0.75,0.75;median,drain_users_over_raw,users/raw >= 0.65,0.65;" \
			            "median,drain_2c_over_1c,2c/1c >= 1,1;median,sustained_processed_over_raw,sustained/raw >= 0.6,0.6;" \
			            "median,bulk_place_orders_over_raw,bulk/raw >= 0.6,0.6;median,many_clients_over_bare,pgbench/bare >= 0.8,0.8;" \
			            "median,naive_over_drain,naive/drain <= 0.1,0.1", R, ";")
			x = 0
			for (i = 1; i <= nr2; i++) {
				split(R[i], f, ",")
				k = "ratio," f[1] "," f[2]
				if (!(k in m) || m[k] == "-" || m[k] == "") continue
				printf "%d,%s,%s,%s\n", x++, f[3], m[k], f[4] > (tmp "/ratio.dat")
			}
			printf "%s\n", run > (tmp "/run_id")
		}' "$csv"
	for f in tput tput_rounds lat cpu ratio; do
		[ -f "$tmp/$f.dat" ] || : > "$tmp/$f.dat"
	done
	# an empty panel would stop gnuplot: a placeholder row without values
	for f in lat cpu ratio; do
		awk -F, '{ for (i = 3; i <= NF; i++) if ($i != "" && $i != "NaN") n++ } END { exit n > 0 ? 0 : 1 }' "$tmp/$f.dat" ||
			echo "0,(no data),0,0" > "$tmp/$f.dat"
	done
	[ -s "$tmp/tput.dat" ] || echo "0,(no data),0" > "$tmp/tput.dat"
	[ -s "$tmp/tput_rounds.dat" ] || echo "0,0" > "$tmp/tput_rounds.dat"
	# empty fields (a figure a short run did not measure) read as NaN
	sed -i 's/,,/,NaN,/g; s/,,/,NaN,/g; s/,$/,NaN/' "$tmp"/lat.dat
}

_bench_plot_figures()
{
	local dir=$1 tmp=$2 run
	_bench_plot_data "$dir/results.csv" "$tmp" || return 1
	run=$(cat "$tmp/run_id")
	cat > "$tmp/figures.gp" <<-EOF
		set terminal pngcairo size 1200,900 noenhanced font 'DejaVu Sans,10'
		set output '$tmp/figures.png'
		set datafile separator ','
		set style fill solid 0.75 border -1
		set grid ytics
		set key top right
		set xtics nomirror rotate by 25 right
		set multiplot layout 2,2 title 'ordflow benchmark, run $run' noenhanced
		set rmargin 6

		set title 'throughput (bar: median, dots: rounds)'
		set ylabel 'orders/s (raw pipe: msg/s)'
		set boxwidth 0.6
		set yrange [0:*]
		set xrange [-0.6:*]
		plot '$tmp/tput.dat' using 1:3:xtic(2) with boxes lc rgb '#4472c4' notitle, \
		     '$tmp/tput_rounds.dat' using 1:2 with points pt 7 ps 0.8 lc rgb 'black' title 'round'

		set title 'latency: p50, p99, max at 1000 orders/s; p50, p99 at 100/s'
		set ylabel 'ms'
		set boxwidth 0.35
		set xtics norotate center
		set xrange [-0.6:4.6]
		plot '$tmp/lat.dat' using 1:(0):xtic(2) with points ps 0 notitle, \
		     '' using (\$1 - 0.18):3 with boxes lc rgb '#4472c4' title 'metrics() (histogram)', \
		     '' using (\$1 + 0.18):4 with boxes lc rgb '#ed7d31' title 'recomputed from orders'

		set title 'CPU during the drains (share of one core, median)'
		set ylabel 'cores'
		set xtics rotate by 25 right
		set xrange [-0.6:*]
		plot '$tmp/cpu.dat' using 1:(0):xtic(2) with points ps 0 notitle, \
		     '' using (\$1 - 0.18):3 with boxes lc rgb '#4472c4' title '1 consumer', \
		     '' using (\$1 + 0.18):4 with boxes lc rgb '#70ad47' title '2 consumers'

		set title 'ratios (bar) against their targets (line)'
		set ylabel 'x'
		set key top left
		set offsets 0, 0, graph 0.15, 0
		set boxwidth 0.6
		plot '$tmp/ratio.dat' using 1:3:xtic(2) with boxes lc rgb '#4472c4' notitle, \
		     '' using 1:4:(0.35) with xerrorbars pt 0 lw 3 lc rgb '#c00000' title 'target'
		unset multiplot
	EOF
	_bench_gnuplot "$tmp/figures.gp" "$tmp/figures.png" "$dir/figures.png"
}

_bench_plot_sustained()
{
	local dir=$1 tmp=$2
	# per-second rates from the cumulative counts
	awk -F, -v OFS=, 'NR > 1 { if (n++) print $1, ($2 - m) / ($1 - t), ($3 - p) / ($1 - t), $4; t = $1; m = $2; p = $3 }
		NR == 2 { print $1, ($1 > 0 ? $2 / $1 : 0), ($1 > 0 ? $3 / $1 : 0), $4; t = $1; m = $2; p = $3 }' \
		"$dir/sustained.csv" > "$tmp/sustained.dat"
	[ -s "$tmp/sustained.dat" ] || { printf 'bench_plot: %s has no data\n' "$dir/sustained.csv" >&2; return 1; }
	cat > "$tmp/sustained.gp" <<-EOF
		set terminal pngcairo size 1000,700 enhanced font 'DejaVu Sans,10'
		set output '$tmp/sustained.png'
		set datafile separator ','
		set grid
		set key tmargin right horizontal
		set autoscale xfixmax
		set xrange [0:*]
		set offsets 0, 0, graph 0.08, 0
		set multiplot layout 2,1 title 'ordflow sustained run: generator at start(1000000)' noenhanced
		set ylabel 'orders/s'
		set yrange [0:*]
		plot '$tmp/sustained.dat' using 1:2 with linespoints pt 7 ps 0.5 lw 2 title 'made (generator)', \
		     '' using 1:3 with linespoints pt 7 ps 0.5 lw 2 title 'processed'
		set xlabel 'seconds since start()'
		set ylabel 'orders'
		plot '$tmp/sustained.dat' using 1:4 with filledcurves x1 fs solid 0.3 lc rgb '#ed7d31' notitle, \
		     '' using 1:4 with lines lw 2 lc rgb '#ed7d31' title 'backlog (made - processed)'
		unset multiplot
	EOF
	_bench_gnuplot "$tmp/sustained.gp" "$tmp/sustained.png" "$dir/sustained.png"
}

# _bench_gnuplot SCRIPT TMP_PNG PNG: run gnuplot, move the PNG in place on success
_bench_gnuplot()
{
	local rc=0
	gnuplot "$1" 2> "$1.err" || rc=$?
	if [ $rc -ne 0 ]; then
		cat "$1.err" >&2
		printf 'bench_plot: gnuplot failed (exit %d) on %s\n' "$rc" "$3" >&2
		return $rc
	fi
	mv -f "$2" "$3" || return 1
	printf '  plot: %s\n' "$3" >&2
}

# run directly: bench/plot.sh [DIR]
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -uo pipefail
	bench_plot "${1:-$(cd "$(dirname "$0")" && pwd)/out}"
	exit $?
fi
