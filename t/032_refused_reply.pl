
# A reply the broker refuses never replays the event (issue 8, "poison
# batches are retried forever": one C event created 503 users in 18 s).
#
# The broker's max_message_size is 64 kB.  A user.C and a user.R whose
# reply (~1,500 users) is over that limit but under ordflow's own
# max_message_size are consumed in one batch.  1.0 sent the reply itself:
# the broker closed the channel, the ack sent after the commit was lost and
# the committed batch was applied again and again.  1.1 writes the reply to
# the outbox; the relay's refused publish becomes a dead letter (origin
# 'relay') and the C event is applied exactly once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowHostile;

use PostgreSQL::Test::Utils;
use Test::More;

my $limit = 65536;
my $mq = OrdflowTest::start_broker(extra => "max_message_size = $limit");
my $node = OrdflowTest::new_node('refused', broker => $mq, consumers => 0);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq('CREATE EXTENSION ordflow');
sq(q{INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance)
	 SELECT 'Name' || g, 'Lastname-' || g, 1000, 1000 FROM generate_series(1, 1500) g});
sq(q{CREATE ROLE ue_writer NOLOGIN;
	 GRANT USAGE ON SCHEMA ordflow TO ue_writer;
	 GRANT SELECT, INSERT, UPDATE, DELETE ON ordflow.users TO ue_writer;
	 DO $$ BEGIN
		EXECUTE format('GRANT USAGE ON SEQUENCE %s TO ue_writer',
					   pg_get_serial_sequence('ordflow.users', 'uid'));
	 END $$});
OrdflowHostile::set_conf($node, 'ordflow.user_events_role' => 'ue_writer');
ok(OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'relay' AND connected}, 't', 90),
	'the relay is connected');
ok($mq->queue_stats('ordflow.user_events'), 'the user events queue is declared');

my $replies = 'test.refused';
$mq->declare_queue($replies);

# Both events wait in the queue, so the consumer takes them in one batch.
$mq->publish('user.C', '{"type":"C","name":"Poison","lname":"Batch","credit_limit":5}',
	reply_to => $replies, correlation_id => 'create');
$mq->publish('user.R', '{"type":"R","condition":{}}',
	reply_to => $replies, correlation_id => 'too-big');
my $logpos = -s $node->logfile;
OrdflowHostile::set_conf($node, 'ordflow.consumers' => '1');
ok(OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected}, 't', 90),
	'consumer 0 started and connected');

ok(OrdflowTest::wait_for($node, q{SELECT count(*) >= 1 FROM ordflow.users WHERE name = 'Poison'}, 't', 60),
	'the C event was applied');
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) FROM ordflow.dead_letters d
		   WHERE to_jsonb(d) ->> 'origin' = 'relay'},
		'1', 90),
	'the refused reply is a relay dead letter');
ok(OrdflowHostile::stays($node, q{SELECT count(*) FROM ordflow.users WHERE name = 'Poison'}, '1', 20),
	'after 20 s there is still exactly one user from the C event');
is(sq(q{SELECT count(*) FROM ordflow.users WHERE name = 'Poison'}), '1', 'one Poison user');

# the C event's own small reply still got through, once
my @m = $mq->get_messages($replies, count => 10, wait => 5);
# replies are sent at least once: a resend after the relay reconnects is fine
cmp_ok(scalar(grep { $_->{correlation_id} eq 'create' } @m), '>=', 1, 'the C event was answered');
is(scalar(grep { $_->{correlation_id} eq 'too-big' } @m), 0, 'the refused reply was never delivered');

# the pipeline goes on: a later event and an order are processed
$mq->publish('user.C', '{"type":"C","name":"After","lname":"Batch","credit_limit":5}');
ok(OrdflowTest::wait_for($node, q{SELECT count(*) FROM ordflow.users WHERE name = 'After'}, '1', 60),
	'a later user event is applied once');
my $oid = sq(q{SELECT ordflow.place_order(1, 3, 'AFTER', NULL)});
ok(OrdflowTest::wait_for($node, "SELECT status <> 'initialised' FROM ordflow.orders WHERE order_id = $oid", 't', 60),
	'an order placed after the refused reply is published and processed');
ok(OrdflowTest::wait_for($node, 'SELECT count(*) FROM ordflow.outbox', '0', 60),
	'the outbox drains (the refused reply is not retried for ever)');
is($mq->queue_depth('ordflow.user_events'), 0, 'nothing is left in the user events queue');
OrdflowHostile::server_alive($node, 'at the end');

$node->stop;
$mq->stop;
done_testing();
