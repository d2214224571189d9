
# An outside producer publishes orders to the exchange in the contract's
# JSON: anonymous quantity-only orders, amount orders, orders that exceed a
# user's balance, unknown users, exact and conflicting duplicates, and many
# kinds of malformed message.  Every status, price, event, balance, dead
# letter and metric is checked against what SPEC.md says.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;

use PostgreSQL::Test::Utils;
use Test::More;

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('outside', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub hex_of { return unpack('H*', $_[0]); }

# acks go out just after the commit: give them a moment
sub wait_queue_empty
{
	my ($q) = @_;
	for (1 .. 100)
	{
		my $d = $mq->queue_depth($q);
		return 1 if defined $d && $d == 0;
		select(undef, undef, undef, 0.3);
	}
	diag "queue $q still holds " . ($mq->queue_depth($q) // 'undef') . ' messages';
	return 0;
}

ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected},
		't', 90),
	'consumer 0 is connected');

my $rich = sq(q{SELECT ordflow.create_user('Rich', 'R', 1000)});
my $poor = sq(q{SELECT ordflow.create_user('Poor', 'P', 10)});
my $unknown = 987654321;

# ---------------------------------------------------------------------------
# Phase 1: well-formed orders, in one publishing connection so that they are
# delivered (and credit-checked) in this order.

