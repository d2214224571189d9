
# ordflow against a 3-node RabbitMQ cluster with quorum queues
# (SPEC "More than one node"; issue 9).
#
# 1. Failover: ordflow.amqp_url lists the three nodes, the generator makes
#    ~200 orders/s, and the node the relay is connected to (status().node)
#    dies by kill -9 of its beam.  The workers move to another node of the
#    list, and after the drain every order was processed exactly once.  The
#    time to reconnect is measured and printed (never asserted tightly: the
#    machine is shared).
# 2. Leader loss: ordflow uses one node only, and the node holding the
#    quorum leader of ordflow.orders dies: a new leader takes over, orders
#    keep flowing, exactly once.
#
# <exchange>.dead is a quorum queue too: a classic one would live on one
# node, and redeclaring it with that node down fails with 404, which is how
# failover failed before.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowCluster;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $cl = OrdflowCluster::start(3);
my @b = $cl->nodes;
my $list = $cl->url_list;

my $consumers = 3;
my (undef, $node) = OrdflowInvariants::setup('cluster', broker => $b[0],
	consumers => $consumers, users => 20,
	extra => "ordflow.amqp_url = '$list'\nordflow.queue_type = quorum\nlog_statement = none");
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

# --- topology: every queue ordflow declares is a quorum queue --------------
my $q = $cl->queue_info;
is($q->{$_} && $q->{$_}{type}, 'quorum', "$_ is a quorum queue")
  for qw(ordflow.orders ordflow.user_events ordflow.dead);

# --- workers spread over the list ------------------------------------------
my $relay_node = $sql->(q{SELECT node FROM ordflow.status() WHERE worker = 'relay'});
# the relay runs in slot 2: it starts at element 2 of the list
is($relay_node, '127.0.0.1:' . $b[2]->port,
	'the relay starts at its own element of the list (status().node)');

# --- 1. failover under load -----------------------------------------------
$sql->('SELECT ordflow.start(200)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 400 FROM ordflow.metrics()', 't', 90),
	'orders flow through the cluster')
  or diag OrdflowInvariants::counts($node);

my $victim = $cl->broker_at_port($relay_node);
ok($victim, "status().node names a node of the cluster ($relay_node)");
my $logpos = OrdflowInvariants::log_position($node);
my $t_kill = time;
$victim->kill9;
note 'killed ' . $victim->node_name . " ($relay_node)";

# poll status() until the relay and every consumer are connected again,
# the relay to another node
my ($t_relay, $t_all);
my $dead = $victim->port;
while (time - $t_kill < 120 && !defined $t_all)
{
	my ($ret, $out) = $node->psql('postgres', qq{
		SELECT coalesce(bool_and(connected AND node NOT IN ('', '127.0.0.1:$dead'))
							FILTER (WHERE worker = 'relay'), false),
			   count(*) FILTER (WHERE connected) = 1 + $consumers
		  FROM ordflow.status() WHERE worker = 'relay' OR worker LIKE 'consumer %'});
	if ($ret == 0 && defined $out)
	{
		my ($relay_ok, $all_ok) = split /\|/, $out;
		$t_relay //= time if $relay_ok eq 't';
		$t_all = time if $relay_ok eq 't' && $all_ok eq 't' && defined $t_relay;
	}
	usleep(100_000);
}
ok(defined $t_relay, 'the relay reconnected to another node of the list')
  or diag $sql->('SELECT * FROM ordflow.status()');
ok(defined $t_all, 'the relay and every consumer are connected again');
diag sprintf('failover: relay reconnected %.2f s after the kill -9, all workers %.2f s',
	($t_relay // time) - $t_kill, ($t_all // time) - $t_kill);
my $new_node = $sql->(q{SELECT node FROM ordflow.status() WHERE worker = 'relay'});
isnt($new_node, $relay_node, "status().node shows the new node ($new_node)");

my $done = $sql->('SELECT orders_processed FROM ordflow.metrics()');
ok( OrdflowTest::wait_for($node,
		"SELECT orders_processed >= $done + 400 FROM ordflow.metrics()", 't', 90),
	'orders keep flowing after the failover')
  or diag OrdflowInvariants::counts($node);
my $log = OrdflowInvariants::log_since($node, $logpos);
like($log, qr/ordflow: lost the broker connection/, 'the log says the connection was lost');
like($log, qr/ordflow: reconnected to the broker at amqp:\/\/guest:\*\*\*\@127\.0\.0\.1:\d+/,
	'... and names the node it reconnected to, password redacted');

OrdflowInvariants::stop_and_drain($node, label => 'after the failover');
OrdflowInvariants::check($node, 'after the failover', min_orders => 800);

# bring the node back for the next part (quorum queues need 2 of 3 alive)
$victim->restart;
$b[0]->ctl('await_online_nodes', 3, '--timeout', 120);

# --- 2. the quorum leader's node dies, ordflow's node lives ----------------
$q = $cl->queue_info;
my $leader = $cl->broker_named($q->{'ordflow.orders'}{leader} // '');
ok($leader, 'ordflow.orders has a leader: ' . ($q->{'ordflow.orders'}{leader} // 'none'));
my ($keep) = grep { !$leader || $_ != $leader } @b;
my $t_change = $sql->('SELECT now()');
$logpos = OrdflowInvariants::log_position($node);
$sql->("ALTER SYSTEM SET ordflow.amqp_url = '" . $keep->url . "'");
$sql->('SELECT pg_reload_conf()');
my $kport = $keep->port;
ok(OrdflowTest::wait_for_log($node, $logpos, qr/ordflow: connected to the broker at amqp:\/\/guest:\*\*\*\@127\.0\.0\.1:$kport\//,
		1 + $consumers, 90),
	'every worker moved to the one node of the new URL (the log says so)')
  or diag $sql->('SELECT * FROM ordflow.status()');
ok(OrdflowInvariants::wait_connected($node, $consumers, 90), '... and is connected');
is($sql->(q{SELECT node FROM ordflow.status() WHERE worker = 'relay'}),
	'127.0.0.1:' . $keep->port, '... as status().node shows');

$sql->('SELECT ordflow.start(200)');
ok( OrdflowTest::wait_for($node,
		'SELECT count(*) >= 200 FROM ordflow.orders WHERE status <> \'initialised\''
		  . " AND created_at > '$t_change'", 't', 90),
	'orders flow through the one node');
$logpos = OrdflowInvariants::log_position($node);
my $t_leader = time;
$leader->kill9 if $leader;
$done = $sql->('SELECT orders_processed FROM ordflow.metrics()');
ok( OrdflowTest::wait_for($node,
		"SELECT orders_processed >= $done + 400 FROM ordflow.metrics()", 't', 120),
	'orders keep flowing after the leader\'s node died')
  or diag OrdflowInvariants::counts($node) . "\n" . $sql->('SELECT * FROM ordflow.status()');
diag sprintf('leader loss: %d more orders processed %.2f s after the kill -9',
	400, time - $t_leader);
my $q2 = eval { $cl->queue_info } || {};
note 'new leader of ordflow.orders: ' . ($q2->{'ordflow.orders'}{leader} // '?');
my $lost = () = OrdflowInvariants::log_since($node, $logpos) =~ /lost the broker connection/g;
note "connections lost when the leader died: $lost";

OrdflowInvariants::stop_and_drain($node, label => 'after the leader loss');
OrdflowInvariants::check($node, 'after the leader loss', min_orders => 1400);
OrdflowInvariants::workers_stable($node, 'after the leader loss', consumers => $consumers);

$node->stop;
$cl->stop;
done_testing();
