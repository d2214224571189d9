
# uid partitions across two PostgreSQL servers (SPEC "More than one node";
# issue 9).
#
# A 3-node RabbitMQ cluster with quorum queues, ordflow.partitions = 4: node A (node_id 1) owns 0-1, node B
# (node_id 2) owns 2-3.  Both run the generator and place_order() (also for
# the other node's users), and an outside producer publishes to
# order.created (no partition: the shared queue, forwarded by whichever
# node takes it) and to order.created.<p>.  Every order is processed
# exactly once, on the node that holds its user; no "unknown user", no dead
# letter, no order left initialised; ids never collide; balances and
# metrics() are exact per node.  A third node listing a held partition logs
# and skips it.  Then partition 1 moves from A to B under load, with the
# SQL functions the README gives, and nothing is lost.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowCluster;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $cl = OrdflowCluster::start(3);
my $mq = $cl->node(0);
my $list = $cl->url_list;
my %conf = (
	a => "ordflow.node_id = 1\nordflow.owned_partitions = '0-1'",
	b => "ordflow.node_id = 2\nordflow.owned_partitions = '2-3'");
my %node;
for my $n (qw(a b))
{
	$node{$n} = OrdflowTest::new_node("part_$n", broker => $mq, consumers => 2,
		extra => "ordflow.partitions = 4\n$conf{$n}\nlog_statement = none\n"
		  . "ordflow.amqp_url = '$list'\nordflow.queue_type = quorum");
	$node{$n}->safe_psql('postgres', 'CREATE EXTENSION ordflow');
	$node{$n}->safe_psql('postgres', q{
		SELECT ordflow.create_user('u' || g, 'l' || g, 1e6) FROM generate_series(1, 20) g});
}
my ($A, $B) = @node{qw(a b)};
my $q = sub { my ($n, $sql) = @_; $n->safe_psql('postgres', $sql) };

# --- the setting is checked ---------------------------------------------
for my $bad (['0-4', qr/Partition 4 is out of range: ordflow.partitions is 4/],
	['3-1', qr/The range 3-1 is empty/],
	['1,,2', qr/"all", "none" or a comma-separated list/],
	['x', qr/"all", "none" or a comma-separated list/],
	['99999999999999999999', qr/"all", "none" or a comma-separated list/])
{
	my ($rc, $out, $err) = $A->psql('postgres',
		"ALTER SYSTEM SET ordflow.owned_partitions = '$bad->[0]'");
	like($err, $bad->[1], "owned_partitions = '$bad->[0]' is refused");
}

# --- uids and holding ----------------------------------------------------
is($q->($A, q{SELECT string_agg(DISTINCT ordflow.partition_of(uid)::text, ',')
			   FROM ordflow.users}), '0,1', 'A made uids in its partitions 0-1 only');
is($q->($B, q{SELECT string_agg(DISTINCT ordflow.partition_of(uid)::text, ',')
			   FROM ordflow.users}), '2,3', 'B made uids in its partitions 2-3 only');
is($q->($A, q{SELECT count(*) FROM ordflow.users WHERE uid >> 48 <> 1}), 0,
	"A's uids carry its node id");

my $held_sql = q{
	SELECT coalesce(string_agg(p, ',' ORDER BY p::int), '')
	  FROM ordflow.status(), unnest(string_to_array(partitions, ',')) AS p
	 WHERE worker LIKE 'consumer %'};
ok(OrdflowTest::wait_for($A, $held_sql, '0,1', 90), 'A holds partitions 0 and 1 (status().partitions)');
ok(OrdflowTest::wait_for($B, $held_sql, '2,3', 90), 'B holds partitions 2 and 3');
is($q->($A, q{SELECT count(DISTINCT partitions) FROM ordflow.status()
			   WHERE worker LIKE 'consumer %' AND partitions IS NOT NULL}), 2,
	"A's two consumers share its partitions out");
my $queues = $cl->queue_info;
for my $p (0 .. 3)
{
	is($queues->{"ordflow.orders.$p"} && $queues->{"ordflow.orders.$p"}{type}, 'quorum',
		"queue ordflow.orders.$p declared, a quorum queue");
	ok($queues->{"ordflow.owner.$p"}, "ownership queue ordflow.owner.$p held");
}

# --- a third node may not take a held partition --------------------------
my $C = OrdflowTest::new_node('part_c', broker => $mq,
	extra => "ordflow.partitions = 4\nordflow.node_id = 3\nordflow.owned_partitions = '0'\n"
	  . "ordflow.amqp_url = '$list'\nordflow.queue_type = quorum");
