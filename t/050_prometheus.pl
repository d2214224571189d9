
# Monitoring: the real prometheus-postgres-exporter (Debian's 0.11) with
# monitoring/postgres_exporter.yaml, logged in as the least-privilege role
# of monitoring/exporter_role.sql, scraped over HTTP; every ordflow_* figure
# is checked against metrics() / status() / the tables: on a fresh install,
# after completed and declined orders and a dead letter, with the broker
# stopped (workers disconnected, a small outbox counted exactly, then a
# large one taken from the statistics and flagged as an estimate), and after
# the broker is back and everything is drained.  The role cannot read order
# payloads or dead-letter bodies, and the whole scrape (the exporter's own
# pg_monitor metrics included) runs without an error.  The same file works
# on a database with ordflow 1.0 (dead_letters a table there, a view in
# 1.1).  Then scripts/plot.sh draws metrics_history() of this node into a
# PNG (signature, header, size, exit status), and exits 2 without writing
# anything on a node without history; bench/plot.sh (bench/run.sh's plots)
# draws both PNGs from a small sample in bench/out's format.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $EXPORTER = '/usr/bin/prometheus-postgres-exporter';
plan skip_all => "$EXPORTER is not installed (apt-get install prometheus-postgres-exporter)"
  unless -x $EXPORTER;

my $root    = File::Spec->rel2abs("$FindBin::RealBin/..");
my $queries = "$root/monitoring/postgres_exporter.yaml";
my $role_sql = "$root/monitoring/exporter_role.sql";

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('prom', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'relay and consumer 0 connected');

sub sq { return $node->safe_psql('postgres', $_[0]); }

sub slurp
{
	my ($f) = @_;
	open(my $fh, '<', $f) or die "cannot read $f: $!";
	local $/;
	return scalar <$fh>;
}

# ---------------------------------------------------------------------------
# the role, exactly as the README tells an operator to create it

sq(slurp($role_sql));
sq(slurp($role_sql));    # a second run (another database, a re-run) is fine

for my $c (
	[ 'SELECT payload FROM ordflow.outbox LIMIT 1',        qr/permission denied for table outbox/ ],
	[ 'SELECT body FROM ordflow.dead_letters LIMIT 1',     qr/permission denied for (view|table) dead_letters/ ],
	[ 'SELECT count(*) FROM ordflow.orders',               qr/permission denied for table orders/ ],
	[ 'SELECT count(*) FROM ordflow.users',                qr/permission denied for table users/ ],
	[ 'SELECT ordflow.start()',                            qr/permission denied for function start/ ],
	[ 'SELECT ordflow.truncate()',                         qr/permission denied for function truncate/ ])
{
	my ($ret, $out, $err) = $node->psql('postgres', "SET ROLE ordflow_exporter; $c->[0]");
	like($err, $c->[1], "the exporter role is refused: $c->[0]");
}

# ---------------------------------------------------------------------------
# the exporter: our own process on a free loopback port, stopped at the end

my $http = HTTP::Tiny->new(timeout => 30);
my @exporters;
END
{
	for my $e (@exporters)
	{
		next unless $e->{h};
		eval { $e->{h}->signal('TERM'); $e->{h}->finish; };
	}
}

sub start_exporter
{
	my ($n) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	# in the log folder, which scripts/test.sh shows when the test fails
	my $log  = "$PostgreSQL::Test::Utils::log_path/050_prometheus_exporter_" . $n->name . '.log';
	my $dsn  = sprintf('host=%s port=%d user=ordflow_exporter dbname=postgres sslmode=disable',
		$n->host, $n->port);
	local $ENV{DATA_SOURCE_NAME} = $dsn;
	my $h = IPC::Run::start(
		[ $EXPORTER, "--web.listen-address=127.0.0.1:$port",
			"--extend.query-path=$queries", '--log.level=info' ],
		'<', \undef, '>', $log, '2>&1');
	my $e = { h => $h, port => $port, log => $log, node => $n };
	push @exporters, $e;
	note "exporter for node " . $n->name . " on 127.0.0.1:$port (pid " . $h->{KIDS}[0]{PID} . "), log $log";
	return $e;
}

