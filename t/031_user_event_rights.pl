
# Broker user events act with the rights an operator granted (issue 8, "any
# broker publisher gets superuser CRUD"), and at most once per message_id.
#
# The publisher is a RabbitMQ user with write permission on the exchange
# only.  1.0 applied every event as the bootstrap superuser: it zeroed every
# balance with a U event and an empty condition, deleted users and sent
# replies into ordflow's own queues.  1.1: ordflow.user_events_role decides
# (empty: refused; a read-only role: R only; a superuser role: refused),
# update_users('{}') is refused, replies never go to ordflow.* queues, and a
# republished user.C with the same message_id creates one user.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowHostile;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('rights', broker => $mq);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq('CREATE EXTENSION ordflow');
sq(q{INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance)
	 SELECT 'U' || g, 'L' || g, 1000, 100 * g FROM generate_series(1, 5) g});
my $nusers = 5;
my $users_sql = q{SELECT string_agg(uid || ':' || name || ':' || credit_balance, ',' ORDER BY uid)
				   FROM ordflow.users};
my $snapshot = sq($users_sql);

ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected},
		't', 90),
	'consumer 0 is connected');

# write on the exchange only: no configure, no read
my $writer = OrdflowHostile::add_broker_user($mq, 'writer', 'w-secret', '^$', '^ordflow$', '^$');
my $replies = 'test.rights';
$mq->declare_queue($replies);

my $seq = 0;
sub send_event
{
	my ($type, $body, %o) = @_;
	my %p = (url => $writer);
	if ($o{reply})
	{
		$p{reply_to} = $o{reply_to} // $replies;
		$p{correlation_id} = $o{corr} // ('c' . ++$seq);
	}
	$p{message_id} = $o{message_id} if defined $o{message_id};
	OrdflowHostile::publish($mq, "user.$type", $body, %p);
	return $p{correlation_id};
}

sub reply_json
{
	my ($label) = @_;
	my $m = OrdflowHostile::await_reply($mq, $replies, $node, 90);
	ok($m, "$label: a reply arrived");
	my $j = $m && eval { JSON::PP->new->decode($m->{body}) };
	return ($j, $m);
}

my $dl = sub { sq("SELECT count(*) FROM ordflow.dead_letters WHERE $_[0]") };

my $zero_all = '{"type":"U","condition":{},"new_val":{"credit_balance":0}}';
my $delete_1 = '{"type":"D","condition":{"uid":1}}';
my $read_all = '{"type":"R","condition":{}}';

# --- 1. user_events_role empty (the default): everything refused ----------
{
	my $label = 'role empty';
	my $disabled = q{error LIKE '%user events over the broker are disabled%'};
	my $dl0 = $dl->($disabled);
	send_event('U', $zero_all);
	send_event('D', $delete_1);
	my $corr = send_event('R', $read_all, reply => 1);
	my ($j, $m) = reply_json($label);
	is($m && $m->{correlation_id}, $corr, "$label: the reply has the correlation_id");
	like(($j && $j->{error}) // '', qr/user events over the broker are disabled/,
		"$label: the R event gets an error reply saying user events are disabled")
	  or diag explain $j;
	is($j && $j->{sqlstate}, '42501', "$label: sqlstate 42501");
	ok(!($j && $j->{users}), "$label: no users were read");
	ok( OrdflowTest::wait_for($node,
			"SELECT count(*) - $dl0 FROM ordflow.dead_letters WHERE $disabled",
			'3', 60),
		"$label: U, D and R are three dead letters saying so");
	is(sq($users_sql), $snapshot, "$label: no balance changed, nobody deleted");
}

# --- 2. a read-only role: R works, U and D refused (42501) ---------------
sq(q{CREATE ROLE ue_reader NOLOGIN;
	 GRANT USAGE ON SCHEMA ordflow TO ue_reader;
	 GRANT SELECT ON ordflow.users TO ue_reader});