my @good = (
	# id, body, expected status, expected notes, price rule
	[ 1000001, qq({"order_id": 1000001, "uid": null, "symbol": "ABC", "quantity": 3, "amount": null}),
		'completed', undef, [ 'qty', 3 ] ],
	# no uid key, no created_at, unknown fields ignored
	[ 1000002, qq({"order_id":1000002,"symbol":"X","quantity":1,"extra":{"a":[1,2,{"b":null}]},"note":"hi"}),
		'completed', undef, [ 'qty', 1 ] ],
	[ 1000003, qq({"order_id": 1000003, "uid": $rich, "symbol": "AAPL", "quantity": null, "amount": 250.5, "created_at": "2024-05-01T10:00:00.5+02:00"}),
		'completed', undef, [ 'amount', '250.5' ] ],
	# amount wins over quantity; exponent form
	[ 1000004, qq({"order_id": 1000004, "uid": $rich, "symbol": "MSFT", "quantity": 7, "amount": 1e2}),
		'completed', undef, [ 'amount', '100' ] ],
	# poor user: 10 -> 4 -> (5 declined) -> 0 (exactly the balance) -> declined
	[ 1000005, qq({"order_id": 1000005, "uid": $poor, "amount": 6}),
		'completed', undef, [ 'amount', '6' ] ],
	[ 1000006, qq({"order_id": 1000006, "uid": $poor, "amount": 5}),
		'declined', 'insufficient balance', [ 'none' ] ],
	[ 1000007, qq({"order_id": 1000007, "uid": $poor, "amount": 4.0}),
		'completed', undef, [ 'amount', '4' ] ],
	[ 1000008, qq({"order_id": 1000008, "uid": $poor, "symbol": "ZZZ", "quantity": 1}),
		'declined', 'insufficient balance', [ 'none' ] ],
	[ 1000009, qq({"order_id": 1000009, "uid": $unknown, "symbol": "UNK", "amount": 1}),
		'declined', 'unknown user', [ 'none' ] ],
	[ 1000010, qq({"order_id": 1000010, "uid": -5, "quantity": 2}),
		'declined', 'unknown user', [ 'none' ] ],
	# symbols: escapes and multibyte characters (12 characters, 24 bytes)
	[ 1000011, qq({"order_id": 1000011, "symbol": "A\\u00c4\\"q", "quantity": 10}),
		'completed', undef, [ 'qty', 10 ] ],
	[ 1000012, qq({"order_id": 1000012, "symbol": "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", "amount": 0.01}),
		'completed', undef, [ 'amount', '0.01' ] ],
	# an exact duplicate and a conflicting duplicate inside the same batch
	[ 1000013, qq({"order_id": 1000013, "uid": $rich, "amount": 10}),
		'completed', undef, [ 'amount', '10' ] ],
);
my $dup_in_batch  = qq({"order_id": 1000013, "uid": $rich, "amount": 10});
my $conf_in_batch = qq({"order_id": 1000013, "uid": $rich, "amount": 11});

$mq->publish_many('order.created',
	[ (map { $_->[1] } @good), $dup_in_batch, $conf_in_batch ]);

# Malformed messages: body => reason.  Each is published on its own (some
# contain newlines or NUL bytes).
my @bad = (
	[ 'not json at all',                                   qr/invalid JSON at byte 0/ ],
	[ '',                                                  qr/empty body/ ],
	[ '[{"order_id": 1000100, "quantity": 1}]',            qr/JSON object, not an array/ ],
	[ '"just a string"',                                   qr/must be a JSON object/ ],
	[ '{"uid": 1, "symbol": "ABC", "quantity": 1}',        qr/missing order_id/ ],
	[ '{"order_id": "1000101", "quantity": 1}',            qr/order_id must be an integer/ ],
	[ '{"order_id": 0, "quantity": 1}',                    qr/order_id must be an integer/ ],
	[ '{"order_id": 1000102.5, "quantity": 1}',            qr/order_id must be an integer/ ],
	[ '{"order_id": 1000103, "quantity": -2}',             qr/quantity must be an integer >= 1/ ],
	[ '{"order_id": 1000104, "quantity": 1.5}',            qr/quantity must be an integer >= 1/ ],
	[ '{"order_id": 1000105, "quantity": 0}',              qr/quantity must be an integer >= 1/ ],
	[ '{"order_id": 1000106, "quantity": 99999999999}',    qr/quantity must be an integer >= 1/ ],
	[ '{"order_id": 1000107, "symbol": "ABCDEFGHIJKLM", "quantity": 1}', qr/symbol must be 1-12 characters/ ],
	[ '{"order_id": 1000108, "symbol": "", "quantity": 1}', qr/symbol must be 1-12 characters/ ],
	[ '{"order_id": 1000109, "symbol": 123, "quantity": 1}', qr/symbol must be a string/ ],
	[ '{"order_id": 1000110, "amount": 0}',                qr/amount must be a number > 0/ ],
	[ '{"order_id": 1000111, "amount": -5}',               qr/amount must be a number > 0/ ],
	[ '{"order_id": 1000112, "amount": "NaN"}',            qr/amount must be a number > 0/ ],
	[ '{"order_id": 1000113, "amount": 1e16}',             qr/amount must be a number > 0 and <= 1e15/ ],
	[ '{"order_id": 1000114, "symbol": "' . "\xff\xfe" . '", "quantity": 1}', qr/invalid UTF-8 at byte \d+/ ],
	[ '{"order_id": 1000115, "quantity": 1, "x": ' . ('[' x 100) . (']' x 100) . '}', qr/nesting deeper than 64/ ],
	[ '{"order_id": 1000116, "quantity": null, "amount": null}', qr/quantity or amount must be given/ ],
	[ '{"order_id": 1000117, "symbol": "Q"}',              qr/quantity or amount must be given/ ],
	[ '{"order_id": 1000118, "quantity": 1, "created_at": "yesterday"}', qr/created_at must be an RFC 3339/ ],
	[ '{"order_id": 1000119, "quantity": 1, "created_at": "2026-02-30T00:00:00Z"}', qr/created_at is not a valid calendar date/ ],
	[ '{"order_id": 1000120, "quantity": 1, "created_at": 1700000000}', qr/created_at must be an RFC 3339/ ],
	[ '{"order_id": 1000121, "uid": "7", "quantity": 1}',  qr/uid must be an integer/ ],
	[ '{"order_id": 1000122, "quantity": 1} trailing',     qr/invalid JSON at byte 37: invalid token/ ],
	[ '{"order_id": 1000129, "quantity": 1} {}',           qr/invalid JSON at byte 37: trailing data/ ],
	[ '{"order_id": 1000123, "order_id": 1000124, "quantity": 1}', qr/duplicate key "order_id"/ ],
	[ qq({"order_id": 1000125,\n "quantity": 1}\0),        qr/invalid JSON/ ],
	[ '{"order_id": 1000126, "quantity": 1',               qr/unexpected end of input/ ],
	[ '{"order_id": 1000127, "symbol": "\u0000", "quantity": 1}', qr/invalid JSON at byte 32: \\u0000 is not allowed/ ],
	[ '{"order_id": 1000130, "quantity": 1, "note": "\u0000"}', qr/\\u0000 is not allowed/ ],
	[ '{"order_id": 1000131, "symbol": "\ud800", "quantity": 1}', qr/lone surrogate/ ],
);
for my $b (@bad)
{
	$mq->publish('order.created', $b->[0]);
}
# one on another key bound to order.#: the routing key is recorded as sent
my $odd_key_body = '{"order_id": 1000128, "amount": -1}';
$mq->publish('order.created.v2', $odd_key_body);
push @bad, [ $odd_key_body, qr/amount must be a number > 0/, 'order.created.v2' ];

my @good_ids = map { $_->[0] } @good;
my $good_list = join(',', @good_ids);
my $n_dead_phase1 = scalar(@bad) + 1;    # + the conflicting duplicate

ok( OrdflowTest::wait_for($node,
		"SELECT count(*) FROM ordflow.orders WHERE order_id IN ($good_list) AND status <> 'initialised'",
		scalar(@good), 90),
	'every well-formed outside order is processed');
ok( OrdflowTest::wait_for($node, 'SELECT count(*) FROM ordflow.dead_letters',
		$n_dead_phase1, 90),
	"$n_dead_phase1 dead letters (malformed + conflicting duplicate)");

# ---------------------------------------------------------------------------
# Orders: status, notes, price, source, created_at.

for my $g (@good)
{
	my ($id, $body, $status, $notes, $rule) = @$g;
	my $row = sq("SELECT status, coalesce(notes, '<null>'), coalesce(execution_price::text, '<null>'),"
		  . " source, processed_at IS NOT NULL FROM ordflow.orders WHERE order_id = $id");
	my ($st, $nt, $price, $src, $has_pat) = split /\|/, $row;
	is($st, $status, "order $id: status $status");
	is($nt, defined $notes ? $notes : '<null>', "order $id: notes");
	is($src, 'broker', "order $id: source is broker");
	is($has_pat, 't', "order $id: processed_at is set");
	if ($rule->[0] eq 'none')
	{
		is($price, '<null>', "order $id: declined order has no execution price");
	}
	elsif ($rule->[0] eq 'amount')
	{
		is(sq("SELECT execution_price = $rule->[1] FROM ordflow.orders WHERE order_id = $id"),
			't', "order $id: execution price equals the amount $rule->[1]");
	}
	else
	{
		my $q = $rule->[1];
		is( sq("SELECT execution_price BETWEEN $q * 1.1 AND $q * 2.0 FROM ordflow.orders WHERE order_id = $id"),
			't', "order $id: execution price $price within quantity $q * [1.1, 2.0]");
	}
}

is(sq(q{SELECT uid IS NULL AND symbol = 'ABC' AND quantity = 3 AND amount IS NULL
		FROM ordflow.orders WHERE order_id = 1000001}),
	't', 'anonymous order stored as sent');
is(sq(q{SELECT created_at = '2024-05-01 08:00:00.5+00' FROM ordflow.orders WHERE order_id = 1000003}),
	't', 'created_at with an offset is stored as that instant');
is(sq(q{SELECT created_at > now() - interval '10 minutes' FROM ordflow.orders WHERE order_id = 1000002}),
	't', 'created_at defaults to the consumer time when absent');
is(sq(q{SELECT quantity = 7 AND amount = 100 FROM ordflow.orders WHERE order_id = 1000004}),
	't', 'order with both quantity and amount keeps both');
is(sq(q{SELECT symbol FROM ordflow.orders WHERE order_id = 1000011}),
	"A\xc3\x84\"q", 'JSON escapes in the symbol are decoded');
is(sq(q{SELECT symbol FROM ordflow.orders WHERE order_id = 1000012}),
	"\xc3\xa9" x 12, 'a 12-character multibyte symbol is accepted');
is(sq(q{SELECT amount FROM ordflow.orders WHERE order_id = 1000013}),
	'10', 'the conflicting in-batch duplicate did not change the order');

# Nothing of a malformed message reached the orders table.
is(sq('SELECT count(*) FROM ordflow.orders WHERE order_id BETWEEN 1000100 AND 1000199'),
	'0', 'no order row for any malformed message');
is(sq('SELECT count(*) FROM ordflow.order_events WHERE order_id BETWEEN 1000100 AND 1000199'),
	'0', 'no event for any malformed message');

# ---------------------------------------------------------------------------
# Dead letters: raw body, routing key, queue, a reason matching the fault.

for my $b (@bad)
{
	my ($body, $re, $key) = @$b;
	$key ||= 'order.created';
	my $h = hex_of($body);
	# the error goes last: it may contain the separator
	my $row = sq("SELECT count(*), min(routing_key), min(queue),"
		  . " bool_and(body_text IS NOT DISTINCT FROM convert_from(body, 'UTF8')) FILTER (WHERE body_text IS NOT NULL),"
		  . " bool_and(body_text IS NULL), bool_and(NOT redelivered), min(error)"
		  . " FROM ordflow.dead_letters WHERE body = decode('$h', 'hex')");
	my ($cnt, $rk, $queue, $text_same, $text_null, $not_redel, $err) = split /\|/, $row, 7;
	my $name = length($body) > 40 ? substr($body, 0, 37) . '...' : $body;
	$name =~ s/[^\x20-\x7e]/?/g;
	is($cnt, 1, "dead letter stored once with the raw body: '$name'");
	like($err // '', $re, "dead letter reason for '$name'");
	is($rk, $key, "dead letter routing key for '$name'");
	is($queue, 'ordflow.orders', "dead letter queue for '$name'");
	is($not_redel, 't', "dead letter for '$name' was a first delivery");
	my $valid_text = ($body !~ /\0/ && utf8::decode(my $copy = $body)) ? 1 : 0;
	if ($valid_text)
	{
		is($text_same, 't', "body_text equals the body for '$name'");
	}
	else
	{
		is($text_null, 't', "body_text is null for a body that is not text: '$name'");
	}
}

my $conf_row = sq("SELECT count(*), min(error) FROM ordflow.dead_letters WHERE body = decode('"
	  . hex_of($conf_in_batch) . "', 'hex')");
my ($ccount, $cerr) = split /\|/, $conf_row;
is($ccount, 1, 'the conflicting in-batch duplicate is a dead letter');
like($cerr, qr/1000013.*different content/, 'its reason names the conflict');

# ---------------------------------------------------------------------------
# Phase 2: exact duplicates of processed orders (keys reordered, other
# spacing: the content is what counts) and conflicting ones, then a sentinel;
# once the sentinel is processed, everything before it was handled.

my $events_before = sq('SELECT count(*) FROM ordflow.order_events');
my $balances_sql = q{SELECT string_agg(uid || ':' || credit_balance, ',' ORDER BY uid) FROM ordflow.users};
my $balances_before = sq($balances_sql);
my $metrics_before = sq('SELECT orders_processed, orders_completed, orders_declined, total_execution_amount FROM ordflow.metrics()');

my @dups = (
	$good[2][1],    # exactly the same bytes
	qq({"amount":250.5,"created_at":"2024-05-01T10:00:00.5+02:00","quantity":null,"symbol":"AAPL","uid":$rich,"order_id":1000003}),
	qq({ "order_id" : 1000005 , "uid" : $poor , "amount" : 6.00 }),    # same number, other spelling
	$good[5][1],    # a declined order again: still declined once, no retry
	$good[8][1],
	$good[0][1],
);
my @conflicts = (
	[ 1000003, qq({"order_id": 1000003, "uid": $rich, "symbol": "AAPL", "quantity": null, "amount": 1}) ],
	[ 1000001, qq({"order_id": 1000001, "uid": $rich, "symbol": "ABC", "quantity": 3, "amount": null}) ],
	[ 1000002, qq({"order_id": 1000002, "symbol": "Y", "quantity": 1}) ],
	[ 1000006, qq({"order_id": 1000006, "uid": $poor, "amount": 5, "quantity": 1}) ],
);
my $sentinel = qq({"order_id": 1000999, "symbol": "END", "amount": 3});
$mq->publish_many('order.created', [ @dups, (map { $_->[1] } @conflicts), @dups, $sentinel ]);

ok( OrdflowTest::wait_for($node,
		q{SELECT status FROM ordflow.orders WHERE order_id = 1000999}, 'completed', 90),
	'sentinel after the duplicates is processed');
ok( OrdflowTest::wait_for($node, 'SELECT count(*) FROM ordflow.dead_letters',
		$n_dead_phase1 + scalar(@conflicts), 60),
	'each conflicting duplicate is one more dead letter');

is(sq('SELECT count(*) FROM ordflow.order_events'), $events_before + 2,
	'duplicates added no events (only the sentinel\'s two)');
is(sq($balances_sql), $balances_before, 'duplicates and conflicts debited nothing');
my ($mp, $mc, $md, $mt) = split /\|/, $metrics_before;
is(sq("SELECT orders_processed - $mp, orders_completed - $mc, orders_declined - $md,"
		. " total_execution_amount - $mt = 3 FROM ordflow.metrics()"),
	'1|1|0|t', 'metrics count the sentinel only');
is(sq(q{SELECT amount = 250.5 AND execution_price = 250.5 AND uid = } . $rich
		. q{ AND status = 'completed' FROM ordflow.orders WHERE order_id = 1000003}),
	't', 'the original of a conflicting duplicate is untouched');
is(sq(q{SELECT uid IS NULL AND status = 'completed' FROM ordflow.orders WHERE order_id = 1000001}),
	't', 'an anonymous original is untouched by a conflict that adds a uid');
for my $c (@conflicts)
{
	my ($id, $body) = @$c;
	like( sq("SELECT error FROM ordflow.dead_letters WHERE body = decode('" . hex_of($body) . "', 'hex')"),
		qr/order_id $id already exists with different content/,
		"conflicting duplicate of $id is dead-lettered with its reason");
}
is(sq('SELECT count(*) FROM ordflow.dead_letters WHERE body = decode(\'' . hex_of($dups[1]) . '\', \'hex\')'),
	'0', 'a reordered exact duplicate is not a dead letter');

# ---------------------------------------------------------------------------
# Events: exactly one initialised and one final event per processed order,
# with the amounts and notes the contract describes.

is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE (SELECT count(*) FROM ordflow.order_events e WHERE e.order_id = o.order_id) <> 2}),
	'0', 'every order has exactly two events');
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE NOT EXISTS (SELECT 1 FROM ordflow.order_events e
							WHERE e.order_id = o.order_id AND e.status = 'initialised'
							  AND e.uid IS NOT DISTINCT FROM o.uid
							  AND e.amount IS NOT DISTINCT FROM o.amount)}),
	'0', 'each order has an initialised event with its uid and amount');
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE NOT EXISTS (SELECT 1 FROM ordflow.order_events e
							WHERE e.order_id = o.order_id AND e.status = o.status
							  AND e.uid IS NOT DISTINCT FROM o.uid
							  AND e.notes IS NOT DISTINCT FROM o.notes)}),
	'0', 'each order has a final event with its status, uid and notes');
