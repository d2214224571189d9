
# ordflow.node_id (SPEC "More than one node"): the ids ordflow makes,
# order_id and uid, are node_id << 48 plus a per-node sequence, so ordflow
# databases sharing a broker never hand out the same id, and node 0 keeps
# 1, 2, 3, ...  Checked for every maker of ids: create_user(), a C user
# event, place_order() and the generator; through the whole pipeline (ids
# above 2^53 must survive JSON exactly); after an upgrade from 1.0 (old ids
# kept, the sequence goes on) and through pg_dump and restore.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;

my $nid = 1000;
my $base = $nid << 48;    # Perl integers are 64-bit here
my $mq = OrdflowTest::start_broker();
my (undef, $node) = OrdflowInvariants::setup('nodeid', broker => $mq, consumers => 1,
	extra => "ordflow.node_id = $nid");
my $sql = sub { $node->safe_psql($_[1] // 'postgres', $_[0]) };

is($sql->('SELECT ordflow._node_id()'), $nid, 'ordflow._node_id() reads ordflow.node_id');
# setup() made 10 users with create_user()
is($sql->('SELECT min(uid) FROM ordflow.users'), $base + 1,
	"create_user() gives uids node_id << 48 plus 1, 2, ... (first ${\ ($base + 1)})");
is($sql->(q{SELECT ordflow.create_user('a', 'b', 1000)}), $base + 11, '... the 11th is +11');
is($sql->(q{SELECT ordflow.user_event('{"type":"C","new_val":{"name":"c","lname":"d","credit_limit":1000}}') ->> 'uid'}),
	$base + 12, 'a C user event gives the next uid of this node');
my $placed = $sql->(qq{SELECT ordflow.place_order(${\ ($base + 1)}, 10, 'NODE', 1)});
is($placed, $base + 1, 'place_order() gives order_id node_id << 48 plus 1');
is($sql->(q{SELECT seqmax FROM pg_sequence
			 WHERE seqrelid IN ('ordflow.order_id_seq'::regclass, 'ordflow.users_uid_seq'::regclass)
			 GROUP BY seqmax}), (1 << 48) - 1,
	'both sequences stop below the next node\'s ids');

$sql->('SELECT ordflow.start(100)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 200 FROM ordflow.metrics()', 't', 90),
	'the pipeline processes orders with node-prefixed ids');
OrdflowInvariants::stop_and_drain($node, label => 'node ids');
OrdflowInvariants::check($node, 'node ids', min_orders => 200, symbols => { NODE => 1 });
is($sql->(qq{SELECT count(*) FROM ordflow.orders WHERE order_id >> 48 <> $nid}), 0,
	'every order the generator and place_order() made carries the node id');
is($sql->(qq{SELECT count(*) FROM ordflow.users WHERE uid >> 48 <> $nid}), 0,
	'every user carries the node id');
is($sql->(q{SELECT count(*) FROM ordflow.orders WHERE status = 'declined' AND notes LIKE '%unknown%'}),
	0, 'no order was declined for an unknown user (uids survive the trip exactly)');

# --- upgrade from 1.0, dump and restore -------------------------------------
# (ordflow lives in one database per server: another server, same node id)
$node->stop;
my $up = OrdflowTest::new_node('up', extra => "ordflow.node_id = $nid");
my $usql = sub { $up->safe_psql('postgres', $_[0]) };
$usql->(q{CREATE EXTENSION ordflow VERSION '1.0'});
$usql->(q{SELECT ordflow.create_user('x', 'y', 10) FROM generate_series(1, 2)});
$usql->(q{SELECT ordflow.place_order(1, 5, 'OLD', 1)});
$usql->(q{ALTER EXTENSION ordflow UPDATE TO '1.1'});
is($usql->('SELECT string_agg(uid::text, \',\' ORDER BY uid) FROM ordflow.users'), '1,2',
	'the upgrade keeps the uids of 1.0');
is($usql->(q{SELECT attidentity FROM pg_attribute
			 WHERE attrelid = 'ordflow.users'::regclass AND attname = 'uid'}), '',
	'users.uid is no identity column any more');
is($usql->(q{SELECT ordflow.create_user('x', 'y', 10)}), $base + 3,
	'after the upgrade, uids go on from the old sequence, with the node id');
is($usql->(q{SELECT ordflow.place_order(1, 5, 'NEW', 1)}), $base + 2,
	'... and so do order ids');
is($usql->(q{SELECT count(*) FROM pg_extension, unnest(extconfig) AS c
			 WHERE extname = 'ordflow' AND NOT EXISTS (SELECT FROM pg_class WHERE oid = c)}),
	0, 'pg_dump\'s list of extension tables names no dropped sequence');

my $dump = "$PostgreSQL::Test::Utils::tmp_check/up.sql";
$up->command_ok([ 'pg_dump', '-d', $up->connstr('postgres'), '-f', $dump ], 'pg_dump works');
$usql->('DROP EXTENSION ordflow CASCADE');
$usql->('DROP SCHEMA ordflow CASCADE');
$up->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $up->connstr('postgres'),
		'-f', $dump ], 'the dump restores');
is($usql->('SELECT count(*) FROM ordflow.users'), 3, 'the restored copy has the users');
is($usql->(q{SELECT ordflow.create_user('x', 'y', 10)}), $base + 4,
	'a restored database does not hand out a uid again');
$up->stop;

# --- node 0 keeps 1, 2, 3 ---------------------------------------------------
my $zero = OrdflowTest::new_node('zero');
$zero->safe_psql('postgres', 'CREATE EXTENSION ordflow');
is($zero->safe_psql('postgres', q{SELECT ordflow.create_user('a', 'b', 10)}), 1,
	'node 0: the first uid is 1');
is($zero->safe_psql('postgres', q{SELECT ordflow.place_order(1, 5, 'Z', 1)}), 1,
	'node 0: the first order_id is 1');
$zero->stop;

$mq->stop;
done_testing();
