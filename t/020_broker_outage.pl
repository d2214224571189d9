
# Broker outages while the generator runs at 300 orders/s: the broker's
# application stopped for several seconds (rabbitmqctl stop_app), then the
# broker process killed with kill -9 and restarted.  Orders keep being
# accepted (the outbox grows), each worker logs the loss and the reconnect
# once per outage rather than once per attempt, the workers survive (same
# pids), and the backlog drains with every invariant intact.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $consumers = 2;
# workers that talk to the broker: the relay and the consumers
my $broker_workers = 1 + $consumers;

my ($mq, $node) = OrdflowInvariants::setup('outage', consumers => $consumers);
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 500 FROM ordflow.metrics()', 't', 60),
	'pipeline processes generated orders before the fault');
my $pids_before = OrdflowInvariants::worker_pids($node);

my @placed;

# One outage: $fault stops the broker, $repair brings it back.
sub outage
{
	my ($label, $fault, $repair, $down_secs) = @_;
	my $logpos = OrdflowInvariants::log_position($node);
	my $orders0 = $sql->('SELECT count(*) FROM ordflow.orders');
	my $t0 = time;

	$fault->();
	ok( OrdflowTest::wait_for($node, q{
			SELECT bool_and(NOT connected) FROM ordflow.status()
			 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 30),
		"$label: relay and consumers report the broker lost")
	  or diag $sql->('SELECT * FROM ordflow.status()');
	my $err = $sql->(q{SELECT last_error FROM ordflow.status() WHERE worker = 'relay'});
	isnt($err, '', "$label: the relay's last_error says why ($err)");

	# Orders are still accepted, from SQL and from the generator.
	push @placed, $sql->(q{SELECT ordflow.place_order(1, 5, 'OUTG1', NULL)});
	my $ob1 = $sql->('SELECT count(*) FROM ordflow.outbox');
	my $left = $down_secs - (time - $t0);
	sleep($left) if $left > 0;
	push @placed, $sql->(q{SELECT ordflow.place_order(NULL, NULL, 'OUT2', 3)});
	my $ob2 = $sql->('SELECT count(*) FROM ordflow.outbox');
	my $orders1 = $sql->('SELECT count(*) FROM ordflow.orders');
	cmp_ok($orders1 - $orders0, '>=', 300,
		"$label: orders keep being accepted while the broker is down (+"
		  . ($orders1 - $orders0) . ')');
	cmp_ok($ob2, '>', $ob1, "$label: the outbox grows meanwhile ($ob1 -> $ob2)");
	cmp_ok($ob2, '>=', 300, "$label: the backlog waits in the outbox ($ob2 rows)");

	$repair->();
	ok(OrdflowInvariants::wait_connected($node, $consumers, 120),
		"$label: every worker reconnected after the broker came back")
	  or diag $sql->('SELECT * FROM ordflow.status()');
	ok( OrdflowTest::wait_for($node,
			'SELECT count(*) < 2000 FROM ordflow.outbox', 't', 90),
		"$label: the backlog drains while the generator keeps running")
	  or diag OrdflowInvariants::counts($node);

	# One line per state change, not one per attempt: the broker was down
	# long enough for several attempts with a 0.5 s initial backoff.
	my $log = OrdflowInvariants::log_since($node, $logpos);
	my $lost = () = $log =~ /ordflow: (?:lost the broker connection|could not connect to the broker)/g;
	my $back = () = $log =~ /ordflow: reconnected to the broker/g;
	my $still = () = $log =~ /broker still unreachable/g;
	note "$label: $lost lost/could-not-connect lines, $back reconnected lines";
	cmp_ok($lost, '>=', $broker_workers,
		"$label: each worker logged the loss ($lost lines)");
	cmp_ok($lost, '<=', 2 * $broker_workers,
		"$label: at most two loss lines per worker, not one per attempt ($lost lines)");
	cmp_ok($back, '>=', $broker_workers,
		"$label: each worker logged its reconnection ($back lines)");
	cmp_ok($back, '<=', 2 * $broker_workers,
		"$label: at most two reconnection lines per worker ($back lines)");
	is($still, 0, "$label: retries are not logged at LOG level");
	unlike($log, qr/guest:guest\@/, "$label: the log never shows the broker password");
	unlike($log, qr/terminated by signal|server process .* was terminated/,
		"$label: no backend crashed");
	return;
}

outage('stop_app for 6 s',
	sub { $mq->stop_app },
	sub { $mq->start_app },
	6);

outage('kill -9 of the broker',
	sub { $mq->kill9; ok(!$mq->is_running, 'broker process is gone') },
	sub { $mq->restart },
	5);

my $pids_after = OrdflowInvariants::worker_pids($node);
is_deeply($pids_after, $pids_before,
	'the workers rode out both outages (same pids: reconnected, not restarted)');

OrdflowInvariants::stop_and_drain($node, label => 'after the outages');
OrdflowInvariants::check($node, 'after the outages',
	min_orders => 3000, order_ids => \@placed);
OrdflowInvariants::workers_stable($node, 'after the outages', consumers => $consumers);

$node->stop;
$mq->stop;
done_testing();
