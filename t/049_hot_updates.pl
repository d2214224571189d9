
# Processing an order updates its row in place (issue 12: the consumer's
# write-back was half its time, a third of it B-tree insertions).  orders
# has fillfactor 50, so a batch finds room on each page for the processed
# versions of that page's rows and the updates are HOT: no new
# orders_pkey entry per order.  On full pages (fillfactor 100) a burst of
# 3,000 orders was 10-35 % HOT.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;

my $mq = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('hot', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }

is(sq(q{SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'ordflow.orders'::regclass}),
	'fillfactor=50', 'orders leaves half of each page for updates');
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'relay and consumer connected');

# one burst, so batches are large and take many rows of each page at once
sq(q{SELECT count(ordflow.place_order(NULL, NULL, 'ABC', 1 + i % 10)) FROM generate_series(1, 3000) AS i});
ok( OrdflowTest::wait_for(
		$node, 'SELECT orders_processed FROM ordflow.metrics()', '3000', 120),
	'all 3000 orders processed');

# the consumer reports its table statistics within a second or so
my $stats = q{SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables
			   WHERE relid = 'ordflow.orders'::regclass};
ok(OrdflowTest::wait_for($node, q{SELECT n_tup_upd >= 3000 FROM pg_stat_user_tables
								   WHERE relid = 'ordflow.orders'::regclass}, 't', 30),
	'the statistics show the consumer\'s updates');
my ($upd, $hot) = split / /, sq($stats);
cmp_ok($hot, '>=', 0.6 * $upd, "at least 60 % of the updates were HOT ($hot of $upd)");

$node->stop;
$mq->stop;
done_testing();
