
# uid partitions, the SQL side (SPEC "More than one node"), on node A with
# ordflow.partitions = 4, owned_partitions = '0-1', node_id = 3 and no
# broker (the outbox rows stay where the test can read them):
# * new uids only in owned partitions, node-prefixed, never repeated when
#   owned_partitions changes (ALTER SYSTEM + reload);
# * place_order(), place_orders() and the generator: an order of an owned
#   partition gets its row, its 'initialised' event and an outbox row
#   routed order.created.<p>; one of another node's partition (by uid, or
#   by order_id without uid) only its outbox row; the generator picks only
#   users it holds;
# * export_partition() refused while owned, then the users, orders (done
#   ones too) and events of the partition; import_partition() on node B
#   (P = 4, owns 2-3) reproduces them exactly, refuses hostile input cleanly
#   and imports nothing then, and refuses a partition B holds;
#   drop_partition() on A removes exactly that partition;
# * the relay publishes outbox rows of kind 'forward' as received, marked
#   x-ordflow-source "forward", to order.created.<p> or user.<T>.<p> only
#   (node B has a broker for that);
# * with the README's alternate-exchange policy, what no queue is bound for
#   becomes a dead letter saying so.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;

my $nid  = 3;
my $base = $nid << 48;    # partition_of($base) = 0 with 4 partitions
my $a    = OrdflowTest::new_node('parta', extra => <<"EOC");
ordflow.partitions = 4
ordflow.owned_partitions = '0-1'
ordflow.node_id = $nid
EOC
$a->safe_psql('postgres', 'CREATE EXTENSION ordflow');
sub sa { return $a->safe_psql('postgres', $_[0]); }

# "ok", or "SQLSTATE: message" (the statement runs in a function, so an
# error is caught and nothing it did stays)
my $err_fn = q{
	CREATE FUNCTION public.err(q text) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		EXECUTE q;
		RETURN 'ok';
	EXCEPTION WHEN OTHERS THEN
		RETURN SQLSTATE || ': ' || SQLERRM;
	END $$};
sa($err_fn);

is(sa('SELECT ordflow._partitions()'), '4', '_partitions() reads ordflow.partitions');
is(sa('SELECT ordflow._owned_partitions()'), '{0,1}', '_owned_partitions() reads owned_partitions');

# ---------------------------------------------------------------------------
# The generator without users: orders without uid go by their order_id;
# those of another node's partition get only their outbox row.

sa('SELECT ordflow.start(400)');
ok(OrdflowTest::wait_for($a, 'SELECT count(*) >= 60 FROM ordflow.outbox', 't', 120),
	'the generator makes orders without users');
sa('SELECT ordflow.stop()');
is(sa(q{SELECT count(*) FROM ordflow.orders
		 WHERE ordflow.partition_of(order_id) NOT IN (0, 1) OR uid IS NOT NULL}), '0',
	'generator: rows only for orders (without uid) in owned partitions');
is(sa(q{SELECT count(*) FROM ordflow.outbox AS b
		 WHERE b.routing_key <> 'order.created.' || ordflow.partition_of(b.order_id)
			OR b.kind <> CASE WHEN ordflow.partition_of(b.order_id) IN (0, 1) THEN 'order' ELSE 'forward' END
			OR b.message_id <> b.order_id::text
			OR (b.payload::jsonb ->> 'order_id')::bigint <> b.order_id}), '0',
	'generator: every outbox row routed order.created.<partition of its order_id>, of kind forward where another node holds it');
is(sa(q{SELECT count(*) FILTER (WHERE (o.order_id IS NOT NULL) <> (ordflow.partition_of(b.order_id) IN (0, 1))),
			   count(*) FILTER (WHERE o.order_id IS NULL) > 0,
			   count(*) FILTER (WHERE o.order_id IS NOT NULL) > 0
		  FROM ordflow.outbox AS b LEFT JOIN ordflow.orders AS o USING (order_id)}), '0|t|t',
	'generator: an outbox row has an order row exactly when its partition is owned (both kinds seen)');
is(sa(q{SELECT (SELECT count(*) FROM ordflow.order_events)
			 = (SELECT count(*) FROM ordflow.orders)}), 't',
	'generator: one event per order row, none for the others');
sa('SELECT ordflow.truncate()');

# ---------------------------------------------------------------------------
# uids: node-prefixed, only in owned partitions, in sequence order.

