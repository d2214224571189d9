
# ordflow.retention: the supervisor deletes order events and per-minute
# metrics older than the setting, leaves younger ones and the orders alone,
# and keeps everything while the setting is 0.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;

use PostgreSQL::Test::Utils;
use Test::More;

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('retention', broker => $mq,
	extra => "ordflow.retention = 0");
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }

ok(OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'supervisor'}, 't', 60),
	'supervisor running');

# Processed orders, then their events and metrics rows aged artificially.
sq(q{SELECT ordflow.place_order(NULL, 5) FROM generate_series(1, 20)});
ok(OrdflowTest::wait_for($node,
		q{SELECT orders_processed = 20 FROM ordflow.metrics()}, 't', 60),
	'20 orders processed');
is(sq('SELECT count(*) FROM ordflow.order_events'), '40', 'two events per order');

sq(q{UPDATE ordflow.order_events SET event_time = now() - interval '3 days'
	  WHERE order_id IN (SELECT order_id FROM ordflow.orders ORDER BY order_id LIMIT 10)});
sq(q{INSERT INTO ordflow.metrics_minute (minute, worker, processed, completed, declined, sum_price, latency_hist)
	 VALUES (date_trunc('minute', now() - interval '3 days'), 0, 1, 1, 0, 5, array_fill(0::bigint, ARRAY[256]))});
my $minutes_before = sq('SELECT count(*) FROM ordflow.metrics_minute');

# retention = 0 keeps everything, even across the supervisor's passes
sleep 3;
is(sq('SELECT count(*) FROM ordflow.order_events'), '40', 'retention = 0 keeps every event');

# 1 day: the old ones go, the young ones stay.  The supervisor applies
# retention once a minute; a restart makes it do so at once.
$node->append_conf('postgresql.conf', "ordflow.retention = '1d'");
$node->restart;
ok(OrdflowTest::wait_for($node,
		q{SELECT count(*) = 20 FROM ordflow.order_events}, 't', 90),
	'events older than ordflow.retention are deleted')
  or diag sq('SELECT count(*) FROM ordflow.order_events');
is(sq(q{SELECT count(*) FROM ordflow.order_events WHERE event_time < now() - interval '1 day'}),
	'0', 'no event older than a day is left');
is(sq('SELECT count(*) FROM ordflow.metrics_minute'), $minutes_before - 1,
	'the old metrics_minute row is deleted, the recent ones stay');
is(sq('SELECT count(*) FROM ordflow.orders'), '20', 'orders themselves are kept');
is(sq('SELECT orders_processed FROM ordflow.metrics()'), '20',
	'metrics() totals are not affected by retention');

$node->stop;
done_testing();