is(sq(q{SELECT count(*) FROM ordflow.orders o JOIN ordflow.order_events e USING (order_id)
		 WHERE o.status = 'completed' AND e.status = 'completed'
		   AND e.amount IS DISTINCT FROM o.execution_price}),
	'0', 'a completed event carries the execution price');
is(sq(q{SELECT e.amount FROM ordflow.order_events e
		 WHERE e.order_id = 1000006 AND e.status = 'declined'}),
	'5', 'an insufficient-balance declined event carries the attempted price');
is(sq(q{SELECT count(*) FROM ordflow.order_events e
		 WHERE e.order_id IN (1000009, 1000010) AND e.status = 'declined' AND e.amount IS NULL}),
	'2', 'an unknown-user declined event has no amount');
is(sq(q{SELECT count(*) FROM ordflow.order_events e
		 WHERE e.order_id = 1000008 AND e.status = 'declined'
		   AND e.amount BETWEEN 1.1 AND 2.0}),
	'1', 'a declined quantity order\'s event carries the attempted price');

# ---------------------------------------------------------------------------
# Balances: limit minus completed prices, never negative.

is(sq("SELECT credit_balance = 0 FROM ordflow.users WHERE uid = $poor"), 't',
	'poor user spent exactly the balance');
is(sq("SELECT credit_balance = 1000 - 250.5 - 100 - 10 FROM ordflow.users WHERE uid = $rich"), 't',
	'rich user debited by the completed amounts only');
