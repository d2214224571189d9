
# place_order(): published only if its transaction commits (a rolled-back
# order, or one inside a rolled-back savepoint, never reaches the broker);
# a committed one is processed with the relay's message properties as the
# contract says; status() rows; metrics() against a recompute, after
# truncate() and after more orders.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('place', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }

ok(OrdflowInvariants::wait_connected($node, 1, 90), 'relay and consumer 0 connected');

# A tap on the exchange sees every message the relay publishes.
my $tap = 'test.tap.orders';
$mq->declare_queue($tap, bind => [ 'ordflow', 'order.#' ]);

my $uid = sq(q{SELECT ordflow.create_user('Ann', 'Place', 100)});

my $recompute = OrdflowTest::metrics_recompute_sql();

# ---------------------------------------------------------------------------
# Rolled back: never published.

my $out = sq(qq{
	BEGIN;
	SELECT ordflow.place_order($uid, 7, 'RB1');
	SELECT count(*) FROM ordflow.outbox;
	ROLLBACK;});
my ($rb1, $outbox_in_tx) = split /\n/, $out;
like($rb1, qr/^\d+$/, "place_order returned an id ($rb1) in the doomed transaction");
is($outbox_in_tx, 1, 'the doomed transaction saw its outbox row');

# A savepoint rolled back, then a second order committed in the same transaction.
$out = sq(qq{
	BEGIN;
	SAVEPOINT s1;
	SELECT ordflow.place_order($uid, 8, 'RB2');
	ROLLBACK TO SAVEPOINT s1;
	SELECT ordflow.place_order($uid, 9, 'OK1');
	COMMIT;});
my ($rb2, $ok1) = split /\n/, $out;
like($rb2, qr/^\d+$/, "order $rb2 placed inside a savepoint that is rolled back");
like($ok1, qr/^\d+$/, "order $ok1 placed after it and committed");

# A later committed order: once it is processed, the relay has had every
# chance to publish the rolled-back ones.
my $ok2 = sq(qq{SELECT ordflow.place_order($uid, 10, 'OK2')});
ok( OrdflowTest::wait_for($node, qq{
		SELECT count(*) FROM ordflow.orders WHERE order_id IN ($ok1, $ok2) AND status = 'completed'},
		'2', 60),
	'the committed orders are processed');

is(sq("SELECT count(*) FROM ordflow.orders WHERE order_id IN ($rb1, $rb2)"), '0',
	'rolled-back orders do not exist');
is(sq("SELECT count(*) FROM ordflow.order_events WHERE order_id IN ($rb1, $rb2)"), '0',
	'rolled-back orders have no events');
ok(OrdflowTest::wait_for($node, 'SELECT count(*) FROM ordflow.outbox', '0', 30),
	'the outbox is empty');
is(sq('SELECT count(*) FROM ordflow.dead_letters'), '0', 'no dead letters');