$C->safe_psql('postgres', 'CREATE EXTENSION ordflow');
ok(OrdflowTest::wait_for_log($C, 0, qr/ordflow: partition 0 is held by another node; skipping it/, 1, 90),
	'a third node listing partition 0 logs that another node holds it');
is($q->($C, $held_sql), '', '... and holds no partition');
# a node that holds no partition creates no user
$q->($C, q{ALTER SYSTEM SET ordflow.owned_partitions = 'none'});
$q->($C, 'SELECT pg_reload_conf()');
my ($crc, $cout, $cerr) = $C->psql('postgres', q{SELECT ordflow.create_user('n', 'o', 1)});
like($cerr, qr/ERROR:  this node holds no uid partition/, "with owned_partitions = 'none' a new user is refused");
$C->stop;

# --- load on both nodes, from SQL, the generators and outside ------------
my @users_a = split /,/, $q->($A, q{SELECT string_agg(uid::text, ',' ORDER BY uid) FROM ordflow.users});
my @users_b = split /,/, $q->($B, q{SELECT string_agg(uid::text, ',' ORDER BY uid) FROM ordflow.users});
my @all_users = (@users_a, @users_b);

$q->($_, 'SELECT ordflow.start(50)') for ($A, $B);
# place_order() on each node, half of them for the other node's users
my %placed;
for my $pair ([$A, \@users_b], [$B, \@users_a])
{
	my ($n, $theirs) = @$pair;
	my $arr = join(',', @$theirs);
	push @{ $placed{ $n->name } }, split /,/, $q->($n, qq{
		SELECT string_agg(ordflow.place_order(u, 1, 'SQL', NULL)::text, ',')
		  FROM unnest(ARRAY[$arr]::bigint[]) AS u, generate_series(1, 5)});
	my $own = $q->($n, q{SELECT string_agg(uid::text, ',') FROM ordflow.users});
	push @{ $placed{ $n->name } }, split /,/, $q->($n, qq{
		SELECT string_agg(ordflow.place_order(u, 1, 'SQL', NULL)::text, ',')
		  FROM unnest(ARRAY[$own]::bigint[]) AS u, generate_series(1, 5)});
}
is($q->($A, q{SELECT count(*) FROM ordflow.orders
			   WHERE symbol = 'SQL' AND ordflow.partition_of(uid) NOT IN (0, 1)}), 0,
	'A keeps no row of the orders it placed for the users of B');
is($q->($A, q{SELECT count(*) FROM ordflow.outbox
			   WHERE routing_key NOT IN ('order.created.0', 'order.created.1',
										 'order.created.2', 'order.created.3')}), 0,
	'... and publishes every order to its partition');

# outside orders: ids of node 0, uids of both nodes, and some without uid
my $next_id = 1_000_000;
my (@shared, @direct);
for my $i (0 .. 119)
{
	my $uid = $all_users[ $i % @all_users ];
	my $id = $next_id++;
	my $body = $i % 10 == 9
	  ? qq({"order_id": $id, "symbol": "NOUID", "quantity": 1})
	  : qq({"order_id": $id, "uid": $uid, "symbol": "OUTS", "quantity": 1});
	push @shared, $body;
}
for my $i (0 .. 79)
{
	my $uid = $all_users[ $i % @all_users ];
	my $id = $next_id++;
	push @direct, [ $uid % 4, qq({"order_id": $id, "uid": $uid, "symbol": "OUTP", "quantity": 1}) ];
}
# and some an outside producer sent to the wrong partition's queue
for my $i (0 .. 7)
{
	my $uid = $all_users[ $i * 5 % @all_users ];
	my $id = $next_id++;
	push @direct, [ ($uid + 1) % 4, qq({"order_id": $id, "uid": $uid, "symbol": "MISR", "quantity": 1}) ];
}
$mq->publish_many('order.created', \@shared);
for my $p (0 .. 3)
{
	my @b = map { $_->[1] } grep { $_->[0] == $p } @direct;
	$mq->publish_many("order.created.$p", \@b) if @b;
}
sleep 3;    # the generators run on meanwhile

sub drain_both
{
	my ($label) = @_;
	OrdflowInvariants::stop_and_drain($_, label => "$label, " . $_->name) for ($A, $B);
}

