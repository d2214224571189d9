
# The generator: start()/stop()/start() return values and effect, stop()
# twice, start() after stop() (the first seed could never restart), a new
# rate, the shape of generated orders, and a run state and rate that
# survive a server restart.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('gen', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub gen_count { return sq(q{SELECT count(*) FROM ordflow.orders WHERE source = 'generator'}); }

ok(OrdflowInvariants::wait_connected($node, 1, 90), 'relay and consumer 0 connected');
ok( OrdflowTest::wait_for($node, q{SELECT count(*) FROM ordflow.status() WHERE worker = 'generator'},
		'1', 60),
	'the generator worker runs');

# Users with ample credit, so that generated orders mostly complete.
my @uids = split /\n/, sq(q{
	SELECT ordflow.create_user('gen' || g, 'user', 1000000) FROM generate_series(1, 3) g});
is(scalar(@uids), 3, 'three users');

# ---------------------------------------------------------------------------
# Stopped at first; start() at the default rate (0.5/s) makes orders.

is(sq('SELECT running FROM ordflow.generator_state'), 'f', 'the generator starts out stopped');
sleep 2.5;
is(gen_count(), '0', 'no orders while stopped');

is(sq('SELECT ordflow.start()'), 't', 'start() returns true when it was stopped');
ok(OrdflowTest::wait_for($node, q{SELECT count(*) >= 2 FROM ordflow.orders WHERE source = 'generator'},
		't', 30),
	'orders appear at the default rate');
is(sq('SELECT ordflow.start()'), 'f', 'start() returns false when already running');

# The default rate is slow: a few seconds give a handful of orders, not dozens.
{
	my $c0 = gen_count();
	sleep 4;
	my $d = gen_count() - $c0;
	ok($d >= 1 && $d <= 5, "about 0.5 orders/s at the default rate ($d in 4 s)");
}

# ---------------------------------------------------------------------------
# stop(): no more orders; twice is harmless; a rolled-back stop() is no stop.

is(sq('SELECT ordflow.stop()'), 't', 'stop() returns true when it was running');
sleep 1;
my $after_stop = gen_count();
is(sq('SELECT ordflow.stop()'), 'f', 'stop() again returns false');
is(sq('SELECT running FROM ordflow.generator_state'), 'f', 'stored state: stopped');
sleep 3;
is(gen_count(), $after_stop, 'no orders are made after stop()');
ok(OrdflowTest::wait_for($node, q{SELECT state FROM ordflow.status() WHERE worker = 'generator'},
		'stopped', 10),
	'status() shows the generator stopped');

# ---------------------------------------------------------------------------
# start(rate) after stop() works, and changes the rate.

my $c0 = gen_count();
my $t0 = time;
is(sq('SELECT ordflow.start(20)'), 't', 'start(20) after stop() returns true');
ok(OrdflowTest::wait_for($node, "SELECT count(*) > $c0 + 20 FROM ordflow.orders WHERE source = 'generator'",
		't', 30),
	'orders flow again after a restart of the generator');
is(sq('SELECT rate FROM ordflow.generator_state'), '20', 'stored rate 20');

# A stop() that rolls back leaves it running.
sq('BEGIN; SELECT ordflow.stop(); ROLLBACK;');
is(sq('SELECT running FROM ordflow.generator_state'), 't', 'a rolled-back stop() changed nothing stored');
{
	my $c = gen_count();
	ok(OrdflowTest::wait_for($node, "SELECT count(*) > $c + 5 FROM ordflow.orders WHERE source = 'generator'",
			't', 20),
		'the generator keeps running after a rolled-back stop()');
}

# Rate change while running: 200/s for about 3 s.
my $r0 = gen_count();
my $ts = time;
is(sq('SELECT ordflow.start(200)'), 'f', 'start(200) while running returns false');
sleep 3;
is(sq('SELECT ordflow.stop()'), 't', 'stop() after the fast run');
my $elapsed = time - $ts;
sleep 1;
my $made = gen_count() - $r0;
my $expect = 200 * $elapsed;
note sprintf('made %d orders in %.2f s at rate 200', $made, $elapsed);
ok($made >= 300 && $made >= 0.5 * $expect && $made <= 1.5 * $expect + 20,
	sprintf('about 200 orders/s: %d in %.1f s', $made, $elapsed));

# Invalid rates are refused and change nothing.
for my $bad ('0', '-1', q{'NaN'}, q{'Infinity'})
{
	my ($ret, $o, $e) = $node->psql('postgres', "SELECT ordflow.start($bad)");
	isnt($ret, 0, "start($bad) is refused");
	like($e, qr/invalid generator rate/, "start($bad): clear message");
}
is(sq('SELECT running FROM ordflow.generator_state'), 'f', 'refused start() left it stopped');

# ---------------------------------------------------------------------------
# Every generated order has the contract's shape, and gets processed.

ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'}, '0', 90),
	'every generated order is processed');
