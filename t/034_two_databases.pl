
# Two ordflow databases on one broker (issue 8, "two ordflow databases on
# one broker lose each other's orders silently").
#
# Nodes A (ordflow.node_id 0) and B (node_id 1) consume the same queues.
# 300 orders placed with place_order() on A are split by the broker between
# both consumers.  1.0's consumer on B took A's outbox messages for orders
# removed by truncate() and acked and dropped them (DEBUG1 only): about half
# vanished.  1.1 drops a message only when x-ordflow-node and
# x-ordflow-origin are its own; B processes A's orders as outside orders.
# Every order is processed exactly once across both databases.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowHostile;

use PostgreSQL::Test::Utils;
use Test::More;

my $mq = OrdflowTest::start_broker();
my $a  = OrdflowTest::new_node('dba', broker => $mq, extra => 'ordflow.node_id = 0');
my $b  = OrdflowTest::new_node('dbb', broker => $mq, extra => 'ordflow.node_id = 1');

for my $n ($a, $b)
{
	$n->safe_psql('postgres', 'CREATE EXTENSION ordflow');
	# the same users on both, with room for every order
	$n->safe_psql('postgres', q{
		INSERT INTO ordflow.users (uid, name, lname, credit_limit, credit_balance)
		SELECT g, 'U' || g, 'L' || g, 1e9, 1e9 FROM generate_series(1, 10) g});
	ok( OrdflowTest::wait_for($n,
			q{SELECT count(*) FILTER (WHERE connected) = 2 FROM ordflow.status()
			   WHERE worker IN ('relay', 'consumer 0')}, 't', 90),
		$n->name . ': relay and consumer connected');
}

my $nord = 300;
my @ids;
for my $chunk (1 .. 3)
{
	push @ids, split /,/, $a->safe_psql('postgres', qq{
		SELECT string_agg(ordflow.place_order(1 + g % 10, 1 + g % 5, 'TWO', NULL)::text, ',')
		  FROM generate_series(1, 100) g});
}
is(scalar @ids, $nord, "$nord orders committed on A");
my $idlist = join(',', @ids);

my $done_a = qq{SELECT count(*) FROM ordflow.orders
				 WHERE order_id IN ($idlist) AND status <> 'initialised'};
my $done_b = qq{SELECT count(*) FROM ordflow.orders
				 WHERE order_id IN ($idlist) AND source = 'broker' AND status <> 'initialised'};

my $deadline = time + 180;
my ($na, $nb) = (0, 0);
while (time < $deadline)
{
	$na = $a->safe_psql('postgres', $done_a);
	$nb = $b->safe_psql('postgres', $done_b);
	last if $na + $nb >= $nord;
	sleep 1;
}
note "processed on A: $na, on B: $nb";
is($na + $nb, $nord, "every one of the $nord orders was processed (A's own rows or B's outside rows)");
cmp_ok($nb, '>', 0, "B received some of A's orders (the case under test)");

# exactly once: no order processed by both
my $on_a = $a->safe_psql('postgres',
	qq{SELECT coalesce(string_agg(order_id::text, ','), '') FROM ordflow.orders
		WHERE order_id IN ($idlist) AND status <> 'initialised'});
my $both = $on_a eq '' ? 0 : $b->safe_psql('postgres',
	qq{SELECT count(*) FROM ordflow.orders WHERE order_id IN ($on_a)});
is($both, 0, 'no order was processed by both databases');
is($b->safe_psql('postgres', qq{SELECT count(*) FROM ordflow.orders WHERE order_id NOT IN ($idlist)}),
	'0', 'B has no orders but those it took from A');
is($b->safe_psql('postgres', q{SELECT count(*) FROM ordflow.orders WHERE source <> 'broker'}),
	'0', "B's rows are outside orders (source 'broker')");
for my $n ($a, $b)
{
	is($n->safe_psql('postgres', 'SELECT count(*) FROM ordflow.dead_letters'), '0',
		$n->name . ': no dead letters');
}
is($mq->queue_depth('ordflow.orders'), 0, 'nothing left in ordflow.orders');
OrdflowHostile::server_alive($a, 'A');
OrdflowHostile::server_alive($b, 'B');

$a->stop;
$b->stop;
$mq->stop;
done_testing();
