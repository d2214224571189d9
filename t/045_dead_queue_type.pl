
# <exchange>.dead is declared with the configured queue type (SPEC "More
# than one node": with ordflow.queue_type = quorum it is a quorum queue,
# so it lives on every node of a cluster).  One that already exists with
# other arguments (a classic one from 1.0, say, where quorum is configured
# now) is used as it is with a log line, instead of locking ordflow out
# with 406 PRECONDITION_FAILED.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;

my $mq = OrdflowTest::start_broker();
# what 1.0 declared: a classic qx.dead
$mq->declare_queue('qx.dead', durable => 1);

my (undef, $node) = OrdflowInvariants::setup('deadq', broker => $mq, consumers => 1,
	extra => "ordflow.exchange = 'qx'\nordflow.orders_queue = 'qx.orders'\n"
	  . "ordflow.user_events_queue = 'qx.user_events'\nordflow.queue_type = quorum");
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

my %type = map { (split /\t/)[ 0, 1 ] }
  split /\n/, $mq->ctl('list_queues', '-q', '--no-table-headers', 'name', 'type');
is($type{'qx.orders'}, 'quorum', 'the orders queue is a quorum queue');
is($type{'qx.dead'}, 'classic', 'the classic dead-letter queue that existed is kept');
like(OrdflowInvariants::log_since($node, 0),
	qr/ordflow: queue "qx\.dead" exists with arguments other than ordflow\.queue_type = quorum asks for; using it as it is/,
	'... with a log line saying so');

# a topology of its own: its dead-letter queue is declared quorum
my $pos = OrdflowInvariants::log_position($node);
$sql->(q{ALTER SYSTEM SET ordflow.exchange = 'qz'});
$sql->(q{ALTER SYSTEM SET ordflow.orders_queue = 'qz.orders'});
$sql->(q{ALTER SYSTEM SET ordflow.user_events_queue = 'qz.user_events'});
$sql->('SELECT pg_reload_conf()');
ok(OrdflowTest::wait_for_log($node, $pos, qr/ordflow: connected to the broker/, 2, 60),
	'the workers reconnect with the new names');
ok(OrdflowInvariants::wait_connected($node, 1, 60), '... and are connected');
%type = map { (split /\t/)[ 0, 1 ] }
  split /\n/, $mq->ctl('list_queues', '-q', '--no-table-headers', 'name', 'type');
is($type{'qz.dead'}, 'quorum', 'a new dead-letter queue is declared quorum');
is($type{'qz.orders'}, 'quorum', '... like the orders queue');

$sql->('SELECT ordflow.start(100)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 100 FROM ordflow.metrics()', 't', 60),
	'orders flow');
OrdflowInvariants::stop_and_drain($node, label => 'dead queue type');
OrdflowInvariants::check($node, 'dead queue type', min_orders => 100);

$node->stop;
$mq->stop;
done_testing();
