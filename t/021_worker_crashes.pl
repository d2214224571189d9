
# Worker and server crashes while the generator runs at 300 orders/s: a
# consumer killed with kill -9 mid-stream (the postmaster restarts the
# cluster), the relay killed with kill -9 while it waits for the broker's
# confirms of a big batch (published, not yet deleted from the outbox), and
# pg_ctl stop -m immediate.  The generator's run state survives each
# restart, the pipeline comes back by itself, and after the drain every
# committed order was processed exactly once.

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
my ($mq, $node) = OrdflowInvariants::setup('crash', consumers => $consumers,
	extra => "restart_after_crash = on\nordflow.relay_batch_size = 500");
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 500 FROM ordflow.metrics()', 't', 60),
	'pipeline processes generated orders before the faults');

# After a cluster restart: the node answers again, every worker is back
# with a new pid, the generator runs again without being asked, and
# orders are processed again.
sub recovered
{
	my ($label, $old_pids) = @_;
	ok(OrdflowTest::wait_for($node, 'SELECT 1', '1', 120),
		"$label: the server accepts connections again");
	ok(OrdflowInvariants::wait_connected($node, $consumers, 120),
		"$label: relay and consumers are back and connected")
	  or diag $sql->('SELECT * FROM ordflow.status()');
	my $new = OrdflowInvariants::worker_pids($node);
	for my $w ('relay', 'generator', 'consumer 0')
	{
		isnt($new->{$w} // 0, $old_pids->{$w} // 0, "$label: $w runs with a new pid");
	}
	my $orders = $sql->('SELECT count(*) FROM ordflow.orders');
	my $done = $sql->('SELECT orders_processed FROM ordflow.metrics()');
	ok( OrdflowTest::wait_for($node,
			"SELECT count(*) >= $orders + 300 FROM ordflow.orders", 't', 60),
		"$label: the generator runs again after the restart (its state survived)");
	ok( OrdflowTest::wait_for($node,
			"SELECT orders_processed >= $done + 300 FROM ordflow.metrics()", 't', 90),
		"$label: orders are processed again")
	  or diag OrdflowInvariants::counts($node);
	return;
}

my @placed;

# --- 1. kill -9 a consumer mid-stream -------------------------------------
{
	my $label = 'consumer kill -9';
	my $pids = OrdflowInvariants::worker_pids($node);
	my $logpos = OrdflowInvariants::log_position($node);
	# wait until the consumer is busy with a batch, then kill it
	OrdflowTest::wait_for($node, q{
		SELECT count(*) > 0 FROM pg_stat_activity
		 WHERE backend_type = 'ordflow consumer' AND state = 'active'}, 't', 10);
	ok(kill('KILL', $pids->{'consumer 0'}), "$label: consumer 0 (pid $pids->{'consumer 0'}) killed");
	ok( $node->wait_for_log(qr/all server processes terminated; reinitializing/, $logpos),
		"$label: the postmaster restarts the cluster");
	push @placed, $sql->(q{SELECT ordflow.place_order(2, 7, 'CRASH1', NULL)})
	  if OrdflowTest::wait_for($node, 'SELECT 1', '1', 120);
	recovered($label, $pids);
}

# --- 2. kill -9 the relay between publish and delete ----------------------
{
	my $label = 'relay kill -9';
	my $pids = OrdflowInvariants::worker_pids($node);
	my $logpos = OrdflowInvariants::log_position($node);
	# A backlog makes the relay publish full batches; catch it while it
	# waits for the broker's confirms, i.e. after publishing and before its
	# DELETE commits.
	$sql->(q{
		SELECT count(ordflow.place_order(NULL, NULL, 'BIGX', 1 + g % 10))
		  FROM generate_series(1, 20000) AS g});
	my ($ret, $state) = $node->psql('postgres', q{
		DO $$
		DECLARE t timestamptz := clock_timestamp();
		BEGIN
			LOOP
				EXIT WHEN EXISTS (SELECT 1 FROM ordflow.status()
								  WHERE worker = 'relay' AND state = 'waiting for confirms')
					   OR clock_timestamp() > t + interval '20 s';
			END LOOP;
		END $$;
		SELECT state FROM ordflow.status() WHERE worker = 'relay'});
	ok(kill('KILL', $pids->{relay}), "$label: relay (pid $pids->{relay}) killed");
	note "$label: the relay was '$state' when killed";
	ok( $node->wait_for_log(qr/all server processes terminated; reinitializing/, $logpos),
		"$label: the postmaster restarts the cluster");
	recovered($label, $pids);
}

# --- 3. pg_ctl stop -m immediate mid-stream, then start ------------------
{
	my $label = 'immediate shutdown';
	my $pids = OrdflowInvariants::worker_pids($node);
	push @placed, $sql->(q{SELECT ordflow.place_order(3, 11, 'IMMED', NULL)});
	$node->stop('immediate');
	$node->start;
	recovered($label, $pids);
}

my $log = OrdflowInvariants::log_since($node, 0);
my $exits = () = $log =~ /background worker "ordflow[^"]*" \(PID \d+\) exited with exit code 1/g;
note "ordflow workers exiting with code 1 over the run: $exits";

OrdflowInvariants::stop_and_drain($node, label => 'after the crashes');
OrdflowInvariants::check($node, 'after the crashes', min_orders => 21500,
	order_ids => \@placed, symbols => { BIGX => 20000 });
OrdflowInvariants::workers_stable($node, 'after the crashes', consumers => $consumers);

$node->stop;
$mq->stop;
done_testing();
