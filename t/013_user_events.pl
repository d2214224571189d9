
# User events over the broker (routing key user.<type>): C, R, U, D are
# applied like user_event(); a message with reply_to gets its JSON result
# (or error) on that queue with the same correlation_id; invalid events are
# dead letters and change nothing.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('events', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
OrdflowTest::enable_user_events($node);

sub sq { return $node->safe_psql('postgres', $_[0]); }

ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected},
		't', 90),
	'consumer 0 is connected');

my $replies = 'test.replies';
$mq->declare_queue($replies);

# Publish an event and return the reply (or undef after the wait).
my $seq = 0;
sub event_with_reply
{
	my ($type, $body, %o) = @_;
	my $corr = $o{corr} // 'corr-' . (++$seq) . "-$type";
	$mq->publish("user.$type", $body, reply_to => $replies, correlation_id => $corr);
	my $m = $mq->get_message($replies, wait => 60);
	return (undef, $corr) unless $m;
	return ($m, $corr);
}

sub decode_reply
{
	my ($m) = @_;
	return undef unless $m;
	my $j = eval { JSON::PP->new->decode($m->{body}) };
	diag "reply is not JSON: $m->{body}" unless $j;
	return $j;
}

# ---------------------------------------------------------------------------
# C: flat form, with reply.

my ($m, $corr) = event_with_reply('C',
	'{"type": "C", "name": "Ann", "lname": "Lee", "credit_limit": 100}');
ok($m, 'a reply arrived for the C event');
is($m->{correlation_id}, $corr, 'the reply carries the same correlation_id');
is($m->{content_type}, 'application/json', 'the reply is JSON');
my $j = decode_reply($m);
is($j->{type}, 'C', 'reply type C');
like($j->{uid}, qr/^\d+$/, 'reply names the new uid');
my $ann = $j->{uid};
is(sq("SELECT name || ' ' || lname || ' ' || credit_limit || ' ' || credit_balance FROM ordflow.users WHERE uid = $ann"),
	'Ann Lee 100 100', 'user created; balance defaults to the limit');

# C: new_val form, a quote in a value, no reply_to: applied silently.
$mq->publish('user.C',
	q({"type": "C", "new_val": {"name": "Bob", "lname": "O'Brien", "credit_limit": 50, "credit_balance": 20}}));
ok(OrdflowTest::wait_for($node, q{SELECT count(*) FROM ordflow.users WHERE lname = 'O''Brien'}, '1', 60),
	'C event without reply_to applied (value with a quote)');
my $bob = sq(q{SELECT uid FROM ordflow.users WHERE lname = 'O''Brien'});
is(sq("SELECT credit_limit || '/' || credit_balance FROM ordflow.users WHERE uid = $bob"), '50/20',
	'explicit balance kept');

# ---------------------------------------------------------------------------
# R with reply_to: the matching users come back.

($m, $corr) = event_with_reply('R', '{"type": "R", "condition": {"lname": "Lee"}}', corr => 'read-1');
ok($m, 'a reply arrived for the R event');
is($m->{correlation_id}, 'read-1', 'R reply carries correlation_id read-1');
$j = decode_reply($m);
is($j->{type}, 'R', 'reply type R');
is(ref $j->{users}, 'ARRAY', 'R reply has a users array');
is(scalar @{ $j->{users} || [] }, 1, 'one user matches');
is($j->{users}[0]{uid}, $ann, 'it is Ann');
is($j->{users}[0]{name}, 'Ann', 'with her name');
is($j->{users}[0]{credit_limit}, 100, 'and her limit');

($m) = event_with_reply('R', '{"type": "R", "condition": {}}');
$j = decode_reply($m);
is(scalar @{ $j->{users} || [] }, 2, 'R with an empty condition returns every user');

($m) = event_with_reply('R', '{"type": "R", "condition": {"name": "Nobody"}}');
$j = decode_reply($m);
is_deeply($j->{users}, [], 'R matching nobody returns an empty array');