my @uids = split /\n/, sa(q{SELECT ordflow.create_user('u' || g, 'A', 1000) FROM generate_series(1, 12) g});
push @uids, sa(q{SELECT ordflow.user_event('{"type":"C","name":"ev","lname":"A","credit_limit":500}') ->> 'uid'});
is(scalar(@uids), 13, 'thirteen users made');
# seq 1, 4, 5, 8, 9, ...: the values of the sequence in partitions 0 and 1
my @want = grep { $_ % 4 == 0 || $_ % 4 == 1 } 1 .. 30;
is(join(',', map { $_ - $base } @uids), join(',', @want[0 .. 12]),
	'uids are node_id << 48 plus the sequence values that fall in owned partitions');
is(sa('SELECT count(*) FROM ordflow.users WHERE uid >> 48 <> 3 OR ordflow.partition_of(uid) NOT IN (0, 1)'),
	'0', 'every uid carries the node id and lies in partition 0 or 1');

# ---------------------------------------------------------------------------
# place_order()

my $u0 = $uids[1];        # seq 4: partition 0
my $u1 = $uids[0];        # seq 1: partition 1
my $other2 = $base + 2;   # another node's user, partition 2
my $other3 = $base + 7;   # partition 3

sub placed
{
	my ($id) = @_;
	return sa(qq{SELECT (SELECT count(*) FROM ordflow.orders WHERE order_id = $id) || '/' ||
						(SELECT count(*) FROM ordflow.order_events WHERE order_id = $id AND status = 'initialised') || '/' ||
						(SELECT string_agg(kind || ' ' || routing_key || ' ' || (payload::jsonb ->> 'order_id'), ',')
						   FROM ordflow.outbox WHERE order_id = $id)});
}

my $id = sa("SELECT ordflow.place_order($u0, 10, 'P0', 1)");
is(placed($id), "1/1/order order.created.0 $id", 'place_order, owned partition 0: row, event, outbox to order.created.0');
$id = sa("SELECT ordflow.place_order($u1, 10, 'P1', NULL)");
is(placed($id), "1/1/order order.created.1 $id", 'place_order, owned partition 1: row, event, outbox to order.created.1');
$id = sa("SELECT ordflow.place_order($other2, 10, 'P2', 2)");
is(placed($id), "0/0/forward order.created.2 $id",
	'place_order, another node\'s partition 2: only the outbox row (kind forward: no node or origin), to order.created.2');
is(sa("SELECT payload::jsonb ->> 'uid' FROM ordflow.outbox WHERE order_id = $id"), $other2,
	'... its message names the user');
$id = sa("SELECT ordflow.place_order($other3, 10, 'P3', 2)");
is(placed($id), "0/0/forward order.created.3 $id", 'place_order, partition 3: only the outbox row');
for my $i (1 .. 4)
{
	$id = sa("SELECT ordflow.place_order(NULL, 10, 'NOUID', 1)");
	my $p = sa("SELECT ordflow.partition_of($id)");
	my $n = $p <= 1 ? 1 : 0;
	my $kind = $n ? 'order' : 'forward';
	is(placed($id), "$n/$n/$kind order.created.$p $id",
		"place_order without uid goes by its order_id (partition $p)");
}
is(sa(q{SELECT count(*) FROM ordflow.orders WHERE status <> 'initialised'}), '0', 'nothing processed (no broker)');

# ---------------------------------------------------------------------------
# place_orders(): the same per element, ids in input order