# every order id exactly once across both nodes, on the holder of its user
sub exactly_once
{
	my ($label, $moved) = @_;
	my %where;
	for my $n ($A, $B)
	{
		for my $row (split /\n/, $q->($n, q{
				SELECT order_id || ' ' || coalesce(ordflow.partition_of(uid), -1) || ' ' || status
				  FROM ordflow.orders}))
		{
			my ($id, $p, $status) = split / /, $row;
			push @{ $where{$id} }, [ $n->name, $p, $status ];
		}
	}
	my @twice = grep { @{ $where{$_} } > 1 } keys %where;
	is(scalar @twice, 0, "$label: no order id on both nodes")
	  or diag join "\n", map { my $id = $_; "$id: " . join ', ', map { "@$_" } @{ $where{$id} } }
	  grep { defined } @twice[ 0 .. 9 ];
	my @wrong;
	for my $id (keys %where)
	{
		my ($name, $p) = @{ $where{$id}[0] };
		next if $p < 0;
		# the moved partition's orders, done ones too, moved with its users
		my $holder = ($p == 0 || ($p == 1 && !$moved)) ? 'part_a' : 'part_b';
		push @wrong, "$id:$name:$p" if $name ne $holder;
	}
	is(scalar @wrong, 0, "$label: every order processed on the node holding its user")
	  or diag "@wrong[0..9]";
	my @missing = grep { !$where{$_} } (1_000_000 .. $next_id - 1),
	  @{ $placed{part_a} }, @{ $placed{part_b} };
	is(scalar @missing, 0, "$label: every outside and placed order was processed")
	  or diag "missing: @missing[0..9]";
	for my $n ($A, $B)
	{
		is($q->($n, q{SELECT count(*) FROM ordflow.orders WHERE notes = 'unknown user'
						AND uid IS NOT NULL}), 0, "$label: " . $n->name . ': no unknown user');
	}
	return;
}

# user events: one naming a user of each node, sent without partition, is
# forwarded to its holder; a C event is applied by whichever node takes it
OrdflowTest::enable_user_events($_) for ($A, $B);
$mq->publish('user.U', qq({"type": "U", "condition": {"uid": $users_a[0]}, "new_val": {"name": "renamed"}}),
	message_id => 'ev-a');
$mq->publish('user.U', qq({"type": "U", "condition": {"uid": $users_b[0]}, "new_val": {"name": "renamed"}}),
	message_id => 'ev-b');
$mq->publish('user.U.3', qq({"type": "U", "condition": {"uid": $users_a[1]}, "new_val": {"name": "renamed"}}),
	message_id => 'ev-a-misrouted');
$mq->publish('user.C', q({"type": "C", "name": "new", "lname": "user", "credit_limit": 5}),
	message_id => 'ev-c');
for my $pair ([$A, $users_a[0]], [$B, $users_b[0]], [$A, $users_a[1]])
{
	ok(OrdflowTest::wait_for($pair->[0], "SELECT name FROM ordflow.users WHERE uid = $pair->[1]",
			'renamed', 60),
		$pair->[0]->name . ': the U event for its user, sent to user.U, was applied there');
}
my $new_users = sub {
	$q->($A, q{SELECT count(*) FROM ordflow.users WHERE name = 'new'})
	  + $q->($B, q{SELECT count(*) FROM ordflow.users WHERE name = 'new'});
};
my $until = time + 60;
sleep 0.2 while $new_users->() == 0 && time < $until;
is($new_users->(), 1, 'the C event, sent to user.C, created exactly one user');
is($q->($A, q{SELECT count(*) FROM ordflow.users WHERE name = 'new' AND ordflow.partition_of(uid) NOT IN (0, 1)})
	+ $q->($B, q{SELECT count(*) FROM ordflow.users WHERE name = 'new' AND ordflow.partition_of(uid) NOT IN (2, 3)}),
	0, '... in a partition of the node that applied it');

drain_both('before the move');
exactly_once('before the move');
OrdflowInvariants::check($_, 'before the move, ' . $_->name, min_orders => 100) for ($A, $B);

# Everything published has been taken: both outboxes and every ordflow
# queue empty, twice in a row (a forward may be on its way in between).
sub settled
{
	my $deadline = time + 60;
	my $calm = 0;
	while (time < $deadline)
	{
		my $queued = grep { /^ordflow\.\S*\t[1-9]/ } split /\n/,
		  $cl->running_node->ctl('list_queues', '-q', '--no-table-headers', 'name', 'messages');
		my $outbox = $q->($A, 'SELECT count(*) FROM ordflow.outbox') + $q->($B, 'SELECT count(*) FROM ordflow.outbox');
		$calm = ($queued == 0 && $outbox == 0) ? $calm + 1 : 0;
		return 1 if $calm >= 2;
		sleep 0.5;
	}
	return 0;
}

# A producer's retry of a C event (same message_id) creates one user,
# whichever nodes its copies reach: both go to the partition of the
# message_id, whose holder remembers it.  (The generators are stopped, so
# the queues settle.)
$mq->publish('user.C', qq({"type": "C", "name": "twice-$_", "lname": "user", "credit_limit": 5}),
	message_id => "ev-twice-$_") for map { ($_, $_) } 1 .. 10;