is(sq(q{SELECT count(*) FROM ordflow.users u
		 WHERE u.credit_balance <> u.credit_limit - coalesce((SELECT sum(execution_price)
				FROM ordflow.orders o WHERE o.uid = u.uid AND o.status = 'completed'), 0)
			OR u.credit_balance < 0}),
	'0', 'every balance equals limit minus completed prices, none negative');

# ---------------------------------------------------------------------------
# Metrics equal a recompute from orders.

my $recompute = OrdflowTest::metrics_recompute_sql(latency => 1);
is(sq($recompute), 't|t|t|t|t|t|t', 'metrics() equals a recompute from orders');
is(sq(q{SELECT orders_processed, orders_completed, orders_declined FROM ordflow.metrics()}),
	(scalar(@good) + 1) . '|' . (scalar(grep { $_->[2] eq 'completed' } @good) + 1) . '|'
	  . scalar(grep { $_->[2] eq 'declined' } @good),
	'metrics() counts match the orders sent');

# ---------------------------------------------------------------------------
# The consumer survived all of it.

ok( OrdflowTest::wait_for($node,
		q{SELECT connected FROM ordflow.status() WHERE worker = 'consumer 0'}, 't', 30),
	'consumer 0 still connected');
ok(wait_queue_empty('ordflow.orders'), 'the orders queue is drained (nothing unacked)');
is($mq->queue_depth('ordflow.dead'), 0, 'nothing was rejected to the broker\'s dead-letter queue');
ok(!$node->log_contains('terminated by signal'), 'no worker crashed');

$node->stop;
$mq->stop;
done_testing();