my @in = ([ $u0, 0 ], [ $other2, 2 ], [ $u1, 1 ], [ $other3, 3 ], [ 'null', undef ], [ 'null', undef ]);
my $json = '[' . join(',', map { qq({"uid": $_->[0], "amount": 3, "symbol": "MANY"}) } @in) . ']';
my @ids = split /\n/, sa("SELECT * FROM ordflow.place_orders('$json')");
is(scalar(@ids), 6, 'place_orders returned six ids');
ok($ids[0] < $ids[1] && $ids[1] < $ids[2] && $ids[4] < $ids[5], 'in input order');
for my $i (0 .. $#in)
{
	my $p = $in[$i][1] // sa("SELECT ordflow.partition_of($ids[$i])");
	my $n = $p <= 1 ? 1 : 0;
	my $kind = $n ? 'order' : 'forward';
	is(placed($ids[$i]), "$n/$n/$kind order.created.$p $ids[$i]",
		"place_orders element $i (uid $in[$i][0], partition $p): " . ($n ? 'row, event, outbox' : 'outbox only'));
}
is(sa(qq{SELECT uid FROM ordflow.orders WHERE order_id = $ids[2]}), $u1, 'the row has the element\'s uid');

# ---------------------------------------------------------------------------
# The generator picks only users it holds.

my $before = sa('SELECT max(order_id) FROM ordflow.outbox');
sa("SELECT ordflow.create_user('x', 'y', 1000)");    # another user, still 0-1
sa('SELECT ordflow.start(300)');
ok(OrdflowTest::wait_for($a, "SELECT count(*) >= 60 FROM ordflow.orders WHERE source = 'generator'", 't', 120),
	'the generator makes orders for the users');
sa('SELECT ordflow.stop()');
is(sa(qq{SELECT count(*) FROM ordflow.outbox AS b LEFT JOIN ordflow.orders AS o USING (order_id)
		  WHERE b.order_id > $before
			AND (o.order_id IS NULL OR o.uid IS NULL OR o.source <> 'generator'
				 OR ordflow.partition_of(o.uid) NOT IN (0, 1)
				 OR b.routing_key <> 'order.created.' || ordflow.partition_of(o.uid))}), '0',
	'generator: every order is for a user of an owned partition, routed by its uid');

# ---------------------------------------------------------------------------
# owned_partitions changed by ALTER SYSTEM + reload: new uids follow, none
# repeats.

sa(q{ALTER SYSTEM SET ordflow.owned_partitions = '0-2'});
sa('SELECT pg_reload_conf()');
ok(OrdflowTest::wait_for($a, 'SELECT ordflow._owned_partitions()', '{0,1,2}', 30), 'owned_partitions 0-2 after reload');
my $max_before = sa('SELECT max(uid) FROM ordflow.users');
my @new = split /\n/, sa(q{SELECT ordflow.create_user('n' || g, 'B', 100) FROM generate_series(1, 9) g});
is(sa(q{SELECT string_agg(DISTINCT ordflow.partition_of(uid)::text, ',' ORDER BY ordflow.partition_of(uid)::text)
		  FROM ordflow.users WHERE name LIKE 'n%'}), '0,1,2', 'new uids land in partitions 0-2');
ok($new[0] > $max_before, 'the new uids come after every old one');
is(sa('SELECT count(*) = count(DISTINCT uid) FROM ordflow.users'), 't', 'no uid repeats');
is(sa(q{SELECT count(*) FROM ordflow.users WHERE name LIKE 'n%' AND ordflow.partition_of(uid) = 3}), '0',
	'none in partition 3');

# ---------------------------------------------------------------------------
# export_partition(): refused while owned

like(sa('SELECT public.err($$SELECT ordflow.export_partition(0)$$)'),
	qr/^55000: cannot export partition 0: this node holds it/, 'export of an owned partition: 55000');
like(sa('SELECT public.err($$SELECT ordflow.export_partition(4)$$)'),
	qr/^22023: partition 4 does not exist/, 'export of partition 4 of 4: 22023');
like(sa('SELECT public.err($$SELECT ordflow.export_partition(NULL)$$)'),
	qr/^22004: /, 'export of NULL: 22004');
like(sa('SELECT public.err($$SELECT ordflow.drop_partition(1)$$)'),
	qr/^55000: cannot drop partition 1: this node holds it/, 'drop_partition of an owned partition: 55000');
is(sa(q{SELECT has_function_privilege('public', 'ordflow.export_partition(int)', 'EXECUTE')
		   OR has_function_privilege('public', 'ordflow.import_partition(jsonb)', 'EXECUTE')
		   OR has_function_privilege('public', 'ordflow.drop_partition(int)', 'EXECUTE')}), 'f',
	'PUBLIC may not execute export/import/drop_partition');

# Partition 0 gets variety: a changed user, a completed order (it moves
# too), an order without uid.
sa(qq{SELECT ordflow.update_users('{"uid": $u0}', '{"name": "Zoë \\"q\\"", "credit_balance": 123.4500}')});
my $done = sa("SELECT ordflow.place_order($u0, 99, 'DONE', 1)");
sa(qq{UPDATE ordflow.orders SET status = 'completed', execution_price = 99, processed_at = now()
		WHERE order_id = $done;
	  INSERT INTO ordflow.order_events (order_id, uid, status, event_time, amount)
	  VALUES ($done, $u0, 'completed', now(), 99)});
my $nouid0;
for (1 .. 8)
{
	my $i = sa("SELECT ordflow.place_order(NULL, 4.5, 'NU0', 3)");
	if (sa("SELECT ordflow.partition_of($i)") == 0) { $nouid0 = $i; last; }
}
ok($nouid0, 'an order without uid in partition 0');

# the record of applied user events: one of partition 0 moves with it
sa(q{INSERT INTO ordflow.applied_user_events (message_id, partition)
	 VALUES ('moved-0', 0), ('stays-1', 1), ('shared', NULL)});
my $applied_sql = q{SELECT string_agg(message_id || ':' || coalesce(partition::text, '-'), ',' ORDER BY message_id)
					  FROM ordflow.applied_user_events};

# Now A gives partition 0 up.
sa(q{ALTER SYSTEM SET ordflow.owned_partitions = '1-2'});
sa('SELECT pg_reload_conf()');
ok(OrdflowTest::wait_for($a, 'SELECT ordflow._owned_partitions()', '{1,2}', 30), 'owned_partitions 1-2 after reload');

# A batch still in flight (it locked an order of partition 0 and its user,
# as a consumer does) is waited for: the export sees what it committed.
my $x = sa(qq{SELECT order_id FROM ordflow.orders WHERE uid = $u0 AND status = 'initialised'
			   ORDER BY order_id LIMIT 1});
my $bal = sa("SELECT credit_balance - 1 FROM ordflow.users WHERE uid = $u0");
my $batch = $a->background_psql('postgres');
$batch->query_safe(qq{BEGIN;
	UPDATE ordflow.orders SET status = 'completed', execution_price = 1, processed_at = now()
	 WHERE order_id = $x;
	UPDATE ordflow.users SET credit_balance = credit_balance - 1 WHERE uid = $u0;});
my $exporter = $a->background_psql('postgres');
$exporter->query_until(qr/go/, "\\echo go\nCREATE TABLE public.exp_locked AS SELECT ordflow.export_partition(0) AS x;\n");
ok( OrdflowTest::wait_for($a, q{SELECT count(*) FROM pg_stat_activity
								 WHERE wait_event_type = 'Lock' AND query LIKE '%export_partition%'}, '1', 60),
	'export_partition() waits for the batch that holds rows of the partition');
$batch->query_safe('COMMIT');
ok(OrdflowTest::wait_for($a, q{SELECT count(*) FROM pg_tables WHERE tablename = 'exp_locked'}, '1', 60),
	'... and finishes once it committed');
is(sa(qq{SELECT (SELECT o ->> 'status' FROM jsonb_array_elements(x -> 'orders') AS o
				  WHERE (o ->> 'order_id')::bigint = $x) || '/' ||
				(SELECT u ->> 'credit_balance' FROM jsonb_array_elements(x -> 'users') AS u
				  WHERE (u ->> 'uid')::bigint = $u0)
		   FROM public.exp_locked}), "completed/$bal",
	'the export has the batch\'s result: its order done, the balance debited');
$batch->quit;
$exporter->quit;
sa('DROP TABLE public.exp_locked');

my $users0 = q{SELECT uid, name, lname, credit_limit, credit_balance, created_at, updated_at
				 FROM ordflow.users WHERE ordflow.partition_of(uid) = 0 ORDER BY uid};
my $orders0 = q{SELECT order_id, uid, symbol, quantity, amount, status, execution_price, notes,
					   created_at, processed_at, source
				  FROM ordflow.orders
				 WHERE ordflow.partition_of(coalesce(uid, order_id)) = 0
				 ORDER BY order_id};
my $events0 = q{SELECT order_id, uid, status, event_time, amount, notes
				  FROM ordflow.order_events
				 WHERE ordflow.partition_of(coalesce(uid, order_id)) = 0
				 ORDER BY event_id};
my $a_users0 = sa("SET timezone = 'UTC'; $users0");
my $a_orders0 = sa("SET timezone = 'UTC'; $orders0");
my $a_events0 = sa("SET timezone = 'UTC'; $events0");
my $n_users0 = sa('SELECT count(*) FROM ordflow.users WHERE ordflow.partition_of(uid) = 0');
my $n_orders0 = sa(q{SELECT count(*) FROM ordflow.orders
					  WHERE ordflow.partition_of(coalesce(uid, order_id)) = 0});
my $n_events0 = sa(q{SELECT count(*) FROM ordflow.order_events
					  WHERE ordflow.partition_of(coalesce(uid, order_id)) = 0});
ok($n_users0 >= 5 && $n_orders0 >= 10 && $n_events0 > $n_orders0,
	"partition 0 has $n_users0 users, $n_orders0 orders and $n_events0 events");

my $export = sa('SELECT ordflow.export_partition(0)');
is(sa(qq{SELECT jsonb_build_array(x -> 'partitions', x -> 'partition', jsonb_array_length(x -> 'users'),
								  jsonb_array_length(x -> 'orders'), jsonb_array_length(x -> 'events'),
								  (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(x) AS k))
		   FROM (SELECT '$export'::jsonb AS x) AS s}),
	qq{[4, 0, $n_users0, $n_orders0, $n_events0, ["applied_user_events", "events", "orders", "partition", "partitions", "users"]]},
	'export: partitions, partition, every user, order and event of partition 0');
is(sa(qq{SELECT o ->> 'status' FROM jsonb_array_elements('$export'::jsonb -> 'orders') AS o
		   WHERE (o ->> 'order_id')::bigint = $done}), 'completed', 'export: the completed order is in it, done');
like($export, qr/"order_id": $nouid0\b/, 'export: the order without uid of partition 0 is');
is(sa(qq{SELECT string_agg(a ->> 'message_id', ',') FROM jsonb_array_elements('$export'::jsonb -> 'applied_user_events') AS a}),
	'moved-0', 'export: the applied user events of partition 0');

# ---------------------------------------------------------------------------
# Node B: P = 4, owns 2-3, with a broker (for the relay below).

my $mq = OrdflowTest::start_broker();
my $b  = OrdflowTest::new_node('partb', broker => $mq, consumers => 1, extra => <<"EOC");
ordflow.partitions = 4
ordflow.owned_partitions = '2-3'
ordflow.node_id = 4
EOC
$b->safe_psql('postgres', 'CREATE EXTENSION ordflow');
sub sb { return $b->safe_psql('postgres', $_[0]); }
sb($err_fn);
sub imp
{
	my ($data) = @_;
	$data =~ s/'/''/g;
	return sb("SELECT public.err(\$q\$SELECT ordflow.import_partition('$data')\$q\$)");
}
sub b_counts
{
	return sb(q{SELECT (SELECT count(*) FROM ordflow.users) || '/' || (SELECT count(*) FROM ordflow.orders)
					   || '/' || (SELECT count(*) FROM ordflow.order_events)});
}

# Hostile input first: each a clean error, and nothing imported.
(my $u = $export) =~ s/'/''/g;
my %bad = (
	'not an object'        => '[1]',
	'a missing key'        => qq{SELECT '$u'::jsonb - 'orders'},
	'an unknown key'       => qq{SELECT '$u'::jsonb || '{"extra": 1}'},
	'wrong partitions'     => qq{SELECT jsonb_set('$u', '{partitions}', '8')},
	'partitions as string' => qq{SELECT jsonb_set('$u', '{partitions}', '"4"')},
	'partition 4'          => qq{SELECT jsonb_set('$u', '{partition}', '4')},
	'partition 0.5'        => qq{SELECT jsonb_set('$u', '{partition}', '0.5')},
	'partition huge'       => qq{SELECT jsonb_set('$u', '{partition}', '1e400')},
	'users not an array'   => qq{SELECT jsonb_set('$u', '{users}', '{}')},
	'a user of partition 1' => qq{SELECT jsonb_set('$u', '{users,-1,uid}', to_jsonb($u1))},
	'uid as string'        => qq{SELECT jsonb_set('$u', '{users,-1,uid}', '"$u0"')},
	'uid huge'             => qq{SELECT jsonb_set('$u', '{users,-1,uid}', '1e30')},
	'uid fraction'         => qq{SELECT jsonb_set('$u', '{users,-1,uid}', '4.5')},
	'name a number'        => qq{SELECT jsonb_set('$u', '{users,-1,name}', '5')},
	'name null'            => qq{SELECT jsonb_set('$u', '{users,-1,name}', 'null')},
	'credit_limit string'  => qq{SELECT jsonb_set('$u', '{users,-1,credit_limit}', '"x"')},
	'credit_limit huge'    => qq{SELECT jsonb_set('$u', '{users,-1,credit_limit}', '1e400')},
	'balance over limit'   => qq{SELECT jsonb_set('$u', '{users,-1,credit_balance}', '1e6')},
	'balance negative'     => qq{SELECT jsonb_set('$u', '{users,-1,credit_balance}', '-1')},
	'created_at not a date' => qq{SELECT jsonb_set('$u', '{users,-1,created_at}', '"yesterday-ish"')},
	'created_at a number'  => qq{SELECT jsonb_set('$u', '{users,-1,created_at}', '5')},
	'updated_at infinity'  => qq{SELECT jsonb_set('$u', '{users,-1,updated_at}', '"infinity"')},
	'a user key unknown'   => qq{SELECT jsonb_set('$u', '{users,-1,admin}', 'true')},
	'a user key missing'   => qq{SELECT jsonb_set('$u', '{users,-1}', ('$u'::jsonb #> '{users,-1}') - 'lname')},
	'a user not an object' => qq{SELECT jsonb_set('$u', '{users,-1}', '"x"')},
	'a duplicate uid'      => qq{SELECT jsonb_set('$u', '{users}', ('$u'::jsonb -> 'users') || ('$u'::jsonb #> '{users,0}'))},
	'an order of partition 1' => qq{SELECT jsonb_set('$u', '{orders,-1,uid}', to_jsonb($u1))},
	'order_id huge'        => qq{SELECT jsonb_set('$u', '{orders,-1,order_id}', '9223372036854775808')},
	'order status unknown' => qq{SELECT jsonb_set('$u', '{orders,-1,status}', '"shipped"')},
	'done, no processed_at' => qq{SELECT jsonb_set('$u', '{orders,-1,status}', '"completed"')},
	'execution_price set'  => qq{SELECT jsonb_set('$u', '{orders,-1,execution_price}', '5')},
	'execution_price huge' => qq{SELECT jsonb_set(jsonb_set(jsonb_set('$u', '{orders,-1,status}', '"completed"'),
											  '{orders,-1,processed_at}', '"2026-01-01"'),
									'{orders,-1,execution_price}', '1e30')},
	'events not an array'  => qq{SELECT jsonb_set('$u', '{events}', '{}')},
	'an event of partition 1' => qq{SELECT jsonb_set(jsonb_set('$u', '{events,0,uid}', to_jsonb($u1)), '{events,0,order_id}', to_jsonb($u1))},
	'an event of no order' => qq{SELECT jsonb_set(jsonb_set('$u', '{events,0,uid}', to_jsonb($u0)), '{events,0,order_id}', '4000000')},
	'event status unknown' => qq{SELECT jsonb_set('$u', '{events,0,status}', '"lost"')},
	'event_time not a date' => qq{SELECT jsonb_set('$u', '{events,0,event_time}', '"soon"')},
	'an event amount huge' => qq{SELECT jsonb_set('$u', '{events,0,amount}', '1e300')},
	'an event key unknown' => qq{SELECT jsonb_set('$u', '{events,0,event_id}', '1')},
	'an event not an object' => qq{SELECT jsonb_set('$u', '{events,0}', '[]')},
	'applied events not an array' => qq{SELECT jsonb_set('$u', '{applied_user_events}', '"x"')},
	'an applied event id a number' => qq{SELECT jsonb_set('$u', '{applied_user_events}', '[{"message_id": 5, "applied_at": "2026-01-01"}]')},
	'an applied event id empty' => qq{SELECT jsonb_set('$u', '{applied_user_events}', '[{"message_id": "", "applied_at": "2026-01-01"}]')},
	'an applied event time bad' => qq{SELECT jsonb_set('$u', '{applied_user_events}', '[{"message_id": "m", "applied_at": "x"}]')},
	'an applied event partition' => qq{SELECT jsonb_set('$u', '{applied_user_events}', '[{"message_id": "m", "applied_at": "2026-01-01", "partition": 3}]')},
	'quantity huge'        => qq{SELECT jsonb_set('$u', '{orders,-1,quantity}', '1e10')},
	'quantity 0'           => qq{SELECT jsonb_set('$u', '{orders,-1,quantity}', '0')},
	'amount NaN string'    => qq{SELECT jsonb_set('$u', '{orders,-1,amount}', '"NaN"')},
	'amount huge'          => qq{SELECT jsonb_set('$u', '{orders,-1,amount}', '1e16')},
	'symbol too long'      => qq{SELECT jsonb_set('$u', '{orders,-1,symbol}', '"ABCDEFGHIJKLM"')},
	'source unknown'       => qq{SELECT jsonb_set('$u', '{orders,-1,source}', '"elsewhere"')},
	'no amount, no quantity' => qq{SELECT jsonb_set(jsonb_set('$u', '{orders,-1,amount}', 'null'), '{orders,-1,quantity}', 'null')},
	'a duplicate order_id' => qq{SELECT jsonb_set('$u', '{orders}', ('$u'::jsonb -> 'orders') || ('$u'::jsonb #> '{orders,0}'))},
);
my $b_before = b_counts();
for my $what (sort keys %bad)
{
	my $data = $bad{$what} =~ /^SELECT/ ? sb($bad{$what}) : $bad{$what};
	my $e = imp($data);
	like($e, qr/^22023: \S/, "import refuses $what (22023)");
	note $e;
}
like(sb('SELECT public.err($$SELECT ordflow.import_partition(NULL)$$)'), qr/^22004: /, 'import refuses NULL (22004)');
is(b_counts(), $b_before, 'after the refused imports, B has nothing more');
like(imp(sb(qq{SELECT jsonb_set('$u', '{partition}', '2')})),
	qr/^(55000: cannot import partition 2: this node holds it|22023: users\[0\]: uid \d+ is in partition 0, not 2)/,
	'import of a partition B holds is refused');
like(imp(sb(qq{SELECT jsonb_set(jsonb_set(jsonb_set(jsonb_set('$u', '{partition}', '2'), '{users}', '[]'), '{orders}', '[]'), '{events}', '[]')})),
	qr/^55000: cannot import partition 2: this node holds it/,
	'... even empty: 55000, B holds partition 2');
like(imp(sb(q{SELECT '{"partitions": 4, "partition": 2, "users": [], "orders": [], "events": [], "applied_user_events": []}'})),
	qr/^55000: /, 'import refused while owned: 55000');

# The import itself.
is(sb(qq{SELECT users || '/' || orders FROM ordflow.import_partition('$u')}),
	"$n_users0/$n_orders0", 'import_partition returns the users and orders it wrote');
is(sb("SET timezone = 'UTC'; $users0"), $a_users0, 'B has the users of partition 0 exactly as A had them');
is(sb("SET timezone = 'UTC'; $orders0"), $a_orders0, 'B has the orders of partition 0 exactly as A had them');
is(sb("SET timezone = 'UTC'; $events0"), $a_events0, '... and their events, in their order');
is(sb("SELECT status FROM ordflow.orders WHERE order_id = $done"), 'completed', 'the completed order moved, done');
is(sb($applied_sql), 'moved-0:0', 'B remembers the applied user events of partition 0, as of partition 0');
is(sb(qq{SELECT users || '/' || orders FROM ordflow.import_partition('$u')}),
	"$n_users0/0", 'imported again: users rewritten, no order twice');
is(sb("SELECT count(*) FROM ordflow.order_events"), $n_events0, '... and no event twice');
# A user changed on B since is set back to the exported values.
sb(qq{UPDATE ordflow.users SET name = 'changed', credit_balance = 0 WHERE uid = $u0});
sb(qq{SELECT ordflow.import_partition('$u')});
is(sb("SET timezone = 'UTC'; $users0"), $a_users0, 'an import updates an existing user to the exported values');

# ---------------------------------------------------------------------------
# drop_partition() on A

my $others = q{SELECT (SELECT count(*) FROM ordflow.users WHERE ordflow.partition_of(uid) <> 0) || '/' ||
					  (SELECT count(*) FROM ordflow.orders WHERE ordflow.partition_of(coalesce(uid, order_id)) <> 0) || '/' ||
					  (SELECT count(*) FROM ordflow.order_events AS e
						WHERE ordflow.partition_of(coalesce(e.uid, e.order_id)) <> 0) || '/' ||
					  (SELECT count(*) FROM ordflow.outbox)};
my $a_others = sa($others);
is(sa(q{SELECT users || '/' || orders FROM ordflow.drop_partition(0)}), "$n_users0/$n_orders0",
	'drop_partition(0) deletes the users and orders of partition 0');
is(sa(qq{SELECT (SELECT count(*) FROM ordflow.users WHERE ordflow.partition_of(uid) = 0) || '/' ||
			   (SELECT count(*) FROM ordflow.orders
				 WHERE ordflow.partition_of(coalesce(uid, order_id)) = 0) || '/' ||
			   (SELECT count(*) FROM ordflow.order_events AS e
				 WHERE ordflow.partition_of(coalesce(e.uid, e.order_id)) = 0)}),
	'0/0/0', '... with their events');
is(sa($applied_sql), 'shared:-,stays-1:1', '... and its applied user events, no others');
is(sa($others), $a_others, 'other partitions and the outbox untouched');
is(sa(q{SELECT users || '/' || orders FROM ordflow.drop_partition(0)}), '0/0', 'dropping again deletes nothing');

# Import back on A, now that it holds partition 0 no more.
is(sa(qq{SELECT users || '/' || orders FROM ordflow.import_partition('$u')}), "$n_users0/$n_orders0",
	'import back on A after the drop');
is(sa("SET timezone = 'UTC'; $users0"), $a_users0, '... the same users');
is(sa("SET timezone = 'UTC'; $orders0"), $a_orders0, '... the same orders');
is(sa("SET timezone = 'UTC'; $events0"), $a_events0, '... the same events');

# ---------------------------------------------------------------------------
# Outbox kind 'forward' (written by a consumer handing an order or user
# event on to its partition): published as received, x-ordflow-source
# "forward", no node or origin; only to order.created.<p> or user.<T>.<p>.

ok(OrdflowInvariants::wait_connected($b, 1, 90), 'B: relay and consumer connected');
$mq->declare_queue('spy.fwd', bind => [ 'ordflow', 'order.created.*' ]);
$mq->declare_queue('spy.fwduser', bind => [ 'ordflow', 'user.*.*' ]);
sb(q{INSERT INTO ordflow.outbox (kind, routing_key, raw_body, message_id, correlation_id, reply_to)
	 VALUES ('forward', 'order.created.2', '\x7b226f726465725f6964223a317d', 'm-1', 'c-1', 'client.r')});
my $m = $mq->get_message('spy.fwd', wait => 60) || { headers => {} };
is($m->{body}, '{"order_id":1}', 'a forward publishes its raw body as received');
is($m->{routing_key}, 'order.created.2', '... with its routing key');
is(join(',', map { $m->{$_} // '' } qw(message_id correlation_id reply_to)), 'm-1,c-1,client.r',
	'... its message_id, correlation_id and reply_to');
is($m->{headers}{'x-ordflow-source'}, 'forward', '... marked x-ordflow-source: forward');
ok(!exists $m->{headers}{'x-ordflow-node'} && !exists $m->{headers}{'x-ordflow-origin'},
	'... without x-ordflow-node/-origin (it is the outside message it was)');
sb(q{INSERT INTO ordflow.outbox (kind, routing_key, raw_body)
	 VALUES ('forward', 'user.U.3', convert_to('{"type":"U"}', 'UTF8'))});
$m = $mq->get_message('spy.fwduser', wait => 60) || { headers => {} };
is($m->{routing_key} . ' ' . ($m->{headers}{'x-ordflow-source'} // ''), 'user.U.3 forward',
	'a user event is forwarded to user.<T>.<p>');

sb(q{INSERT INTO ordflow.outbox (kind, routing_key, raw_body)
	 SELECT 'forward', k, convert_to('{"k":"' || k || '"}', 'UTF8')
	   FROM unnest('{order.created,user.U,order.created.x,order.created.,user..3,user.U.3.4,other.2}'::text[]) AS k});
ok( OrdflowTest::wait_for($b, q{SELECT count(*) FROM ordflow.dead_letters
								  WHERE origin = 'relay' AND error LIKE '%forwarded message''s routing key%'}, '7', 60),
	'a forward to order.created, user.<T> or anything but <...>.<partition> is dead-lettered by the relay')
  or diag sb('SELECT routing_key, error, origin FROM ordflow.dead_letters');
ok(OrdflowTest::wait_for($b, 'SELECT count(*) FROM ordflow.outbox', '0', 60), 'the outbox is empty');
my @leaked = ($mq->get_messages('spy.fwd', count => 10), $mq->get_messages('spy.fwduser', count => 10));
is(scalar(@leaked), 0, 'none of them was published')
  or diag join("\n", map { $_->{routing_key} } @leaked);

# ---------------------------------------------------------------------------
# What no queue is bound for (here order.updated: with P > 1 the shared
# queue takes only order.created) the broker drops; with the README's
# alternate-exchange policy it is a dead letter that says why.

$mq->ctl('set_policy', '--apply-to', 'exchanges', 'ordflow-unroutable', '^ordflow$',
	'{"alternate-exchange": "ordflow.dlx"}');
my $unroutable = q{SELECT count(*) FROM ordflow.dead_letters WHERE routing_key = 'order.updated'};
my $until = time + 60;
# the policy takes effect asynchronously: publish until one comes through
while (sb($unroutable) == 0 && time < $until)
{
	$mq->publish('order.updated', '{"order_id": 5, "uid": 2, "symbol": "X", "quantity": 1}');
	sleep 0.5;
}
ok(sb($unroutable) > 0, 'with the policy, an order no queue is bound for is a dead letter');
$mq->publish('no.such.key', '{"x": 1}', message_id => 'nsk');
ok( OrdflowTest::wait_for($b, q{SELECT origin || ' ' || queue || ' ' || message_id || ': ' || error
								  FROM ordflow.dead_letters WHERE routing_key = 'no.such.key'},
		'broker ordflow.dead nsk: no queue is bound to routing key "no.such.key": '
		  . 'it came through the alternate exchange (or was published to ordflow.dlx directly)', 60),
	'... and says why, with the routing key')
  or diag sb(q{SELECT routing_key, error FROM ordflow.dead_letters WHERE origin = 'broker'});

done_testing();