sub stop_exporter
{
	my ($e) = @_;
	my $pid = $e->{h}{KIDS}[0]{PID};
	$e->{h}->signal('TERM');
	my $done = eval { $e->{h}->finish; 1 };
	$e->{h} = undef;
	# gone, and nothing answers on its port any more (599: no connection)
	my $gone = !kill(0, $pid);
	my $r = $http->get("http://127.0.0.1:$e->{port}/metrics");
	ok($done && $gone && $r->{status} == 599,
		"exporter $pid (node " . $e->{node}->name . ") stopped, port $e->{port} closed");
}

# scrape($e): { 'name{label="v",...}' => value } (labels sorted, without
# the exporter's own server label), plus {types}{name} => type; undef when
# the HTTP request failed
sub scrape
{
	my ($e) = @_;
	my $r = $http->get("http://127.0.0.1:$e->{port}/metrics");
	return undef unless $r->{success};
	my (%m, %types);
	for my $line (split /\n/, $r->{content})
	{
		if ($line =~ /^# TYPE (\S+) (\S+)/) { $types{$1} = $2; next; }
		next if $line =~ /^#/ || $line !~ /\S/;
		my ($name, $labels, $value) = $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
		  or next;
		my @l;
		while (defined $labels && $labels =~ /([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)
		{
			push @l, qq{$1="$2"} unless $1 eq 'server';
		}
		$m{ $name . (@l ? '{' . join(',', sort @l) . '}' : '') } = $value;
	}
	$m{types} = \%types;
	$m{raw} = join("\n", grep { /^(# (HELP|TYPE) )?ordflow_/ } split /\n/, $r->{content});
	return \%m;
}

# scrape until the exporter answers with pg_up 1 (it connects lazily)
sub scrape_ready
{
	my ($e) = @_;
	my $deadline = time + 60;
	my $m;
	while (time < $deadline)
	{
		$m = scrape($e);
		return $m if $m && ($m->{pg_up} // '') eq '1';
		usleep(200_000);
	}
	diag "exporter not ready:\n" . slurp($e->{log});
	return $m;
}

sub close_to
{
	my ($got, $want, $rel) = @_;
	return 0 unless defined $got && defined $want;
	return ($got eq 'NaN') if $want eq 'NaN';
	return 0 if $got eq 'NaN' || $got !~ /^[-+0-9.eE]+$/;
	return abs($got - $want) <= ($rel // 1e-9) * (abs($want) > 1 ? abs($want) : 1);
}

# what the scrape should say, from SQL run as a superuser right now
sub expected
{
	my ($n) = @_;
	my $q = sub { return $n->safe_psql('postgres', $_[0]); };
	my %x;
	my $row = $q->(q{
		SELECT orders_completed, orders_declined,
			   coalesce(avg_execution_price::float8::text, 'NaN'),
			   total_execution_amount::float8,
			   coalesce((latency_p50_ms / 1000)::text, 'NaN'),
			   coalesce((latency_p99_ms / 1000)::text, 'NaN'),
			   coalesce(extract(epoch FROM last_processed_at)::float8::text, 'NaN'),
			   orders_per_second
		  FROM ordflow.metrics()});
	my @v = split /\|/, $row;
	$x{'ordflow_orders_processed_total{status="completed"}'} = $v[0];
	$x{'ordflow_orders_processed_total{status="declined"}'}  = $v[1];
	$x{ordflow_avg_execution_price}                         = $v[2];
	$x{ordflow_execution_amount_total}                      = $v[3];
	$x{'ordflow_order_latency_seconds{quantile="0.5"}'}      = $v[4];
	$x{'ordflow_order_latency_seconds{quantile="0.99"}'}     = $v[5];
	$x{ordflow_last_processed_timestamp_seconds}            = $v[6];
	$x{ordflow_outbox_depth}         = $q->('SELECT count(*) FROM ordflow.outbox');
	$x{ordflow_outbox_depth_estimated} = 0;
	$x{ordflow_dead_letters_stored}  = $q->('SELECT count(*) FROM ordflow.dead_letters');
	$x{ordflow_dead_letters_stored_estimated} = 0;
	for my $w (split /\n/, $q->(q{SELECT worker, state, connected::int, processed FROM ordflow.status()}))
	{
		my ($name, $state, $conn, $proc) = split /\|/, $w;
		$x{qq{ordflow_worker_connected{worker="$name"}}}              = $conn;
		$x{qq{ordflow_worker_processed_total{worker="$name"}}}        = $proc;
		$x{qq{ordflow_worker_state_info{state="$state",worker="$name"}}} = 1;
	}
	return (\%x, $v[7]);
}

# the ordflow_* series of a scrape that differ from %$want (and those the
# scrape has that are not wanted); orders_per_second and the timestamps and
# ages are checked by the callers
my %checked_elsewhere = map { $_ => 1 } qw(ordflow_orders_per_second ordflow_outbox_oldest_age_seconds);
sub mismatches
{
	my ($got, $want, $skip) = @_;
	my @bad;
	for my $k (sort keys %$want)
	{
		push @bad, "$k: scraped " . ($got->{$k} // 'nothing') . ", expected $want->{$k}"
		  unless close_to($got->{$k}, $want->{$k});
	}
	for my $k (sort grep { /^ordflow_/ } keys %$got)
	{
		next if exists $want->{$k};
		(my $base = $k) =~ s/\{.*//;
		next if $checked_elsewhere{$base} || $skip->{$k}
		  || $base eq 'ordflow_worker_state_since_timestamp_seconds';
		push @bad, "$k: scraped $got->{$k}, not expected";
	}
	return @bad;
}

# scrape until it matches what SQL says (workers change state in between
# otherwise); then one assertion per figure group on the last pair
sub check_scrape
{
	my ($e, $what, %o) = @_;
	my $deadline = time + ($o{timeout} || 60);
	my ($got, $want, @bad, $rate_before, $rate_after);
	while (1)
	{
		($want, $rate_before) = expected($e->{node});
		$got = scrape($e);
		(undef, $rate_after) = expected($e->{node});
		$want->{$_} = $o{override}{$_} for keys %{ $o{override} || {} };
		if ($got && $o{approx})
		{
			for my $k (keys %{ $o{approx} })
			{
				my ($lo, $hi) = @{ $o{approx}{$k} };
				delete $want->{$k};
				push @bad, "$k: scraped " . ($got->{$k} // 'nothing') . ", expected $lo..$hi"
				  unless defined $got->{$k} && $got->{$k} >= $lo && $got->{$k} <= $hi;
			}
		}
		push @bad, $got ? mismatches($got, $want, $o{approx}) : 'the scrape failed';
		last if !@bad || time >= $deadline;
		@bad = ();
		usleep(500_000);
	}
	is(join("\n", @bad), '', "$what: every ordflow_* figure matches metrics() / status() / the tables");
	# orders_per_second depends on now(): between the values before and after
	my ($lo, $hi) = sort { $a <=> $b } ($rate_before, $rate_after);
	my $rate = $got->{ordflow_orders_per_second} // 'nothing';
	ok($rate ne 'nothing' && $rate >= $lo - 1e-6 && $rate <= $hi + 1e-6,
		"$what: ordflow_orders_per_second $rate is between metrics() before ($rate_before) and after ($rate_after)");
	is($got->{pg_exporter_last_scrape_error}, '0', "$what: the scrape ran without an error");
	return $got;
}

my $exp = start_exporter($node);
my $m = scrape_ready($exp);
is($m->{pg_up}, '1', 'the exporter reaches the node as ordflow_exporter');
my @load = grep { /^pg_exporter_user_queries_load_error\{filename="\Q$queries\E"/ } keys %$m;
is(join(',', map { $m->{$_} } @load), '0', 'the queries file loads without an error');
ok(scalar(grep { /^pg_stat_database_/ } keys %$m) > 0,
	'the built-in metrics are there too (pg_monitor)');

my %types = (
	ordflow_orders_processed_total              => 'counter',
	ordflow_execution_amount_total              => 'counter',
	ordflow_avg_execution_price                 => 'gauge',
	ordflow_orders_per_second                   => 'gauge',
	ordflow_last_processed_timestamp_seconds    => 'gauge',
	ordflow_order_latency_seconds               => 'gauge',
	ordflow_outbox_depth                        => 'gauge',
	ordflow_outbox_depth_estimated              => 'gauge',
	ordflow_outbox_oldest_age_seconds           => 'gauge',
	ordflow_dead_letters_stored                 => 'gauge',
	ordflow_dead_letters_stored_estimated       => 'gauge',
	ordflow_worker_connected                    => 'gauge',
	ordflow_worker_processed_total              => 'counter',
	ordflow_worker_state_since_timestamp_seconds => 'gauge',
	ordflow_worker_state_info                   => 'gauge',);
is_deeply({ map { $_ => $m->{types}{$_} } grep { /^ordflow_/ } keys %{ $m->{types} } },
	\%types, 'every ordflow metric has its Prometheus type');

# ---------------------------------------------------------------------------
# 1. fresh: zeros, NaN where metrics() has NULL

$m = check_scrape($exp, 'fresh install');
is($m->{'ordflow_order_latency_seconds{quantile="0.99"}'}, 'NaN', 'no order yet: p99 is NaN');
is($m->{ordflow_outbox_oldest_age_seconds}, '0', 'empty outbox: oldest age 0');

# ---------------------------------------------------------------------------
# 2. completed and declined orders, a dead letter

my $uid = sq(q{SELECT ordflow.create_user('Pro', 'Metheus', 100)});
sq(qq{
	BEGIN;
	SELECT ordflow.place_order($uid, 60);
	SELECT ordflow.place_order($uid, 60);
	SELECT ordflow.place_order(NULL, NULL, 'ABC', 1 + i % 5) FROM generate_series(1, 20) AS i;
	COMMIT;});
# A dead letter written directly: the metric counts rows, and this test
# must not depend on the consumer's dead-lettering (010 tests that).
if (sq(q{SELECT to_regclass('ordflow.dead_letters_raw') IS NOT NULL}) eq 't')
{
	sq(q{INSERT INTO ordflow.dead_letters_raw (queue, routing_key, body, body_size, error)
		 VALUES ('ordflow.orders', 'order.created', '\x78'::bytea, 1, 'test: invalid JSON')});
}
else
{
	sq(q{INSERT INTO ordflow.dead_letters (queue, routing_key, body, body_text, error)
		 VALUES ('ordflow.orders', 'order.created', '\x78'::bytea, 'x', 'test: invalid JSON')});
}
ok( OrdflowTest::wait_for($node, q{
		SELECT orders_processed = 22 AND orders_declined = 1
		       AND (SELECT count(*) FROM ordflow.dead_letters) = 1
		       AND (SELECT count(*) FROM ordflow.outbox) = 0
		  FROM ordflow.metrics()}, 't', 90),
	'22 orders processed (1 declined), 1 dead letter');
$m = check_scrape($exp, 'after 22 orders');
is($m->{'ordflow_orders_processed_total{status="declined"}'}, '1', 'one declined order scraped');
is($m->{ordflow_dead_letters_stored}, '1', 'one dead letter scraped');
ok($m->{'ordflow_order_latency_seconds{quantile="0.5"}'} > 0
	  && $m->{'ordflow_order_latency_seconds{quantile="0.99"}'}
	  >= $m->{'ordflow_order_latency_seconds{quantile="0.5"}'},
	'latency quantiles are set, p99 >= p50');
is($m->{'ordflow_worker_connected{worker="relay"}'}, '1', 'relay connected');

# ---------------------------------------------------------------------------
# 3. broker down: disconnected workers, the outbox fills up

$mq->stop_app;
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(NOT connected) FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 90),
	'broker stopped: relay and consumer disconnected');
sq(q{SELECT ordflow.place_order(NULL, NULL, 'OUT', 1) FROM generate_series(1, 5)});
usleep(1_100_000);    # the oldest row is at least a second old
$m = check_scrape($exp, 'broker down, 5 orders in the outbox');
is($m->{ordflow_outbox_depth}, '5', 'outbox depth 5, counted exactly');
is($m->{'ordflow_worker_connected{worker="relay"}'}, '0', 'relay disconnected');
my $age_sql = q{SELECT extract(epoch FROM clock_timestamp() - min(created_at)) FROM ordflow.outbox};
ok($m->{ordflow_outbox_oldest_age_seconds} >= 1
	  && $m->{ordflow_outbox_oldest_age_seconds} <= sq($age_sql),
	"oldest outbox row age $m->{ordflow_outbox_oldest_age_seconds} s: >= 1 and <= its age now");

# above the bound of the exact count the figure is the statistics estimate
sq(q{SELECT ordflow.place_order(NULL, NULL, 'BIG', 1) FROM generate_series(1, 10495)});
is(sq('SELECT count(*) FROM ordflow.outbox'), '10500', '10500 rows in the outbox');
$m = check_scrape($exp, 'broker down, 10500 orders in the outbox',
	override => { ordflow_outbox_depth_estimated => 1 },
	approx   => { ordflow_outbox_depth => [ 10000, 11000 ] });
note "estimated outbox depth: $m->{ordflow_outbox_depth}";

# ---------------------------------------------------------------------------
# 4. broker back: drained, every counter matches again

$mq->start_app;
ok( OrdflowTest::wait_for($node, q{
		SELECT orders_processed = 10522 AND (SELECT count(*) FROM ordflow.outbox) = 0
		  FROM ordflow.metrics()}, 't', 240),
	'broker back: all 10522 orders processed, outbox empty');
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'relay and consumer 0 connected again');
$m = check_scrape($exp, 'after the drain');
ok($m->{'ordflow_orders_processed_total{status="completed"}'} == 10521,
	'10521 completed orders scraped');
ok($m->{ordflow_orders_per_second} > 0, 'orders per second > 0 after the drain');
note "the ordflow_* part of the last scrape:\n$m->{raw}";
stop_exporter($exp);

# ---------------------------------------------------------------------------
# 5. the same queries file against ordflow 1.0 (dead_letters is a table)

# a second node (ordflow runs in one database per cluster), no broker needed
my $node10 = OrdflowTest::new_node('prom10');
$node10->safe_psql('postgres', q{CREATE EXTENSION ordflow VERSION '1.0'});
is($node10->safe_psql('postgres', q{SELECT relkind FROM pg_class WHERE oid = 'ordflow.dead_letters'::regclass}),
	'r', 'in 1.0 dead_letters is a table');
$node10->safe_psql('postgres', slurp($role_sql));
$node10->safe_psql('postgres', q{
	INSERT INTO ordflow.dead_letters (queue, routing_key, body, body_text, error)
	VALUES ('ordflow.orders', 'order.created', '\x78'::bytea, 'x', 'test: invalid JSON')});
my $exp10 = start_exporter($node10);
$m = scrape_ready($exp10);
$m = check_scrape($exp10, 'ordflow 1.0');
is($m->{ordflow_dead_letters_stored}, '1', 'ordflow 1.0: the dead letter is counted');
stop_exporter($exp10);

# ---------------------------------------------------------------------------
# 6. scripts/plot.sh draws metrics_history() of this node

my $png = "$PostgreSQL::Test::Utils::tmp_check/metrics.png";
my $dsn = sprintf('host=%s port=%d dbname=postgres', $node->host, $node->port);
my ($out, $err) = ('', '');
my $ok = IPC::Run::run([ 'bash', "$root/scripts/plot.sh", '--dsn', $dsn, '--since', '2 hours',
		'--size', '900x600', '--title', q{test "node" 'prom'}, '--output', $png ],
	'<', \undef, '>', \$out, '2>', \$err);
is($? >> 8, 0, 'scripts/plot.sh (and gnuplot) exited 0') or diag $err;
note $err;
my $bytes = -e $png ? slurp($png) : '';
is(substr($bytes, 0, 8), "\x89PNG\r\n\x1a\n", 'the file has the PNG signature');
is(substr($bytes, 12, 4), 'IHDR', 'its first chunk is IHDR');
is(join('x', unpack('NN', substr($bytes, 16, 8))), '900x600', 'the image is 900x600');
ok(length($bytes) > 10_000, 'the PNG is not trivial (' . length($bytes) . ' bytes)');
like($bytes, qr/IEND\xaeB`\x82\z/, 'the PNG ends with its IEND chunk');

# no history (the 1.0 node never processed an order): exit 2, nothing written
my $png2 = "$PostgreSQL::Test::Utils::tmp_check/empty.png";
my $dsn10 = sprintf('host=%s port=%d dbname=postgres', $node10->host, $node10->port);
IPC::Run::run([ 'bash', "$root/scripts/plot.sh", '--dsn', $dsn10, '--output', $png2 ],
	'<', \undef, '>', \$out, '2>', \$err);
is($? >> 8, 2, 'scripts/plot.sh exits 2 when there is no history');
like($err, qr/nothing to plot/, 'and says why');
ok(!-e $png2, 'and writes no file');

# ---------------------------------------------------------------------------
# 7. bench/plot.sh (what bench/run.sh calls at its end) on a small sample
# in bench/out's format: both PNGs drawn

my $bdir = PostgreSQL::Test::Utils::tempdir('bench_out');
my $run_id = '2026-12-01T00:00:00Z';
my @rows = ('run_id,test,round,metric,value,unit');
for my $r (1 .. 3)
{
	push @rows, "$run_id,raw_pipe,$r,msgs_per_s," . (29000 + 300 * $r) . ',msg/s',
	  "$run_id,drain_1c,$r,orders_per_s," . (16000 + 200 * $r) . ',orders/s',
	  "$run_id,drain_1c,$r,cpu_consumer_0,0.3$r,core_fraction",
	  "$run_id,naive_batch1,$r,orders_per_s," . (1300 + 20 * $r) . ',orders/s';
}
push @rows, "$run_id,sustained,1,processed_per_s,13000.0,orders/s",
  map({ "$run_id,latency,1,$_->[0],$_->[1],ms" }
	  [ 'metrics_p50_ms', 6.4 ], [ 'metrics_p99_ms', 10.7 ], [ 'table_p50_ms', 6.3 ], [ 'table_p99_ms', 10.3 ]),
  "$run_id,raw_pipe,median,msgs_per_s,29600,msg/s",
  "$run_id,ratio,paired_median,drain_over_raw,0.55,x",
  "$run_id,ratio,median,naive_over_drain,0.08,x";
PostgreSQL::Test::Utils::append_to_file("$bdir/results.csv", join("\n", @rows) . "\n");
PostgreSQL::Test::Utils::append_to_file("$bdir/sustained.csv",
	"seconds,made,processed,backlog\n"
	  . join('', map { sprintf("%.2f,%d,%d,%d\n", $_, 20000 * $_, 15000 * $_, 5000 * $_) } 1 .. 10));
IPC::Run::run([ 'bash', "$root/bench/plot.sh", $bdir ], '<', \undef, '>', \$out, '2>', \$err);
is($? >> 8, 0, 'bench/plot.sh exited 0') or diag $err;
for my $f ([ 'figures.png', '1200x900' ], [ 'sustained.png', '1000x700' ])
{
	my $b = -e "$bdir/$f->[0]" ? slurp("$bdir/$f->[0]") : '';
	ok( substr($b, 0, 8) eq "\x89PNG\r\n\x1a\n"
		  && join('x', unpack('NN', substr($b, 16, 8))) eq $f->[1]
		  && length($b) > 10_000,
		"bench/plot.sh drew $f->[0] ($f->[1], " . length($b) . ' bytes)');
}

done_testing();