my @msgs = $mq->get_messages($tap, count => 100, wait => 2);
my %seen;
my $bad_props = 0;
for my $m (@msgs)
{
	my $j = eval { decode_json($m->{body}) };
	if (!$j) { $bad_props++; next; }
	$seen{ $j->{order_id} }++;
	$bad_props++
	  unless ($m->{delivery_mode} // '') eq '2'
	  && ($m->{content_type} // '') eq 'application/json'
	  && ($m->{headers}{'x-ordflow-source'} // '') eq 'outbox'
	  && $m->{routing_key} eq 'order.created';
}
ok(!$seen{$rb1}, "rolled-back order $rb1 was never published");
ok(!$seen{$rb2}, "order $rb2 of a rolled-back savepoint was never published");
ok($seen{$ok1} && $seen{$ok2}, 'both committed orders were published');
is($bad_props, 0, 'every published message is persistent JSON from the outbox on order.created');

# The message body is the contract's order JSON.
{
	my ($m) = grep { (eval { decode_json($_->{body})->{order_id} } // 0) == $ok2 } @msgs;
	my $j = decode_json($m->{body});
	is_deeply([ sort keys %$j ], [qw(amount created_at order_id quantity symbol uid)],
		'published order carries exactly the contract fields');
	is($j->{uid}, $uid, 'uid');
	is($j->{amount}, 10, 'amount');
	is($j->{symbol}, 'OK2', 'symbol');
	ok(!defined $j->{quantity}, 'quantity null');
	like($j->{created_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, 'created_at in RFC 3339 UTC');
	is( sq("SELECT created_at = '$j->{created_at}'::timestamptz FROM ordflow.orders WHERE order_id = $ok2"),
		't', 'created_at is the order row\'s');
}

# The committed orders: price, events, balance, source.
is(sq("SELECT string_agg(status || ':' || execution_price || ':' || source, ',' ORDER BY order_id)"
	  . " FROM ordflow.orders WHERE order_id IN ($ok1, $ok2)"),
	'completed:9:sql,completed:10:sql', 'committed orders completed at their amount');
is(sq("SELECT credit_balance FROM ordflow.users WHERE uid = $uid"), '81', 'balance 100 - 9 - 10');
is(sq("SELECT string_agg(status::text, ',' ORDER BY event_id) FROM ordflow.order_events WHERE order_id = $ok2"),
	'initialised,completed', 'two events: initialised then completed');

# ---------------------------------------------------------------------------
# status(): one row per worker, pids of live ordflow backends.

my $st = sq(q{SELECT string_agg(worker, ',' ORDER BY worker) FROM ordflow.status()});
is($st, 'consumer 0,generator,relay,supervisor', 'status() has one row per worker');
is(sq(q{SELECT count(*) FROM ordflow.status() s
		 JOIN pg_stat_activity a ON a.pid = s.pid
		WHERE a.backend_type LIKE 'ordflow%'}),
	'4', 'every status() pid is an ordflow backend in pg_stat_activity');
is(sq(q{SELECT count(DISTINCT pid) FROM ordflow.status()}), '4', 'distinct pids');
is(sq(q{SELECT string_agg(worker || '=' || connected, ',' ORDER BY worker) FROM ordflow.status()
		WHERE worker IN ('relay', 'consumer 0')}),
	'consumer 0=true,relay=true', 'relay and consumer are connected');
is(sq(q{SELECT bool_and(since IS NOT NULL AND since <= now() AND state <> '' AND processed >= 0)
		FROM ordflow.status()}),
	't', 'every row has a since, a state and a processed count');
ok(sq(q{SELECT processed FROM ordflow.status() WHERE worker = 'relay'}) >= 2,
	'the relay counts what it published');
ok(sq(q{SELECT processed FROM ordflow.status() WHERE worker = 'consumer 0'}) >= 2,
	'the consumer counts what it processed');
is(sq(q{SELECT a.backend_type FROM ordflow.status() s JOIN pg_stat_activity a USING (pid)
		WHERE s.worker = 'consumer 0'}),
	'ordflow consumer', 'the consumer\'s backend_type');

# ---------------------------------------------------------------------------
# metrics(): a recompute now, zeros after truncate(), a recompute after more.

is(sq($recompute), 't|t|t|t|t|t', 'metrics() equals a recompute from orders');

sq('SELECT ordflow.truncate()');
is(sq(q{SELECT orders_processed, orders_completed, orders_declined,
			   avg_execution_price IS NULL, total_execution_amount,
			   latency_p50_ms IS NULL, latency_p99_ms IS NULL, last_processed_at IS NULL
		  FROM ordflow.metrics()}),
	'0|0|0|t|0|t|t|t', 'metrics() is all zero after truncate()');
is(sq(q{SELECT (SELECT count(*) FROM ordflow.orders) + (SELECT count(*) FROM ordflow.order_events)
			 + (SELECT count(*) FROM ordflow.outbox) + (SELECT count(*) FROM ordflow.dead_letters)}),
	'0', 'truncate() emptied orders, events, outbox and dead letters');
is(sq("SELECT count(*) FROM ordflow.users WHERE uid = $uid"), '1', 'truncate() kept the users');

# More orders: completed, declined for insufficient balance, unknown user,
# anonymous quantity orders, several in one transaction.
my $ids = sq(qq{
	BEGIN;
	SELECT ordflow.place_order($uid, 50);
	SELECT ordflow.place_order($uid, 40, 'BIG');
	SELECT ordflow.place_order($uid, 31);
	SELECT ordflow.place_order(424242, 1);
	SELECT ordflow.place_order(NULL, NULL, 'QTY', 4);
	SELECT ordflow.place_order(quantity => 2);
	COMMIT;});
my @ids = split /\n/, $ids;
is(scalar(@ids), 6, 'six orders placed in one transaction');
my $idlist = join(',', @ids);
ok( OrdflowTest::wait_for($node,
		"SELECT count(*) FROM ordflow.orders WHERE order_id IN ($idlist) AND status <> 'initialised'",
		'6', 60),
	'all six processed');
is(sq("SELECT string_agg(status || ':' || coalesce(notes, '-'), ',' ORDER BY order_id)"
	  . " FROM ordflow.orders WHERE order_id IN ($idlist)"),
	'completed:-,declined:insufficient balance,completed:-,declined:unknown user,completed:-,completed:-',
	'statuses in order: 81-50=31, 40 declined, 31 exactly, unknown user, two anonymous');
is(sq("SELECT credit_balance FROM ordflow.users WHERE uid = $uid"), '0', 'balance spent to zero');
is(sq("SELECT count(*) FROM ordflow.orders WHERE order_id IN ($idlist) AND status = 'declined' AND execution_price IS NOT NULL"),
	'0', 'declined orders have no execution price');
is(sq("SELECT count(*) FROM ordflow.orders WHERE order_id IN ($idlist) AND quantity IS NOT NULL AND amount IS NULL"
	  . " AND execution_price BETWEEN quantity * 1.1 AND quantity * 2.0"),
	'2', 'quantity orders priced within quantity * [1.1, 2.0]');
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE (SELECT count(*) FROM ordflow.order_events e WHERE e.order_id = o.order_id) <> 2}),
	'0', 'every order has exactly two events');
is(sq($recompute), 't|t|t|t|t|t', 'metrics() equals a recompute after truncate() and more orders');
is(sq(q{SELECT orders_processed, orders_completed, orders_declined FROM ordflow.metrics()}),
	'6|4|2', 'metrics() counts only what came after truncate()');

# truncate() while orders are on their way: messages whose rows are gone
# are dropped as stale, never resurrected nor dead-lettered.
my ($lo, $hi) = split /\|/, sq(qq{
	SELECT min(id), max(id) FROM (SELECT ordflow.place_order($uid, 1) AS id
									FROM generate_series(1, 50)) s});
sq('SELECT ordflow.truncate()');
# A message that only claims to come from an outbox (no x-ordflow-node and
# x-ordflow-origin of this database: another database's, or a forgery) is
# an outside order: processed, never dropped as stale.
$mq->publish('order.created', '{"order_id": 88888888, "amount": 5}',
	headers => { 'x-ordflow-source' => 'outbox' });
my $after = sq(q{SELECT ordflow.place_order(NULL, 3, 'AFT')});
ok(OrdflowTest::wait_for($node, "SELECT status FROM ordflow.orders WHERE order_id = $after",
		'completed', 60),
	'an order placed after truncate() is processed');
ok(OrdflowTest::wait_for($node, "SELECT source || ' ' || status FROM ordflow.orders WHERE order_id = 88888888",
		'broker completed', 60),
	'a message that is not provably ours is processed as an outside order');
is(sq("SELECT count(*) FROM ordflow.orders WHERE order_id BETWEEN $lo AND $hi"),
	'0', 'orders truncated in flight did not come back');
is(sq('SELECT count(*) FROM ordflow.dead_letters'), '0', 'stale messages are not dead letters');
is(sq('SELECT count(*) FROM ordflow.order_events'), '4', 'only the new orders have events');
is(sq(q{SELECT orders_processed, orders_completed, orders_declined, total_execution_amount FROM ordflow.metrics()}),
	'2|2|0|8', 'metrics() counts only the orders after truncate()');
is(sq($recompute), 't|t|t|t|t|t', 'metrics() equals a recompute after a truncate() in flight');
# the user had nothing left: whatever of the 50 got processed was declined
is(sq("SELECT credit_balance = 0 FROM ordflow.users WHERE uid = $uid"), 't',
	'the balance is still zero');

# Invalid arguments change nothing.
my ($ret, $o, $e) = $node->psql('postgres', 'SELECT ordflow.place_order(amount => -1)');
isnt($ret, 0, 'a negative amount is refused');
($ret, $o, $e) = $node->psql('postgres', 'SELECT ordflow.place_order()');
isnt($ret, 0, 'an order with neither amount nor quantity is refused');
is(sq('SELECT count(*) FROM ordflow.orders'), '2', 'refused orders left nothing behind');

ok(!$node->log_contains('terminated by signal'), 'no worker crashed');
# ---------------------------------------------------------------------------
# place_orders(): a batch placed in one call is published and processed
# like place_order()'s orders; a rolled-back batch never is.
{
	my $bulk_uid = sq(q{SELECT ordflow.create_user('Bea', 'Bulk', 1000)});
	sq(q{BEGIN; SELECT ordflow.place_orders('[{"amount": 7, "symbol": "RBX"}]'); ROLLBACK;});
	my @bulk = split /\n/, sq(qq{
		SELECT ordflow.place_orders(
			'[{"uid": $bulk_uid, "amount": 100, "symbol": "B1"},
			  {"uid": $bulk_uid, "amount": 2000, "symbol": "B2"},
			  {"uid": $bulk_uid, "quantity": 3, "symbol": "B3"},
			  {"uid": 424243, "amount": 5}]')});
	is(scalar(@bulk), 4, 'place_orders returned four ids');
	my $bl = join(',', @bulk);
	ok( OrdflowTest::wait_for($node,
			"SELECT count(*) FROM ordflow.orders WHERE order_id IN ($bl) AND status <> 'initialised'",
			'4', 60),
		'the four orders of place_orders are processed');
	is(sq("SELECT string_agg(symbol || ':' || status || ':' || coalesce(notes, '-'), ',' ORDER BY order_id)"
		  . " FROM ordflow.orders WHERE order_id IN ($bl) AND symbol IS NOT NULL"),
		'B1:completed:-,B2:declined:insufficient balance,B3:completed:-',
		'completed, declined for balance, priced by quantity');
	is(sq("SELECT notes FROM ordflow.orders WHERE order_id = $bulk[3]"), 'unknown user',
		'the order of an unknown user is declined');
	is(sq(q{SELECT count(*) FROM ordflow.orders o
			 WHERE o.order_id IN (} . $bl . q{)
			   AND (SELECT count(*) FROM ordflow.order_events e WHERE e.order_id = o.order_id) <> 2}),
		'0', 'every order of the batch has two events');
	ok(OrdflowTest::wait_for($node, 'SELECT count(*) FROM ordflow.outbox', '0', 30),
		'the outbox is empty again');
	my %pub;
	for my $m ($mq->get_messages($tap, count => 1000, wait => 2))
	{
		my $j = eval { decode_json($m->{body}) } or next;
		$pub{ $j->{order_id} } = $j;
	}
	ok((grep { $pub{$_} } @bulk) == 4, 'all four were published');
	ok(!(grep { ($_->{symbol} // '') eq 'RBX' } values %pub),
		'the rolled-back batch was never published');
	is_deeply([ sort keys %{ $pub{ $bulk[0] } } ],
		[qw(amount created_at order_id quantity symbol uid)],
		'a batch order carries exactly the contract fields');
	is(sq("SELECT count(*) FROM ordflow.dead_letters"), '0', 'no dead letters');
}

$node->stop;
$mq->stop;
done_testing();
