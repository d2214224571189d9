
# No ordflow transaction waits on the network (issue 12, DESIGN "Short
# transactions only").  While the broker blocks publishing (memory alarm)
# for 30 s with orders waiting, pg_stat_activity shows no ordflow backend
# with a transaction older than 1 s, and the relay holds no snapshot
# (backend_xmin null), so the cluster's xmin horizon moves on.  1.0 held
# its DELETE ... RETURNING transaction open for the whole alarm.  Once the
# alarm clears, every order is published exactly once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my ($mq, $node) = OrdflowInvariants::setup('xmin', consumers => 1);
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

# A copy of every order the relay publishes.
$mq->declare_queue('spy.orders', bind => [ 'ordflow', 'order.#' ]);

my $first = $sql->(q{SELECT count(ordflow.place_order(NULL, 2, 'PRE', NULL)) FROM generate_series(1, 50)});
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 50 FROM ordflow.orders WHERE status = 'completed'}, 't', 60),
	'orders are processed before the alarm');
ok(OrdflowTest::wait_for($node, 'SELECT count(*) = 0 FROM ordflow.outbox'), 'outbox drained');
$mq->purge_queue('spy.orders');

$mq->set_watermark('absolute', '1MB');
my $n = 300;
$sql->(qq{SELECT count(ordflow.place_order(NULL, 2, 'BLOCKED', NULL)) FROM generate_series(1, $n)});
ok( OrdflowTest::wait_for($node, q{
		SELECT state ILIKE '%blocked%' FROM ordflow.status() WHERE worker = 'relay'},
		't', 60),
	'status() shows the relay blocked by the broker')
  or diag $sql->('SELECT * FROM ordflow.status()');

# Sample pg_stat_activity for 30 s.
my ($samples, $old_tx, $relay_xmin, $seen_relay) = (0, 0, 0, 0);
my @bad;
my $until = time + 30;
while (time < $until)
{
	my $row = $sql->(q{
		SELECT (SELECT count(*) FROM pg_stat_activity
				 WHERE backend_type LIKE 'ordflow%'
				   AND xact_start < clock_timestamp() - interval '1 s'),
			   (SELECT count(*) FROM pg_stat_activity
				 WHERE backend_type = 'ordflow relay' AND backend_xmin IS NOT NULL),
			   (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ordflow relay'),
			   (SELECT string_agg(backend_type || ' xact_start=' || coalesce(xact_start::text, '-')
								  || ' xmin=' || coalesce(backend_xmin::text, '-')
								  || ' query=' || left(query, 60), '; ')
				  FROM pg_stat_activity WHERE backend_type LIKE 'ordflow%')});
	my ($old, $xmin, $relay, $detail) = split /\|/, $row, 4;
	$samples++;
	$old_tx++ if $old > 0;
	$relay_xmin++ if $xmin > 0;
	$seen_relay++ if $relay > 0;
	push @bad, $detail if ($old > 0 || $xmin > 0) && @bad < 5;
	usleep(250_000);
}
cmp_ok($samples, '>=', 10, "$samples samples of pg_stat_activity during the alarm");
is($seen_relay, $samples, 'the relay was running in every sample');
is($old_tx, 0, 'no ordflow backend had a transaction older than 1 s while the broker blocked')
  or diag join("\n", @bad);
is($relay_xmin, 0, 'the relay held no snapshot (backend_xmin null) while the broker blocked')
  or diag join("\n", @bad);
cmp_ok($sql->(q{SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'}), '>', 0,
	'orders were still waiting: the alarm really held publishing back');
like($sql->(q{SELECT state FROM ordflow.status() WHERE worker = 'relay'}), qr/blocked/i,
	'the relay is still blocked after 30 s');

$mq->set_watermark('0.4');
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 0 FROM ordflow.orders WHERE status = 'initialised'}, 't', 90),
	'every order is processed after the alarm');
ok(OrdflowTest::wait_for($node, 'SELECT count(*) = 0 FROM ordflow.outbox'), 'outbox drained');

# Exactly once: the spy queue holds each order once.
my @msgs = $mq->get_messages('spy.orders', count => 2 * $n, wait => 5);
my %seen;
$seen{ $_->{message_id} }++ for @msgs;
is(scalar @msgs, $n, "$n messages published for $n orders");
is(scalar(keys %seen), $n, 'each order published once');

OrdflowInvariants::check($node, 'after the alarm', dead_letters => 0);
$node->stop;
$mq->stop;
done_testing();