my $uidlist = join(',', @uids);
is( sq(qq{SELECT count(*) FROM ordflow.orders WHERE source = 'generator'
		 AND NOT (symbol ~ '^[A-Z0-9]{3}\$' AND quantity BETWEEN 1 AND 10
				  AND amount IS NULL AND uid IN ($uidlist))}),
	'0', 'generated orders: 3-char [A-Z0-9] symbol, quantity 1..10, no amount, an existing uid');
is(sq(q{SELECT count(DISTINCT uid) FROM ordflow.orders WHERE source = 'generator'}), '3',
	'the generator picks among all users');
ok(sq(q{SELECT count(DISTINCT symbol) FROM ordflow.orders WHERE source = 'generator'}) > 100,
	'symbols are random');
is(sq(q{SELECT count(DISTINCT quantity) FROM ordflow.orders WHERE source = 'generator'}), '10',
	'quantities cover 1..10');
is( sq(q{SELECT count(*) FROM ordflow.orders WHERE source = 'generator' AND status = 'completed'
		 AND NOT execution_price BETWEEN quantity * 1.1 AND quantity * 2.0}),
	'0', 'completed generated orders are priced within quantity * [1.1, 2.0]');
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE (SELECT count(*) FROM ordflow.order_events e WHERE e.order_id = o.order_id) <> 2}),
	'0', 'every generated order has exactly two events');
is(sq(q{SELECT count(*) FROM ordflow.users u
		 WHERE u.credit_balance <> u.credit_limit - coalesce((SELECT sum(execution_price)
				FROM ordflow.orders o WHERE o.uid = u.uid AND o.status = 'completed'), 0)}),
	'0', 'balances equal limit minus completed prices');
is(sq(q{WITH r AS (SELECT count(*) FILTER (WHERE status <> 'initialised') AS p,
					   count(*) FILTER (WHERE status = 'completed') AS c,
					   coalesce(sum(execution_price) FILTER (WHERE status = 'completed'), 0) AS s
				  FROM ordflow.orders)
		SELECT m.orders_processed = r.p AND m.orders_completed = r.c AND m.total_execution_amount = r.s
		  FROM ordflow.metrics() m, r}),
	't', 'metrics() equals a recompute');
is(sq('SELECT count(*) FROM ordflow.outbox'), '0', 'the outbox is drained');

# With no users at all, generated orders are anonymous.
sq('SELECT ordflow.truncate(true)');
sq('SELECT ordflow.start(10)');
ok(OrdflowTest::wait_for($node, q{SELECT count(*) >= 5 FROM ordflow.orders WHERE source = 'generator'},
		't', 30),
	'orders are generated with no users');
sq('SELECT ordflow.stop()');
is(sq(q{SELECT count(*) FROM ordflow.orders WHERE source = 'generator' AND uid IS NOT NULL}), '0',
	'with no users, generated orders have a null uid');
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) FROM ordflow.orders WHERE status <> 'completed'}, '0', 60),
	'anonymous generated orders complete');

# ---------------------------------------------------------------------------
# The run state and the rate survive a server restart.

sq(q{SELECT ordflow.create_user('after', 'restart', 1000000)});
is(sq('SELECT ordflow.start(50)'), 't', 'start(50) before the restart');
$node->restart;
ok(OrdflowTest::wait_for($node, q{SELECT count(*) FROM ordflow.status() WHERE worker = 'generator'},
		'1', 60),
	'generator worker back after the restart');
is(sq('SELECT running FROM ordflow.generator_state'), 't', 'stored state still running');
{
	my $c = gen_count();
	ok(OrdflowTest::wait_for($node, "SELECT count(*) > $c + 5 FROM ordflow.orders WHERE source = 'generator'",
			't', 60),
		'a started generator is running after the restart');
	# at the remembered 50/s, not the default 0.5/s
	my $c1 = gen_count();
	sleep 3;
	my $d = gen_count() - $c1;
	ok($d >= 40, "the rate survived the restart ($d orders in 3 s at 50/s)");
}
is(sq('SELECT ordflow.start()'), 'f', 'start() after the restart sees it running');

is(sq('SELECT ordflow.stop()'), 't', 'stop() before the second restart');
$node->restart;
ok(OrdflowTest::wait_for($node, q{SELECT count(*) FROM ordflow.status() WHERE worker = 'generator'},
		'1', 60),
	'generator worker back after the second restart');
{
	my $c = gen_count();
	sleep 4;
	is(gen_count(), $c, 'a stopped generator stays stopped after a restart');
}
is(sq('SELECT running FROM ordflow.generator_state'), 'f', 'stored state still stopped');
is(sq(q{SELECT state FROM ordflow.status() WHERE worker = 'generator'}), 'stopped',
	'status() shows it stopped');
is(sq('SELECT ordflow.start(5)'), 't', 'and it can be started again');
{
	my $c = gen_count();
	ok(OrdflowTest::wait_for($node, "SELECT count(*) > $c FROM ordflow.orders WHERE source = 'generator'",
			't', 30),
		'orders flow after starting it again');
}
sq('SELECT ordflow.stop()');

ok(!$node->log_contains('terminated by signal'), 'no worker crashed');
$node->stop;
$mq->stop;
done_testing();