OrdflowHostile::set_conf($node, 'ordflow.user_events_role' => 'ue_reader');
ok(OrdflowHostile::restart_consumers($node), 'consumers restarted with user_events_role = ue_reader');
{
	my $label = 'read-only role';
	my $corr = send_event('R', $read_all, reply => 1);
	my ($j, $m) = reply_json("$label R");
	is($m && $m->{correlation_id}, $corr, "$label: R reply has the correlation_id");
	is(scalar @{ ($j && $j->{users}) || [] }, $nusers, "$label: R reads every user");

	my $denied = q{error ILIKE '%permission denied%'};
	my $dl0 = $dl->($denied);
	send_event('U', '{"type":"U","condition":{"uid":2},"new_val":{"credit_balance":0}}', reply => 1);
	($j) = reply_json("$label U");
	ok($j && defined $j->{error}, "$label: U gets an error reply") or diag explain $j;
	is($j && $j->{sqlstate}, '42501', "$label: U refused with 42501");
	send_event('D', $delete_1, reply => 1);
	($j) = reply_json("$label D");
	ok($j && defined $j->{error}, "$label: D gets an error reply") or diag explain $j;
	is($j && $j->{sqlstate}, '42501', "$label: D refused with 42501");
	ok( OrdflowTest::wait_for($node,
			"SELECT count(*) - $dl0 FROM ordflow.dead_letters WHERE $denied",
			'2', 60),
		"$label: U and D are dead letters (permission denied)");
	is(sq($users_sql), $snapshot, "$label: nothing changed");
}

# --- 3. a superuser role, and a role that is a member of one: refused -----
sq(q{CREATE ROLE ue_super SUPERUSER NOLOGIN;
	 CREATE ROLE ue_member NOLOGIN IN ROLE ue_super;
	 GRANT USAGE ON SCHEMA ordflow TO ue_member});
