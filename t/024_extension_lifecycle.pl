
# The extension's life cycle under a running pipeline: DROP EXTENSION while
# the generator, relay and consumers work (it completes, nothing crashes,
# the workers exit quietly and the supervisor waits); CREATE EXTENSION
# again (the pipeline comes back and processes orders); DROP DATABASE of
# another database while the workers run; and a server where the extension
# is created only after start-up.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $workers_sql = q{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type IN ('ordflow generator', 'ordflow relay', 'ordflow consumer')};
my $no_workers_sql = "SELECT ($workers_sql) = 0";
my $supervisor_sql = q{
	SELECT string_agg(pid::text, ',') FROM pg_stat_activity
	 WHERE backend_type = 'ordflow supervisor'};

my ($mq, $node) = OrdflowInvariants::setup('life', consumers => 2);
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 300 FROM ordflow.metrics()', 't', 60),
	'pipeline processes generated orders');

# --- DROP EXTENSION while everything runs ---------------------------------
my $logpos = OrdflowInvariants::log_position($node);
my $sup = $node->safe_psql('postgres', $supervisor_sql);
like($sup, qr/^\d+$/, "one supervisor ($sup)");
my $t0 = time;
my ($ret, $out, $err) = $node->psql('postgres', 'DROP EXTENSION ordflow', timeout => 60);
my $dt = time - $t0;
is($ret, 0, 'DROP EXTENSION ordflow succeeds while the workers run') or diag $err;
cmp_ok($dt, '<', 30, sprintf('... and does not hang (%.1f s)', $dt));
ok(OrdflowTest::wait_for($node, $no_workers_sql, 't', 60),
	'generator, relay and consumers exit after the drop');
sleep 5;
is($node->safe_psql('postgres', $workers_sql), 0, 'and are not relaunched');
is($node->safe_psql('postgres', $supervisor_sql), $sup,
	'the supervisor stays, same pid, waiting');
ok( OrdflowTest::wait_for($node, q{
		SELECT wait_event_type = 'Extension' OR state = 'idle' OR state IS NULL
		  FROM pg_stat_activity WHERE backend_type = 'ordflow supervisor'}, 't', 30),
	'the supervisor waits quietly');
my $log = OrdflowInvariants::log_since($node, $logpos);
unlike($log, qr/terminated by signal|was terminated|PANIC/, 'no crash after the drop');
my $exits = () = $log =~ /background worker "ordflow[^"]*" \(PID \d+\) exited with exit code [1-9]/g;
cmp_ok($exits, '<=', 4, "no worker restarts in a loop ($exits non-zero exits)");
# errors of the ordflow workers themselves; SIGTERM's "terminating
# background worker ... due to administrator command" is how the
# supervisor stops them
my @errors = grep { /\] ordflow \w+ (?:ERROR|FATAL|PANIC)/ && !/due to administrator command/ }
  split /\n/, $log;
note "log lines with ERROR/FATAL after the drop:\n" . join("\n", @errors);
cmp_ok(scalar(@errors), '<=', 4, 'the workers exit quietly (a handful of error lines at most)');
like($log, qr/extension dropped from database "postgres"/, 'the supervisor logs the drop once');

# --- CREATE EXTENSION again ----------------------------------------------
$sql->('CREATE EXTENSION ordflow');
OrdflowInvariants::create_users($node, 10);
ok(OrdflowInvariants::wait_connected($node, 2, 90), 'workers are back after CREATE EXTENSION')
  or diag $sql->('SELECT * FROM ordflow.status()');
is($sql->(q{SELECT running FROM ordflow.generator_state}), 'f',
	'the new extension starts with the generator stopped');
my $id = $sql->(q{SELECT ordflow.place_order(1, 10, 'AGAIN', NULL)});
ok( OrdflowTest::wait_for($node,
		"SELECT status FROM ordflow.orders WHERE order_id = $id", 'completed', 60),
	'a place_order() after re-creation gets processed (completed)');
is($sql->('SELECT credit_balance FROM ordflow.users WHERE uid = 1'), '290',
	'and debits its user');

$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 300 FROM ordflow.metrics()', 't', 60),
	'the generator works again');

# --- DROP DATABASE of another database while the workers run -------------
$sql->('CREATE DATABASE other');
$node->safe_psql('other', 'CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) AS g');
# the workers serve ordflow.database only: the extension is refused elsewhere
($ret, $out, $err) = $node->psql('other', 'CREATE EXTENSION ordflow');
isnt($ret, 0, 'CREATE EXTENSION in another database is refused');
like($err, qr/ordflow/, "... with a clear error ($err)");
$t0 = time;
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE other', timeout => 60);
$dt = time - $t0;
is($ret, 0, 'DROP DATABASE of another database succeeds while the workers run') or diag $err;
cmp_ok($dt, '<', 30, sprintf('... promptly (%.1f s)', $dt));
my $done = $sql->('SELECT orders_processed FROM ordflow.metrics()');
ok( OrdflowTest::wait_for($node,
		"SELECT orders_processed >= $done + 300 FROM ordflow.metrics()", 't', 60),
	'the pipeline keeps working after it');

OrdflowInvariants::stop_and_drain($node, label => 'after re-creation');
OrdflowInvariants::check($node, 'after re-creation', min_orders => 600, order_ids => [$id]);
OrdflowInvariants::workers_stable($node, 'after re-creation', consumers => 2);
unlike(OrdflowInvariants::log_since($node, 0), qr/terminated by signal/,
	'no backend crashed on the first node');
$node->stop;

# --- a server where the extension is created after start-up ---------------
my $late = OrdflowTest::new_node('late', broker => $mq, consumers => 1);
$sql = sub { $late->safe_psql('postgres', $_[0]) };
ok(OrdflowTest::wait_for($late, q{
		SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ordflow supervisor'},
		'1', 60),
	'without the extension, the supervisor runs');
my $late_sup = $late->safe_psql('postgres', $supervisor_sql);
sleep 4;
is($late->safe_psql('postgres', $workers_sql), 0, 'and starts no other worker');
is($late->safe_psql('postgres', $supervisor_sql), $late_sup, 'the supervisor is not restarting');
$sql->('CREATE EXTENSION ordflow');
OrdflowInvariants::create_users($late, 10);
ok(OrdflowInvariants::wait_connected($late, 1, 90), 'CREATE EXTENSION brings the pipeline up')
  or diag $sql->('SELECT * FROM ordflow.status()');
$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($late,
		'SELECT orders_processed >= 600 FROM ordflow.metrics()', 't', 60),
	'the late-created extension processes orders');
OrdflowInvariants::stop_and_drain($late, label => 'late creation');
OrdflowInvariants::check($late, 'late creation', min_orders => 600);
OrdflowInvariants::workers_stable($late, 'late creation');
unlike(OrdflowInvariants::log_since($late, 0), qr/terminated by signal/,
	'no backend crashed on the second node');

$late->stop;
$mq->stop;
done_testing();