ok(settled(), 'the retried C events were all taken');
my $twice = sub {
	my ($n, $cond) = @_;
	return $q->($n, "SELECT count(*) FROM ordflow.users WHERE name LIKE 'twice-%' $cond");
};
is($twice->($A, '') + $twice->($B, ''), 10, 'ten C events sent twice each created ten users');
is($twice->($A, 'AND ordflow.partition_of(uid) NOT IN (0, 1)')
	+ $twice->($B, 'AND ordflow.partition_of(uid) NOT IN (2, 3)'), 0, '... each in a partition of the node that applied it');
is($q->($A, q{SELECT count(*) FROM ordflow.applied_user_events
			   WHERE message_id LIKE 'ev-twice-%' AND partition NOT IN (0, 1)})
	+ $q->($B, q{SELECT count(*) FROM ordflow.applied_user_events
				  WHERE message_id LIKE 'ev-twice-%' AND partition NOT IN (2, 3)}),
	0, '... remembered with a partition the node holds');

# --- move partition 1 from A to B under load -----------------------------
$q->($_, 'SELECT ordflow.start(50)') for ($A, $B);
my $p1_users = $q->($A, q{SELECT count(*) FROM ordflow.users WHERE ordflow.partition_of(uid) = 1});
# a user event applied on A before the move, to be retried after it
my $mv = (grep { $_ % 4 == 1 } @all_users)[1];
my $ev_old = qq({"type": "U", "condition": {"uid": $mv}, "new_val": {"name": "before-move"}});
$mq->publish('user.U.1', $ev_old, message_id => 'ev-move-old');
ok(OrdflowTest::wait_for($A, "SELECT name FROM ordflow.users WHERE uid = $mv", 'before-move', 60),
	'A applied a U event for a user of partition 1');
my $move_started = $q->($A, 'SELECT now()');
# 1. A lets partition 1 go; its queue holds the messages meanwhile
my $letgo_log = -s $A->logfile;
$q->($A, q{ALTER SYSTEM SET ordflow.owned_partitions = '0'});
$q->($A, 'SELECT pg_reload_conf()');
ok(OrdflowTest::wait_for($A, $held_sql, '0', 60), 'A let partition 1 go');
ok(OrdflowTest::wait_for_log($A, $letgo_log, qr/ordflow consumer LOG:  ordflow: broker settings changed/, 1, 10),
	'... its consumers reconnected for it');
# (the relay would publish its unconfirmed messages a second time); once it
# published what was there when the consumers were done, it has surely
# seen the reload
my $letgo_done = $q->($A, 'SELECT now()');
ok(OrdflowTest::wait_for($A, "SELECT count(*) FROM ordflow.outbox WHERE created_at <= '$letgo_done'", '0', 60),
	'... and its relay published on');
unlike(PostgreSQL::Test::Utils::slurp_file($A->logfile, $letgo_log),
	qr/ordflow relay LOG:  ordflow: broker settings changed/, '... its relay did not');
# orders for partition 1 keep coming while it moves
my @during;
for my $i (0 .. 39)
{
	my @p1 = grep { $_ % 4 == 1 } @all_users;
	my $uid = $p1[ $i % @p1 ];
	my $id = $next_id++;
	push @during, qq({"order_id": $id, "uid": $uid, "symbol": "MOVE", "quantity": 1});
}
$mq->publish_many('order.created', [ @during[0 .. 19] ]);
$mq->publish_many('order.created.1', [ @during[20 .. 39] ]);
# 2. export on A to a file and import it on B, with the README's psql
#    commands (a name with a quote and a backslash must survive the trip)
$q->($A, q{UPDATE ordflow.users SET lname = 'O''Brien \ "q"' WHERE uid = (
			 SELECT min(uid) FROM ordflow.users WHERE ordflow.partition_of(uid) = 1)});
my $file = PostgreSQL::Test::Utils::tempdir() . '/partition-1.json';
$A->psql('postgres', "\\pset tuples_only on\n\\pset format unaligned\n\\o $file\n"
	  . "SELECT ordflow.export_partition(1);\n\\o\n", on_error_die => 1);
my ($rc, $out, $err) = $B->psql('postgres',
	"\\set data `cat $file`\n"
	  . "SELECT format('%s %s', users, orders) FROM ordflow.import_partition(:'data'::jsonb);\n");
