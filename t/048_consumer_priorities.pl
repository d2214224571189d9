
# Consumers share the orders queue by priority (issue 12: 2 consumers were
# slower than 1 because a stream one consumer keeps up with was split in
# two, halving every batch).  With ordflow.consumer_priorities on (the
# default) consumer i subscribes with x-priority -i, so while consumer 0
# has prefetch room consumer 1 gets (nearly) nothing; turned off by a reload, the
# consumers subscribe again at priority 0 and the broker spreads the orders
# round-robin.  Either way every order is processed once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $mq = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('prio', broker => $mq, consumers => 2);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');

sub sq { return $node->safe_psql('postgres', $_[0]); }

# poll $cond every 0.2 s for at most $timeout seconds
sub wait_until
{
	my ($cond, $timeout) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		return 1 if $cond->();
		sleep(0.2);
	}
	return $cond->();
}

# "priority" of every consumer of ordflow.orders, sorted: the x-priority
# argument, or 0 without one
sub priorities
{
	my $out = $mq->ctl('-q', 'list_consumers', 'queue_name', 'arguments');
	my @p;
	for my $line (split /\n/, $out)
	{
		my ($queue, $args) = split /\t/, $line, 2;
		next unless defined $queue && $queue eq 'ordflow.orders';
		push @p, ($args // '') =~ /"x-priority",(-?\d+)/ ? $1 : 0;
	}
	return join(',', sort { $a <=> $b } @p);
}

# Place N orders in one transaction, wait until the consumers processed
# them all; returns the orders processed by consumer 0 and consumer 1.
sub round
{
	my ($n) = @_;
	sq('SELECT ordflow.truncate()');
	sq("SELECT count(ordflow.place_order(NULL, NULL, 'ABC', 1 + i % 10)) FROM generate_series(1, $n) AS i");
	ok( OrdflowTest::wait_for(
			$node, 'SELECT orders_processed FROM ordflow.metrics()', $n, 120),
		"all $n orders processed");
	return split /\|/, sq(q{SELECT coalesce(sum(processed) FILTER (WHERE worker = 0), 0),
	                                coalesce(sum(processed) FILTER (WHERE worker = 1), 0)
	                           FROM ordflow.metrics_totals});
}

ok(OrdflowInvariants::wait_connected($node, 2, 90), 'relay and two consumers connected');
is(sq('SHOW ordflow.consumer_priorities'), 'on', 'consumer priorities are on by default');
ok(wait_until(sub { priorities() eq '-1,0' }, 60),
	'the broker shows the consumers at priorities 0 and -1')
  or diag 'priorities: ' . priorities();

# 300 orders are far below ordflow.prefetch (5000): consumer 0 has room,
# so consumer 1 is given an order only when the broker sees consumer 0's
# channel blocked for a moment (its flow control, on a loaded machine:
# 40 of 300 once).  Round-robin splits them evenly (measured: 50,000 /
# 50,000 and 49,891 / 50,109), so "at least three quarters to consumer 0"
# tells the two apart with room for that.
my ($c0, $c1) = round(300);
is($c0 + $c1, 300, 'every order processed once');
cmp_ok($c0, '>=', 225, "consumer 0 processed nearly every order ($c0; consumer 1: $c1)");

# Off: both consumers subscribe again, without priorities.
sq('ALTER SYSTEM SET ordflow.consumer_priorities = off');
sq('SELECT pg_reload_conf()');
ok(wait_until(sub { priorities() eq '0,0' }, 60),
	'after the reload both consumers subscribed again at priority 0')
  or diag 'priorities: ' . priorities();
ok(OrdflowInvariants::wait_connected($node, 2, 90), 'both consumers connected again');

($c0, $c1) = round(300);
is($c0 + $c1, 300, 'every order processed once');
ok($c0 > 0 && $c1 > 0, "round-robin: both consumers processed orders ($c0 and $c1)");
is(sq(q{SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'}), '0',
	'no order left unprocessed');

$node->stop;
$mq->stop;
done_testing();