for my $role (qw(ue_super ue_member))
{
	my $label = "role $role";
	my $logpos = -s $node->logfile;
	OrdflowHostile::set_conf($node, 'ordflow.user_events_role' => $role);
	ok(OrdflowHostile::restart_consumers($node), "consumers restarted with user_events_role = $role");
	my $refused = q{error LIKE '%must not be a superuser%'};
	my $dl0 = $dl->($refused);
	send_event('U', $zero_all);
	send_event('R', $read_all, reply => 1);
	my ($j) = reply_json($label);
	like(($j && $j->{error}) // '', qr/must not be a superuser/, "$label: the R event is refused")
	  or diag explain $j;
	ok(!($j && $j->{users}), "$label: no users were read");
	ok( OrdflowTest::wait_for($node,
			"SELECT count(*) - $dl0 FROM ordflow.dead_letters WHERE $refused",
			'2', 60),
		"$label: both events are dead letters saying the role must not be a superuser");
	ok($node->log_contains(qr/^(?!.*statement: ).*LOG: .*must not be a superuser/m, $logpos),
		"$label: a LOG line says so");
	is(sq($users_sql), $snapshot, "$label: nothing changed");
}

# --- 4. a role with full rights on users ---------------------------------
sq(q{CREATE ROLE ue_writer NOLOGIN;
	 GRANT USAGE ON SCHEMA ordflow TO ue_writer;
	 GRANT SELECT, INSERT, UPDATE, DELETE ON ordflow.users TO ue_writer;
	 DO $$ BEGIN
		EXECUTE format('GRANT USAGE ON SEQUENCE %s TO ue_writer',
					   pg_get_serial_sequence('ordflow.users', 'uid'));
	 END $$});
OrdflowHostile::set_conf($node, 'ordflow.user_events_role' => 'ue_writer');
ok(OrdflowHostile::restart_consumers($node), 'consumers restarted with user_events_role = ue_writer');

# update_users('{}') over the broker: refused like delete_users('{}')
{
	my $label = 'U with an empty condition';
	send_event('U', $zero_all, reply => 1);
	my ($j) = reply_json($label);
	ok($j && defined $j->{error}, "$label: error reply") or diag explain $j;
	is($j && $j->{sqlstate}, '22023', "$label: refused with 22023 like delete_users('{}')");
	is(sq($users_sql), $snapshot, "$label: no balance changed");
	my ($ret, $out, $err) = $node->psql('postgres',
		qq{\\set VERBOSITY verbose\nSELECT ordflow.update_users('{}', '{"credit_balance": 0}');});
	like($err, qr/ERROR:  22023:/, "$label: update_users('{}') in SQL refused too (22023)");
	is(sq($users_sql), $snapshot, "$label: still no balance changed");
}

# reply_to naming ordflow's own queues: the event is applied, no reply is
# sent there (a reply in ordflow.orders or ordflow.user_events would be
# consumed by ordflow itself and show up as a dead letter)
{
	my $label = 'reply_to an ordflow queue';
	my $dl0 = $dl->('true');
	send_event('U', '{"type":"U","condition":{"uid":2},"new_val":{"name":"ToOrders"}}',
		reply => 1, reply_to => 'ordflow.orders');
	send_event('U', '{"type":"U","condition":{"uid":3},"new_val":{"name":"ToEvents"}}',
		reply => 1, reply_to => 'ordflow.user_events');
	send_event('U', '{"type":"U","condition":{"uid":4},"new_val":{"name":"ToDead"}}',
		reply => 1, reply_to => 'ordflow.dead');
	ok( OrdflowTest::wait_for($node,
			q{SELECT string_agg(name, ',' ORDER BY uid) FROM ordflow.users WHERE uid IN (2, 3, 4)},
			'ToOrders,ToEvents,ToDead', 60),
		"$label: the events were processed");
	# a marker behind them: once its reply is here, any reply sent into
	# ordflow's queues would have been consumed too
	send_event('R', '{"type":"R","condition":{"uid":2}}', reply => 1, corr => 'marker');
	my ($j, $m) = reply_json("$label marker");
	is($m && $m->{correlation_id}, 'marker', "$label: the marker's reply is the next message on the test queue");
	ok(OrdflowHostile::stays($node, "SELECT count(*) - $dl0 FROM ordflow.dead_letters", '0', 5),
		"$label: no reply came back through ordflow.orders or ordflow.user_events as a dead letter");
	is($mq->queue_depth('ordflow.dead') // 0, 0, "$label: nothing was put into ordflow.dead");
}

# --- 5. exactly once per message_id --------------------------------------
{
	my $label = 'message_id';
	my $c = '{"type":"C","name":"Once","lname":"Only","credit_limit":10}';
	send_event('C', $c, message_id => 'create-once-1');
	send_event('C', $c, message_id => 'create-once-1');
	my $n = '{"type":"C","name":"Twice","lname":"NoId","credit_limit":10}';
	send_event('C', $n);
	send_event('C', $n);
	send_event('R', '{"type":"R","condition":{"name":"Twice"}}', reply => 1, corr => 'after-c');
	my ($j, $m) = reply_json("$label marker");
	is($m && $m->{correlation_id}, 'after-c', "$label: the marker reply arrived");
	ok(OrdflowTest::wait_for($node, q{SELECT count(*) FROM ordflow.users WHERE name = 'Twice'}, '2', 60),
		"$label: without message_id the event is applied twice (at least once)");
	is(sq(q{SELECT count(*) FROM ordflow.users WHERE name = 'Once'}), '1',
		"$label: the same message_id twice creates one user");
	ok(OrdflowHostile::stays($node, q{SELECT count(*) FROM ordflow.users WHERE name = 'Once'}, '1', 3),
		"$label: and still one");
}

is($mq->get($replies, wait => 1), undef, 'no unexpected reply on the test queue');
OrdflowHostile::server_alive($node, 'at the end');

$node->stop;
$mq->stop;
done_testing();