# ---------------------------------------------------------------------------
# U: applied; changing uid is refused.

($m) = event_with_reply('U',
	qq({"type": "U", "condition": {"uid": $ann}, "new_val": {"credit_limit": 200, "credit_balance": 150}}));
$j = decode_reply($m);
is($j->{type}, 'U', 'reply type U');
is($j->{updated}, 1, 'one row updated');
is(sq("SELECT credit_limit || '/' || credit_balance FROM ordflow.users WHERE uid = $ann"), '200/150',
	'U event applied');

my $dead_before = sq('SELECT count(*) FROM ordflow.dead_letters');
my $uid_change = qq({"type": "U", "condition": {"uid": $ann}, "new_val": {"uid": 99999}});
($m, $corr) = event_with_reply('U', $uid_change, corr => 'uid-change');
ok($m, 'a reply arrived for the uid change');
is($m->{correlation_id}, 'uid-change', 'error reply carries the correlation_id');
$j = decode_reply($m);
ok(defined $j->{error}, 'the reply is an error');
like($j->{error} // '', qr/uid cannot be changed/, 'the error says uid cannot be changed');
like($j->{sqlstate} // '', qr/^(22023|23514)$/, "error reply sqlstate ($j->{sqlstate})");
is(sq("SELECT count(*) FROM ordflow.users WHERE uid = $ann"), '1', 'uid unchanged');
is(sq('SELECT count(*) FROM ordflow.users WHERE uid = 99999'), '0', 'no user 99999');
is(sq("SELECT count(*), min(routing_key), min(queue), min(correlation_id) FROM ordflow.dead_letters"
	  . " WHERE body_text = '$uid_change'"),
	'1|user.U|ordflow.user_events|uid-change', 'the refused uid change is a dead letter');

# A balance above the limit: refused, nothing changes.
($m) = event_with_reply('U',
	qq({"type": "U", "condition": {"uid": $ann}, "new_val": {"credit_balance": 201}}));
$j = decode_reply($m);
ok(defined $j->{error}, 'a balance above the limit is an error reply');
is(sq("SELECT credit_balance FROM ordflow.users WHERE uid = $ann"), '150', 'balance unchanged');

# ---------------------------------------------------------------------------
# Invalid events: error reply and dead letter, nothing changed.

my @invalid = (
	[ 'R', '{"type": "R", "condition": {"password": "x"}}', qr/unknown column "password"/, 'unknown column' ],
	[ 'R', '{"type": "R", "condition": {"name; DROP TABLE ordflow.users; --": "x"}}', qr/unknown column/, 'key crafted to inject SQL' ],
	[ 'U', qq({"type": "U", "condition": {"uid": $ann}, "new_val": {"credit_limit": "lots"}}), qr/credit_limit" must be a number/, 'wrong value type' ],
	[ 'D', '{"type": "D", "condition": {}}', qr/refuses empty conditions/, 'delete everything is refused' ],
	[ 'X', '{"type": "X"}', qr/type/, 'unknown type' ],
	[ 'C', '{"type": "C", "name": "Eve"', qr/invalid input syntax for type json/, 'not JSON' ],
	[ 'C', '{"type": "C", "name": "Eve", "lname": "E", "credit_limit": -1}', qr/credit_limit must be between 0 and 1e15/, 'negative limit' ],
	[ 'R', '{"type": "R", "condition": 5}', qr/must be a JSON object/, 'condition not an object' ],
	[ 'D', '{"type": "C", "name": "Mal", "lname": "M", "credit_limit": 1}', qr/does not match/,
		'routing key user.D carrying a C event' ],
	[ 'D', '{"type": "R", "condition": {"uid": 1}}', qr/routing key user\.D does not match/, 'key contradicts the type' ],
	# text would stop at a NUL, and the jsonb cast checks no UTF-8: both refused first
	[ 'C', qq({"type": "C", "name": "\xff", "lname": "E", "credit_limit": 1}), qr/invalid byte sequence for encoding "UTF8"/, 'invalid UTF-8' ],
	[ 'R', qq({"type": "R"}\0 and then anything), qr/invalid byte sequence for encoding "UTF8"/, 'NUL byte' ],
);
for my $inv (@invalid)
{
	my ($type, $body, $re, $what) = @$inv;
	my $c = "bad-$type-" . (++$seq);
	($m) = event_with_reply($type, $body, corr => $c);
	ok($m, "$what: a reply arrived");
	is($m && $m->{correlation_id}, $c, "$what: same correlation_id");
	$j = decode_reply($m);
	ok($j && defined $j->{error}, "$what: error reply");
	like(($j && $j->{error}) // '', $re, "$what: the error says why");
	my $hex = unpack('H*', $body);
	my $row = sq("SELECT count(*), min(routing_key), min(correlation_id), min(error)"
		  . " FROM ordflow.dead_letters WHERE body = decode('$hex', 'hex')");
	my ($n, $rk, $cid, $err) = split /\|/, $row, 4;
	is($n, 1, "$what: one dead letter");
	is($rk, "user.$type", "$what: dead letter routing key");
	is($cid, $c, "$what: dead letter correlation_id");
	like($err // '', $re, "$what: dead letter reason");
}
is(sq('SELECT count(*) FROM ordflow.users'), '2', 'invalid events created or deleted nobody');
is(sq(q{SELECT to_regclass('ordflow.users') IS NOT NULL}), 't', 'users table still there');
is(sq("SELECT credit_limit || '/' || credit_balance FROM ordflow.users WHERE uid = $ann"), '200/150',
	'invalid events changed nothing');

# The same JSON as user_event(): validated once, in SQL (1.0 refused these
# two from the broker only).
for my $body ('{"type": "R"}', qq({"type": "r", "condition": {"uid": $ann}}))
{
	($m) = event_with_reply('R', $body);
	$j = decode_reply($m);
	ok($j && !defined $j->{error}, "$body: applied from the broker");
	(my $reply = $m ? $m->{body} : 'null') =~ s/'/''/g;
	(my $sql = $body) =~ s/'/''/g;
	is(sq("SELECT '$reply'::jsonb = ordflow.user_event('$sql')"), 't',
		"$body: the reply is what user_event() returns");
}

# An invalid event without reply_to: a dead letter, no reply anywhere.
my $silent = '{"type": "U", "condition": {"nope": 1}, "new_val": {"name": "Z"}}';
$mq->publish('user.U', $silent);
ok( OrdflowTest::wait_for($node,
		"SELECT count(*) FROM ordflow.dead_letters WHERE body_text = '$silent'", '1', 60),
	'invalid event without reply_to is a dead letter');

# ---------------------------------------------------------------------------
# D: applied.

($m) = event_with_reply('D', qq({"type": "D", "condition": {"uid": $bob}}));
$j = decode_reply($m);
is($j->{type}, 'D', 'reply type D');
is($j->{deleted}, 1, 'one row deleted');
is(sq("SELECT count(*) FROM ordflow.users WHERE uid = $bob"), '0', 'Bob is gone');

# The user event results feed orders: Ann (balance 150) pays for an order.
$mq->publish('order.created', '{"order_id": 5000001, "uid": ' . $ann . ', "amount": 120}');
ok(OrdflowTest::wait_for($node, q{SELECT status FROM ordflow.orders WHERE order_id = 5000001},
		'completed', 60),
	'an order for the updated user completes');
is(sq("SELECT credit_balance FROM ordflow.users WHERE uid = $ann"), '30', 'debited from the updated balance');

# No reply for an event that did not ask; no stray messages.
is($mq->get($replies, wait => 1), undef, 'no unexpected reply');
is(sq(q{SELECT count(*) FROM ordflow.dead_letters WHERE queue <> 'ordflow.user_events'}), '0',
	'every dead letter came from the user events queue');
ok(!$node->log_contains('terminated by signal'), 'no worker crashed');

$node->stop;
$mq->stop;
done_testing();