is($rc, 0, 'import_partition on B') or diag $err;
like($out, qr/^$p1_users \d+$/, "B imported the $p1_users users of partition 1 ($out)");
is($q->($B, q{SELECT count(*) FROM ordflow.users WHERE lname = 'O''Brien \ "q"'}), 1,
	'... a name with a quote and a backslash as it was');
# 3. B takes partition 1
$q->($B, q{ALTER SYSTEM SET ordflow.owned_partitions = '1-3'});
$q->($B, 'SELECT pg_reload_conf()');
ok(OrdflowTest::wait_for($B, $held_sql, '1,2,3', 60), 'B holds partition 1 now');
# 4. A drops what moved
$q->($A, 'SELECT * FROM ordflow.drop_partition(1)');
is($q->($A, q{SELECT count(*) FROM ordflow.users WHERE ordflow.partition_of(uid) = 1}), 0,
	'A dropped the users of partition 1');
is($q->($A, q{SELECT count(*) FROM ordflow.orders WHERE ordflow.partition_of(coalesce(uid, order_id)) = 1}),
	0, '... and its orders, done ones too');
# 5. an outside producer retries orders A processed before the move (a
#    late copy, as a redelivery or a relay's second publish would be): B
#    knows them from the import and drops the copies; a new order after
#    them shows B has read them
my @retried = grep { /"uid": (\d+)/ && $1 % 4 == 1 } map { $_->[1] } grep { $_->[0] == 1 } @direct;
my $retried_ids = join ',', map { /"order_id": (\d+)/ } @retried;
my $after_retries = $next_id++;
my $p1_uid = (grep { $_ % 4 == 1 } @all_users)[0];
# and a newer U event, then the retry of the old one
$mq->publish('user.U.1', qq({"type": "U", "condition": {"uid": $mv}, "new_val": {"name": "after-move"}}),
	message_id => 'ev-move-new');
$mq->publish('user.U.1', $ev_old, message_id => 'ev-move-old');
$mq->publish_many('order.created.1',
	[ @retried, qq({"order_id": $after_retries, "uid": $p1_uid, "symbol": "AFTER", "quantity": 1}) ]);
ok(OrdflowTest::wait_for($B, "SELECT status <> 'initialised' FROM ordflow.orders WHERE order_id = $after_retries",
		't', 60), 'B processed the order published after the retried copies');
is($q->($B, qq{SELECT count(*) FROM ordflow.order_events
				WHERE order_id IN ($retried_ids) AND status <> 'initialised'
				  AND event_time < '$move_started'}),
	scalar @retried, 'the ' . scalar @retried . ' retried copies were dropped: one outcome each, from A before the move');
is($q->($B, qq{SELECT count(*) FROM ordflow.order_events
				WHERE order_id IN ($retried_ids) AND event_time >= '$move_started'}),
	0, '... and none since');
is($q->($B, "SELECT name FROM ordflow.users WHERE uid = $mv"), 'after-move',
	'B dropped the retried user event A had applied before the move (it moved with the partition)');
sleep 2;

drain_both('after the move');
exactly_once('after the move', 1);
is($q->($A, qq{SELECT count(*) FROM ordflow.orders WHERE symbol = 'MOVE'}), 0,
	'no order of the moved partition was processed on A after it let go');
is($q->($B, qq{SELECT count(*) FROM ordflow.orders WHERE symbol = 'MOVE' AND status <> 'initialised'}),
	40, 'B processed the 40 orders published for partition 1 during the move');
for my $n ($A, $B)
{
	is($q->($n, 'SELECT count(*) FROM ordflow.dead_letters'), 0, $n->name . ': no dead letter');
	is($q->($n, q{SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'}), 0,
		$n->name . ': no order left initialised');
}
# balances of the moved users: their orders, completed on A before the
# move and on B after it, are all on B now
my %spent;
for my $n ($B)
{
	for (split /\n/, $q->($n, q{SELECT uid || ' ' || sum(execution_price) FROM ordflow.orders
								WHERE status = 'completed' AND ordflow.partition_of(uid) = 1
								GROUP BY uid}))
	{
		my ($u, $s) = split / /;
		$spent{$u} += $s;
	}
}
my @bad;
for (split /\n/, $q->($B, q{SELECT uid || ' ' || (credit_limit - credit_balance) FROM ordflow.users
							 WHERE ordflow.partition_of(uid) = 1}))
{
	my ($u, $used) = split / /;
	push @bad, "$u: $used vs " . ($spent{$u} // 0) if abs($used - ($spent{$u} // 0)) > 1e-9;
}
is(scalar @bad, 0, 'moved users: balance = limit - their completed orders, all on B') or diag "@bad";

$_->stop for ($A, $B);
$cl->stop;
done_testing();
