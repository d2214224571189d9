
# Several consumers at once never double-debit a user: three consumers, one
# user with credit_limit 100, 200 outside orders of amount 1..5 for that user
# (sum 600) each published twice by two concurrent producers, plus orders
# placed from SQL for the same user at the same time.  The balance never goes
# below zero, equals the limit minus the completed prices, every order is
# processed exactly once, and metrics() equals a recompute.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use IPC::Run;
use List::Util qw(shuffle sum);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $mq = OrdflowTest::start_broker();
# Small batches and prefetch spread the messages over the three consumers;
# round-robin (no consumer priorities), or consumer 0 would take them all
# whenever it keeps up with the producer.
my $node = OrdflowTest::new_node('conc', broker => $mq, consumers => 3,
	extra => "ordflow.batch_size = 4\nordflow.prefetch = 8\nordflow.consumer_priorities = off\n");
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }

ok(OrdflowInvariants::wait_connected($node, 3, 90), 'relay and three consumers connected');
is(sq(q{SELECT string_agg(worker, ',' ORDER BY worker) FROM ordflow.status() WHERE worker LIKE 'consumer%'}),
	'consumer 0,consumer 1,consumer 2', 'status() shows three consumers');
is(sq(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ordflow consumer'}), '3',
	'three consumer backends in pg_stat_activity');

my $uid = sq(q{SELECT ordflow.create_user('Hot', 'Spot', 100)});
# a second user with ample credit, interleaved, to make batches mix users
my $other = sq(q{SELECT ordflow.create_user('Cold', 'Spot', 100000)});

my $N = 200;
my @bodies;
my %amount;
for my $i (1 .. $N)
{
	my $id = 7000000 + $i;
	my $amt = 1 + ($i * 7) % 5;    # 1..5
	$amount{$id} = $amt;
	push @bodies, qq({"order_id": $id, "uid": $uid, "symbol": "HOT", "amount": $amt});
}
my @other;
for my $i (1 .. 50)
{
	my $id = 7100000 + $i;
	push @other, qq({"order_id": $id, "uid": $other, "symbol": "CLD", "quantity": $i});
}

# Watch the balance while everything runs: it must never be negative.
my $min_seen = 100;
my $watch_bad = 0;

# Two producers at once, each with every message in its own random order:
# every order arrives twice, the copies on different consumers.
my $client = OrdflowTest::amqp_client();
my @pub;
for my $p (1 .. 2)
{
	my $in = join('', map { "$_\n" } shuffle(@bodies, @other));
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ $client, $mq->url, 'publish', '--exchange', 'ordflow', '--routing-key', 'order.created',
			'--persistent', '--content-type', 'application/json', '--lines' ],
		'<', \$in, '>', \$out, '2>', \$err);
	push @pub, [ $h, \$err ];
}
# Meanwhile, orders for the same user from SQL, committed one by one.
my @sql_ids;
for my $k (1 .. 20)
{
	push @sql_ids, sq("SELECT ordflow.place_order($uid, 2, 'SQL')");
	my $b = sq("SELECT credit_balance FROM ordflow.users WHERE uid = $uid");
	$min_seen = $b if $b < $min_seen;
	$watch_bad++ if $b < 0;
}
for my $p (@pub)
{
	my ($h, $err) = @$p;
	ok($h->finish, 'producer finished with every message confirmed') or diag $$err;
}

my $total = $N + 50 + scalar(@sql_ids);
my $deadline = time + 120;
while (time < $deadline)
{
	my $b = sq("SELECT credit_balance FROM ordflow.users WHERE uid = $uid");
	$min_seen = $b if $b < $min_seen;
	$watch_bad++ if $b < 0;
	last if sq(q{SELECT count(*) FROM ordflow.orders WHERE status <> 'initialised'}) == $total;
	sleep 0.2;
}
is(sq(q{SELECT count(*) FROM ordflow.orders WHERE status <> 'initialised'}), $total,
	"all $total orders processed");
is($watch_bad, 0, "the balance was never seen below zero (lowest seen: $min_seen)");

# Let the duplicates drain too: the queue empties once every copy is acked.
my $drained = 0;
for (1 .. 200)
{
	my $s = $mq->queue_stats('ordflow.orders');
	if ($s && $s->{messages} == 0) { $drained = 1; last; }
	sleep 0.3;
}
ok($drained, 'every copy was consumed and acknowledged');

# ---------------------------------------------------------------------------

