
# Poison batches and messages nobody would take (issue 8, "poison batches
# are retried forever", "no size limit", and the broker's own dead letters).
#
#  1. Five 2 MB messages and a valid order behind them: each is a dead
#     letter keeping its first 64 kB and its real size, never held whole;
#     the valid order completes; the consumer stays small.  (1.0 had no size
#     limit and held each body twice.)
#  2. A transient failure that repeats: lock_timeout = 200ms and another
#     session holding a user's row.  The batch is retried, then message by
#     message; the order that still fails is dead-lettered with the lock
#     timeout error, the others are processed, nothing loops.  (1.0
#     requeued the batch for ever.)
#  3. A message the broker dead-letters (expired in ordflow.orders) is
#     consumed from ordflow.dead into dead_letters with origin 'broker' and
#     the reason.  (1.0 left it in ordflow.dead, without a row.)
#  4. A LATIN1 database receiving user.C with a name it cannot hold ("€"):
#     one dead letter, no loop, a valid order behind it processed.  (1.0
#     converted outside the subtransaction and failed the batch for ever.)
#     A second node on the same broker, with its own exchange and queues.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowHostile;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('poison', broker => $mq);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq('CREATE EXTENSION ordflow');
sq(q{INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance)
	 SELECT 'U' || g, 'L' || g, 1e6, 1e6 FROM generate_series(1, 5) g});
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected},
		't', 90),
	'consumer 0 is connected');

my $order = sub {
	my ($id, $uid) = @_;
	return qq({"order_id": $id, "uid": $uid, "symbol": "PB", "amount": 10});
};

