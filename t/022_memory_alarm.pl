
# The broker raises a memory alarm (vm_memory_high_watermark set tiny)
# while the generator runs at 300 orders/s: publishing blocks.  The relay
# must see connection.blocked and say so in status(), and nothing may hang
# while the alarm is on: ordflow.stop() returns promptly,
# pg_terminate_backend() on the relay takes effect within seconds, and a
# fast server shutdown completes.  With the watermark restored, everything
# drains.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my ($mq, $node) = OrdflowInvariants::setup('alarm', consumers => 1);
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 300 FROM ordflow.metrics()', 't', 60),
	'pipeline processes generated orders before the alarm');

$mq->set_watermark('absolute', '1MB');
ok( OrdflowTest::wait_for($node, q{
		SELECT state ILIKE '%blocked%' FROM ordflow.status() WHERE worker = 'relay'},
		't', 60),
	'status() shows the relay blocked by the broker')
  or diag $sql->('SELECT * FROM ordflow.status()');
my $ob1 = $sql->('SELECT count(*) FROM ordflow.outbox');
sleep 2;
my $ob2 = $sql->('SELECT count(*) FROM ordflow.outbox');
cmp_ok($ob2, '>', $ob1, "orders keep being accepted while publishing is blocked ($ob1 -> $ob2)");

# stop() returns promptly
my $t0 = time;
my ($ret) = $node->psql('postgres', 'SELECT ordflow.stop()', timeout => 30);
my $dt = time - $t0;
is($ret, 0, 'ordflow.stop() succeeds while the broker blocks publishing');
cmp_ok($dt, '<', 5, sprintf('ordflow.stop() returns within 5 s (%.2f s)', $dt));

# pg_terminate_backend on the blocked relay takes effect within seconds
my $relay = $sql->(q{SELECT pid FROM ordflow.status() WHERE worker = 'relay'});
like($relay, qr/^\d+$/, "relay pid $relay");
$t0 = time;
is($sql->("SELECT pg_terminate_backend($relay)"), 't', 'pg_terminate_backend(relay) signals it');
my $gone = OrdflowTest::wait_for($node,
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $relay", 't', 30);
$dt = time - $t0;
ok($gone, 'the terminated relay exits');
cmp_ok($dt, '<', 5, sprintf('... within 5 s (%.2f s)', $dt));

# The supervisor starts a new relay; it finds the alarm on and blocks too.
# Give it orders to publish so it really sits on a blocked connection.
$sql->(q{SELECT count(ordflow.place_order(NULL, NULL, 'ALRM', 2)) FROM generate_series(1, 200)});
ok( OrdflowTest::wait_for($node, qq{
		SELECT pid <> $relay AND state ILIKE '%blocked%'
		  FROM ordflow.status() WHERE worker = 'relay'}, 't', 60),
	'a new relay is started and blocked as well')
  or diag $sql->('SELECT * FROM ordflow.status()');
sleep 2;

# A fast shutdown completes while the alarm is on.
$t0 = time;
my $stopped = $node->stop('fast', fail_ok => 1);
$dt = time - $t0;
ok($stopped, 'fast shutdown succeeds while the broker blocks publishing');
cmp_ok($dt, '<', 10, sprintf('fast shutdown completes within 10 s (%.2f s)', $dt));
if (!$stopped)
{
	# do not leave a hung server behind
	$node->stop('immediate', fail_ok => 1);
}

# Back up with the alarm still on, then lift it: everything drains.
my $logpos = OrdflowInvariants::log_position($node);
$node->start;
ok( OrdflowTest::wait_for($node, q{
		SELECT state ILIKE '%blocked%' FROM ordflow.status() WHERE worker = 'relay'},
		't', 60),
	'after the restart the relay is blocked again while the alarm lasts')
  or diag $sql->('SELECT * FROM ordflow.status()');
$mq->set_watermark('0.4');
ok(OrdflowInvariants::wait_connected($node, 1, 60), 'workers connected after the alarm');
ok( OrdflowTest::wait_for($node, q{
		SELECT state NOT ILIKE '%blocked%' FROM ordflow.status() WHERE worker = 'relay'},
		't', 60),
	'the relay is unblocked when the alarm clears');
my $log = OrdflowInvariants::log_since($node, $logpos);
like($log, qr/broker unblocked publishing/, 'the log shows the unblock');

OrdflowInvariants::stop_and_drain($node, label => 'after the memory alarm');
OrdflowInvariants::check($node, 'after the memory alarm', min_orders => 600);
OrdflowInvariants::workers_stable($node, 'after the memory alarm');

unlike(OrdflowInvariants::log_since($node, 0), qr/terminated by signal/,
	'no backend crashed during the run');

$node->stop;
$mq->stop;
done_testing();
