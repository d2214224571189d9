
# stop() is synchronous (SPEC 1.1 "Generator"): once it returns, no order of
# the generator commits until the next start().  The generator runs at a
# high rate (several orders per transaction, a transaction every few ms),
# is stopped many times at arbitrary moments, and after each stop() the
# number of generated orders must not change any more.  With 1.0's
# generator a batch in flight committed after stop() returned.
#
# No broker: the generator never talks to it, and with no back-pressure
# limit the orders just pile up in the outbox.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = OrdflowTest::new_node('stopsync', consumers => 1,
	extra => "ordflow.generator_max_backlog = 0\nlog_min_messages = warning");
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
$node->safe_psql('postgres', q{
	SELECT ordflow.create_user('u' || g, 'stop', 1000) FROM generate_series(1, 10) AS g});

my $count_sql = q{SELECT count(*) FROM ordflow.orders WHERE source = 'generator'};
my $rounds = 12;
my $late = 0;
my $made_any = 0;
for my $round (1 .. $rounds)
{
	my $before = $node->safe_psql('postgres', $count_sql);
	$node->safe_psql('postgres', 'SELECT ordflow.start(20000)');
	# let it run a little: until it has made orders in this round
	ok( OrdflowTest::wait_for($node, "SELECT ($count_sql) > $before", 't', 60),
		"round $round: the generator makes orders");
	usleep(int(rand(200_000)));
	# stop(), then count in a new statement (after stop() committed)
	my $out = $node->safe_psql('postgres',
		"SELECT ordflow.stop();\nSELECT ($count_sql)::text || ' ' || (SELECT max(order_id) FROM ordflow.orders)");
	my (undef, $line) = split /\n/, $out;
	my ($at_stop, $max_at_stop) = split / /, $line;
	$made_any++ if $at_stop > $before;
	# a batch still in flight would commit within a few milliseconds; give
	# it far longer, and wait until the generator says it is stopped
	ok( OrdflowTest::wait_for($node,
			q{SELECT state FROM ordflow.status() WHERE worker = 'generator'}, 'stopped', 60),
		"round $round: the generator reports stopped");
	sleep 1;
	my ($after, $max_after) = split /\|/, $node->safe_psql('postgres',
		"SELECT ($count_sql), (SELECT max(order_id) FROM ordflow.orders)");
	if (!is($after, $at_stop,
			"round $round: no generated order committed after stop() returned ($at_stop)"))
	{
		$late++;
		diag "round $round: max order_id $max_at_stop right after stop(), $max_after later";
	}
	is($max_after, $max_at_stop, "round $round: max order_id unchanged after stop()");
}
is($late, 0, "no late order in $rounds stops");
is($made_any, $rounds, 'orders were made in every round');

# each order is whole: its event and its outbox row (every order here is
# the generator's, and nothing consumes them)
is( $node->safe_psql('postgres', q{
		SELECT format('%s %s %s', (SELECT count(*) FROM ordflow.orders),
					  (SELECT count(DISTINCT order_id) FROM ordflow.order_events),
					  (SELECT count(DISTINCT order_id) FROM ordflow.outbox))}),
	join(' ', ($node->safe_psql('postgres', $count_sql)) x 3),
	'every generated order has its event and its outbox row');

# start() works again after all those stops
my $n = $node->safe_psql('postgres', $count_sql);
$node->safe_psql('postgres', 'SELECT ordflow.start(500)');
ok(OrdflowTest::wait_for($node, "SELECT ($count_sql) > $n", 't', 60),
	'start() after the stops makes orders again');
$node->safe_psql('postgres', 'SELECT ordflow.stop()');

unlike(PostgreSQL::Test::Utils::slurp_file($node->logfile), qr/terminated by signal|PANIC/,
	'no backend crashed');
$node->stop;
done_testing();