is(sq('SELECT count(*) FROM ordflow.orders'), $total, "exactly $total orders, no more");
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE (SELECT count(*) FROM ordflow.order_events e WHERE e.order_id = o.order_id) <> 2}),
	'0', 'every order processed exactly once (two events each)');
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE NOT EXISTS (SELECT 1 FROM ordflow.order_events e
							WHERE e.order_id = o.order_id AND e.status = 'initialised')
			OR NOT EXISTS (SELECT 1 FROM ordflow.order_events e
							WHERE e.order_id = o.order_id AND e.status = o.status)}),
	'0', 'one initialised and one final event per order');
is(sq('SELECT count(*) FROM ordflow.dead_letters'), '0', 'exact duplicates are never dead letters');

my ($bal, $lim) = split /\|/, sq("SELECT credit_balance, credit_limit FROM ordflow.users WHERE uid = $uid");
ok($bal >= 0, "balance $bal is not negative");
is(sq(qq{SELECT u.credit_balance = u.credit_limit - coalesce(sum(o.execution_price), 0)
		 FROM ordflow.users u LEFT JOIN ordflow.orders o ON o.uid = u.uid AND o.status = 'completed'
		WHERE u.uid = $uid GROUP BY u.uid, u.credit_balance, u.credit_limit}),
	't', 'balance = limit - sum of completed prices');
ok(sq("SELECT coalesce(sum(execution_price), 0) FROM ordflow.orders WHERE uid = $uid AND status = 'completed'") <= 100,
	'completed orders of the user sum to at most the limit');
ok(sq("SELECT count(*) FROM ordflow.orders WHERE uid = $uid AND status = 'completed'") >= 20,
	'a fair share of the orders completed');
# The balance only ever shrinks, so an order declined for lack of credit
# asked for more than what is left now.
is(sq("SELECT count(*) FROM ordflow.orders WHERE uid = $uid AND status = 'declined'"
	  . " AND (notes IS DISTINCT FROM 'insufficient balance' OR amount <= $bal)"),
	'0', 'every declined order really exceeded the balance');
ok(sq("SELECT count(*) FROM ordflow.orders WHERE uid = $uid AND status = 'declined'") > 0,
	'some orders were declined (their sum exceeds the limit)');
is(sq("SELECT count(*) FROM ordflow.orders WHERE uid = $uid AND status = 'completed' AND execution_price <> amount"),
	'0', 'completed prices equal the amounts');
is(sq("SELECT count(*) FROM ordflow.orders WHERE status = 'declined' AND execution_price IS NOT NULL"),
	'0', 'declined orders have no price');
is(sq(q{SELECT count(*) FROM ordflow.users u
		 WHERE u.credit_balance <> u.credit_limit - coalesce((SELECT sum(execution_price)
				FROM ordflow.orders o WHERE o.uid = u.uid AND o.status = 'completed'), 0)}),
	'0', 'the other user\'s balance is right too');
is(sq(qq{SELECT count(*) FROM ordflow.orders WHERE uid = $other AND status <> 'completed'}), '0',
	'the other user\'s orders all completed');

# The outside orders are the ones sent.
is(sq(q{SELECT count(*) FROM ordflow.orders WHERE source = 'broker'}), $N + 50, 'outside orders stored once');
my $values = join(',', map { "($_, $amount{$_})" } sort keys %amount);
is(sq("SELECT count(*) FROM (VALUES $values) v(id, amt) JOIN ordflow.orders o ON o.order_id = v.id"
	  . " WHERE o.amount = v.amt AND o.uid = $uid"),
	$N, 'every outside order kept its amount and uid');

# Metrics.
is(sq(OrdflowTest::metrics_recompute_sql(last_set => 1)),
	't|t|t|t|t|t', 'metrics() equals a recompute from orders');
ok(sq(q{SELECT count(*) FROM ordflow.metrics_totals WHERE processed > 0}) >= 2,
	'more than one consumer did the work');
is(sq(q{SELECT sum(processed) FROM ordflow.metrics_totals}), $total,
	'per-consumer metric rows add up to the orders processed');

is(sq(q{SELECT count(*) FILTER (WHERE connected) FROM ordflow.status() WHERE worker LIKE 'consumer%'}), '3',
	'all three consumers still connected');
ok(!$node->log_contains('terminated by signal'), 'no worker crashed');

$node->stop;
$mq->stop;
done_testing();
