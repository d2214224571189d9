
# A reply over 1 MB (issue 8, "a broker publisher crashes the whole
# server"): user.R with an empty condition against ~10,000 users, with
# reply_to.  1.0 built the reply in SPI's procedure context, freed at
# commit, and segfaulted in send_replies.  1.1: the reply arrives whole
# (ordflow.max_message_size = 8MB), parses, has every user; with the default
# 1MB limit the reply is an error reply naming max_message_size; the server
# never crashes.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowHostile;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $nusers = 10_000;

# Freed memory is handed back to the kernel at once: a use after free of
# the reply crashes every time instead of now and then.  Cluster->start
# passes our environment to the postmaster.
local $ENV{GLIBC_TUNABLES} = 'glibc.malloc.mmap_threshold=131072';

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('bigreply', broker => $mq);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq('CREATE EXTENSION ordflow');
sq(qq{INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance)
	  SELECT 'Name' || g, 'Lastname-' || g, 1000 + g, 500 + g FROM generate_series(1, $nusers) g});
sq(q{CREATE ROLE ue_reader NOLOGIN;
	 GRANT USAGE ON SCHEMA ordflow TO ue_reader;
	 GRANT SELECT ON ordflow.users TO ue_reader});
OrdflowHostile::set_conf($node,
	'ordflow.user_events_role' => 'ue_reader',
	'ordflow.max_message_size' => '8MB');
ok(OrdflowHostile::restart_consumers($node), 'consumers restarted with the new settings');

my $replies = 'test.bigreply';
$mq->declare_queue($replies);

# --- the whole reply, under an 8MB limit -----------------------------------
$mq->publish('user.R', '{"type":"R","condition":{}}',
	reply_to => $replies, correlation_id => 'big-1');
my $m = OrdflowHostile::await_reply($mq, $replies, $node, 120);
ok($m, 'a reply to the R event over 1 MB arrived');
is($m && $m->{correlation_id}, 'big-1', 'it carries the correlation_id');
note('reply size: ' . length($m->{body}) . ' bytes') if $m;
cmp_ok($m ? length($m->{body}) : 0, '>', 1_048_576, 'the reply is over 1 MB');
my $j = $m && eval { JSON::PP->new->decode($m->{body}) };
ok($j, 'the reply parses as JSON') or diag($@ // 'no reply');
is(ref($j && $j->{users}), 'ARRAY', 'it has a users array');
is(scalar @{ ($j && $j->{users}) || [] }, $nusers, "with all $nusers users");
is($j && $j->{users}[ $nusers - 1 ]{lname}, "Lastname-$nusers", 'the last user is complete');
OrdflowHostile::server_alive($node, 'after the 1.8 MB reply');

# --- over the default 1MB limit: an error reply --------------------------
OrdflowHostile::set_conf($node, 'ordflow.max_message_size' => '1MB');
ok(OrdflowHostile::restart_consumers($node), 'consumers restarted with max_message_size = 1MB');
$mq->publish('user.R', '{"type":"R","condition":{}}',
	reply_to => $replies, correlation_id => 'big-2');
$m = OrdflowHostile::await_reply($mq, $replies, $node, 120);
ok($m, 'a reply arrived under the 1MB limit');
is($m && $m->{correlation_id}, 'big-2', 'it carries the correlation_id');
cmp_ok($m ? length($m->{body}) : 1e9, '<=', 1_048_576, 'the reply is within max_message_size');
$j = $m && eval { JSON::PP->new->decode($m->{body}) };
like(($j && $j->{error}) // '', qr/max_message_size/, 'it is an error reply naming max_message_size');
is($j && $j->{sqlstate}, '54000', 'with sqlstate 54000 (program_limit_exceeded)');
is(sq('SELECT count(*) FROM ordflow.users'), $nusers, 'the users are all still there');

# the pipeline still works: an order after the big replies
$mq->publish('order.created', '{"order_id": 9000001, "uid": 1, "amount": 10}');
ok(OrdflowTest::wait_for($node, 'SELECT status FROM ordflow.orders WHERE order_id = 9000001',
		'completed', 90),
	'an order after the big replies is processed');
is($mq->get($replies, wait => 1), undef, 'no other reply');
OrdflowHostile::server_alive($node, 'at the end');

$node->stop;
$mq->stop;
done_testing();