# --- 1. oversized messages ----------------------------------------------
{
	my $label = 'oversized';
	my $size = 2 * 1024 * 1024;
	my $cpid = sq(q{SELECT pid FROM ordflow.status() WHERE worker = 'consumer 0'});
	for my $i (1 .. 5)
	{
		my $body = sprintf('BIG%d:', $i);
		$body .= 'x' x ($size - length($body));
		$mq->publish('order.created', $body);
	}
	$mq->publish('order.created', $order->(7000001, 1));
	ok( OrdflowTest::wait_for($node,
			q{SELECT status FROM ordflow.orders WHERE order_id = 7000001}, 'completed', 120),
		"$label: the valid order behind five 2 MB messages completes");
	is( sq(q{SELECT count(*) FROM ordflow.dead_letters WHERE substr(body, 1, 3) = 'BIG'::bytea}),
		'5', "$label: five dead letters");
	is( sq(qq{SELECT count(*) FROM ordflow.dead_letters d
			   WHERE substr(body, 1, 3) = 'BIG'::bytea
				 AND (to_jsonb(d) ->> 'body_size')::bigint = $size}),
		'5', "$label: each with body_size $size");
	is( sq(q{SELECT string_agg(DISTINCT length(body)::text, ',') FROM ordflow.dead_letters
			  WHERE substr(body, 1, 3) = 'BIG'::bytea}),
		'65536', "$label: each keeps only its first 64 kB");
	is( sq(q{SELECT count(*) FROM ordflow.dead_letters
			  WHERE substr(body, 1, 3) = 'BIG'::bytea
				AND error LIKE '%exceeds ordflow.max_message_size%'}),
		'5', "$label: the error says the message exceeds ordflow.max_message_size");
	my $st = PostgreSQL::Test::Utils::slurp_file("/proc/$cpid/status");
	my ($hwm) = $st =~ /^VmHWM:\s+(\d+) kB/m;
	note "$label: consumer $cpid peak RSS (VmHWM) $hwm kB";
	cmp_ok($hwm // 1e9, '<', 150 * 1024, "$label: the consumer's peak RSS stayed below 150 MB");
	is(sq(q{SELECT pid FROM ordflow.status() WHERE worker = 'consumer 0'}), $cpid,
		"$label: the same consumer process did it all");
}

# --- 2. a lock timeout that keeps happening ------------------------------
{
	my $label = 'lock timeout';
	sq(q{ALTER DATABASE postgres SET lock_timeout = '200ms'});
	ok(OrdflowHostile::restart_consumers($node), "$label: consumers reconnected with lock_timeout = 200ms");
	# the session outlives the default query timer of background_psql
	my $locker = $node->background_psql('postgres', timeout => 1800);
	$locker->set_query_timer_restart;
	$locker->query_safe(q{BEGIN; SELECT uid FROM ordflow.users WHERE uid = 2 FOR UPDATE});
	my $dl0 = sq('SELECT count(*) FROM ordflow.dead_letters');
	$mq->publish('order.created', $order->(7100001, 2));
	$mq->publish_many('order.created', [ map { $order->(7100001 + $_, 1) } 1 .. 10 ]);
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.orders WHERE order_id BETWEEN 7100002 AND 7100011
			   AND status = 'completed'}, '10', 120),
		"$label: the orders of other users are processed");
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.dead_letters
			   WHERE body_text LIKE '%7100001%' AND error ILIKE '%lock timeout%'}, '1', 120),
		"$label: the order whose user stays locked is dead-lettered with the lock timeout error")
	  or diag sq(q{SELECT string_agg(error, E'\n') FROM ordflow.dead_letters});
	is(sq(q{SELECT count(*) FROM ordflow.orders WHERE order_id = 7100001}), '0',
		"$label: it was not processed");
	ok(OrdflowTest::wait_for($node, 'SELECT 1', '1'), 'server answers');
	my $deadline = time + 60;
	my $s;
	while (time < $deadline)
	{
		$s = $mq->queue_stats('ordflow.orders');
		last if $s && $s->{messages} == 0;
		usleep(500_000);
	}
	is($s && $s->{messages}, 0, "$label: nothing is left in ordflow.orders, ready or unacked");
	ok( OrdflowHostile::stays($node,
			q{SELECT count(*) FROM ordflow.dead_letters WHERE body_text LIKE '%7100001%'}, '1', 5),
		"$label: it is dead-lettered once and not retried again");
	$locker->query_safe('COMMIT');
	$locker->quit;
	sq(q{ALTER DATABASE postgres RESET lock_timeout});
	ok(OrdflowHostile::restart_consumers($node), "$label: consumers reconnected without lock_timeout");
	$mq->publish('order.created', $order->(7100020, 2));
	ok( OrdflowTest::wait_for($node,
			q{SELECT status FROM ordflow.orders WHERE order_id = 7100020}, 'completed', 60),
		"$label: once the lock is gone, that user's orders are processed again");
}

# --- 3. a message the broker dead-letters ---------------------------------
{
	my $label = 'broker dead letter';
	OrdflowHostile::set_conf($node, 'ordflow.consumers' => '0');
	my $deadline = time + 60;
	my $s;
	while (time < $deadline)
	{
		$s = $mq->queue_stats('ordflow.orders');
		last if $s && $s->{consumers} == 0;
		usleep(200_000);
	}
	is($s && $s->{consumers}, 0, "$label: ordflow.orders has no consumer");
	my $dead0 = $mq->queue_depth('ordflow.dead') // 0;
	OrdflowHostile::publish($mq, 'order.created', $order->(7200001, 1), expiration => '1');
	$deadline = time + 60;
	my $d;
	while (time < $deadline)
	{
		# the broker expires the message and routes it to ordflow.dead
		$d = $mq->queue_depth('ordflow.dead') // 0;
		last if $d > $dead0;
		usleep(200_000);
	}
	is($d, $dead0 + 1, "$label: the expired message is in ordflow.dead");
	OrdflowHostile::set_conf($node, 'ordflow.consumers' => '1');
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.dead_letters d
			   WHERE body_text LIKE '%7200001%' AND to_jsonb(d) ->> 'origin' = 'broker'
				 AND error LIKE '%expired%' AND queue = 'ordflow.orders'}, '1', 90),
		"$label: it becomes a dead letter with origin 'broker', the queue and the reason 'expired'")
	  or diag sq(q{SELECT string_agg(to_jsonb(d)::text, E'\n') FROM ordflow.dead_letters d WHERE body_text LIKE '%7200001%'});
	$deadline = time + 60;
	while (time < $deadline)
	{
		$d = $mq->queue_depth('ordflow.dead') // 0;
		last if $d == 0;
		usleep(200_000);
	}
	is($d, 0, "$label: ordflow.dead is empty");
	is(sq(q{SELECT count(*) FROM ordflow.orders WHERE order_id = 7200001}), '0',
		"$label: the expired order was not processed");
}

# --- 4. a LATIN1 database --------------------------------------------------
{
	my $label = 'LATIN1';
	my $latin = OrdflowTest::new_node('latin1', broker => $mq, extra => <<'EOC');
ordflow.exchange = 'latin'
ordflow.orders_queue = 'latin.orders'
ordflow.user_events_queue = 'latin.user_events'
EOC
	$latin->safe_psql('postgres',
		q{CREATE DATABASE latin1db ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'});
	# the extension can only be created in ordflow.database (postmaster)
	# (the role is looked up per batch, so it may be created afterwards)
	$latin->append_conf('postgresql.conf',
		qq{ordflow.database = 'latin1db'\nordflow.user_events_role = 'ue_writer'\n});
	$latin->restart;
	$latin->safe_psql('latin1db', 'CREATE EXTENSION ordflow');
	$latin->safe_psql('latin1db', q{
		INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance) VALUES ('Ann', 'Lee', 100, 100);
		CREATE ROLE ue_writer NOLOGIN;
		GRANT USAGE ON SCHEMA ordflow TO ue_writer;
		GRANT SELECT, INSERT, UPDATE, DELETE ON ordflow.users TO ue_writer;
		DO $$ BEGIN
			EXECUTE format('GRANT USAGE ON SEQUENCE %s TO ue_writer',
						   pg_get_serial_sequence('ordflow.users', 'uid'));
		END $$});
	ok( OrdflowTest::wait_for($latin,
			q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected},
			't', 90, 'latin1db'),
		"$label: consumer 0 of the LATIN1 database is connected");
	my $lq = sub { $latin->safe_psql('latin1db', $_[0]) };
	OrdflowHostile::publish($mq, 'user.C', qq({"type":"C","name":"\xe2\x82\xac","lname":"Euro","credit_limit":1}),
		exchange => 'latin');
	OrdflowHostile::publish($mq, 'user.C', '{"type":"C","name":"Plain","lname":"Ascii","credit_limit":1}',
		exchange => 'latin');
	OrdflowHostile::publish($mq, 'order.created', $order->(7300001, 1), exchange => 'latin');
	ok( OrdflowTest::wait_for($latin,
			q{SELECT status FROM ordflow.orders WHERE order_id = 7300001}, 'completed', 120, 'latin1db'),
		"$label: the order behind the event is processed");
	ok( OrdflowTest::wait_for($latin,
			q{SELECT count(*) FROM ordflow.users WHERE lname = 'Ascii'}, '1', 60, 'latin1db'),
		"$label: the valid user event behind it is applied");
	is($lq->(q{SELECT count(*) FROM ordflow.dead_letters WHERE position('\xe282ac'::bytea IN body) > 0}),
		'1', "$label: the event with a name LATIN1 cannot hold is one dead letter");
	is($lq->(q{SELECT count(*) FROM ordflow.users WHERE lname = 'Euro'}), '0', "$label: no user created from it");
	ok( OrdflowHostile::stays($latin, q{SELECT count(*) FROM ordflow.dead_letters}, '1', 5, 'latin1db'),
		"$label: it is not retried");
	is($mq->queue_depth('latin.user_events'), 0, "$label: nothing is left in latin.user_events");
	my ($ret, $out) = $latin->psql('latin1db', 'SELECT 1');
	is($out, '1', "$label: the LATIN1 server is still up");
	ok(!$latin->log_contains('terminated by signal'), "$label: no process of it crashed");
	$latin->stop;
}

OrdflowHostile::server_alive($node, 'at the end');

$node->stop;
$mq->stop;
done_testing();
