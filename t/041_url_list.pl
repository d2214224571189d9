
# ordflow.amqp_url as a comma-separated list of URLs (SPEC "More than one
# node"), and a broker password that never reaches the log whatever
# characters it has (SPEC "Trust boundaries"; issue 8).
#
# The broker user's password holds a space, a quote, a double quote, a
# comma, '@', '/' and '%'.  Valid URLs write the last three percent-encoded
# (%40, %2F, %25) and the others raw; malformed ones write them all raw.
# With log_statement = all, every ALTER SYSTEM is logged as typed, every
# reload logs "parameter ... changed to ...", refused values log the check
# hook's error and the STATEMENT: none of it may show any part of the
# password.
#
# The list: a worker starts at its own element (the relay runs in slot 2),
# moves to the next one when an element fails, and backs off only after a
# whole round failed; the first failure after a settings change is logged
# with its reason; status().node names the node in use; the check hook
# names the bad element, and refuses "host1,host2" inside one URL.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $pw = q{PwZ9 k'j"h,g@f/d%c};
(my $pw_url = $pw) =~ s/([@\/%])/sprintf('%%%02X', ord($1))/ge;
# any of these in the log is (a part of) the password
my @fragments = ('PwZ9', q{k'j}, q{k''j}, q{j"h}, q{h,g}, q{g@f}, q{g%40f}, q{f/d}, q{f%2Fd},
	q{d%c}, q{d%25c});
my $leak_re = join('|', map { quotemeta } @fragments);

my $mq = OrdflowTest::start_broker();
$mq->ctl('add_user', 'ordflow_u', $pw);
$mq->ctl('set_permissions', '-p', '/', 'ordflow_u', '.*', '.*', '.*');
my $port = $mq->port;
my $url = sub { "amqp://ordflow_u:$pw_url\@127.0.0.1:$_[0]/%2f" };
my $good = $url->($port);

# log_statement = all: ALTER SYSTEM lines are logged as typed
my (undef, $node) = OrdflowInvariants::setup('urllist', broker => $mq, consumers => 1,
	extra => "log_statement = all");
my $sql = sub { $node->safe_psql('postgres', $_[0]) };
my $lit = sub { (my $s = $_[0]) =~ s/'/''/g; "'$s'" };
my $set_url = sub {
	my ($v) = @_;
	$sql->('ALTER SYSTEM SET ordflow.amqp_url = ' . $lit->($v));
	$sql->('SELECT pg_reload_conf()');
};

# --- a list whose first element is dead ------------------------------------
# (the relay, in slot 2, starts at element 2 % 2 = 0: the dead one)
my $logpos = OrdflowInvariants::log_position($node);
$set_url->($url->(1) . ', ' . $good);
ok( OrdflowTest::wait_for_log($node, $logpos,
		qr/ordflow: (?:re)?connected to the broker at amqp:\/\/ordflow_u:\*\*\*\@127\.0\.0\.1:$port\//,
		2, 60),
	'with a dead first element, the workers connect through the second')
  or diag $sql->('SELECT * FROM ordflow.status()');
ok(OrdflowInvariants::wait_connected($node, 1, 60), '... and are connected');
is($sql->(q{SELECT node FROM ordflow.status() WHERE worker = 'relay'}), "127.0.0.1:$port",
	'status().node names the node the relay uses');
my $log = OrdflowInvariants::log_since($node, $logpos);
like($log, qr/ordflow: could not connect to the broker at amqp:\/\/ordflow_u:\*\*\*\@127\.0\.0\.1:1\/%2f: could not connect to 127\.0\.0\.1:1/,
	'the failure of the dead element is logged, with its reason, password redacted');
like($log, qr/ordflow: reconnected to the broker at amqp:\/\/ordflow_u:\*\*\*\@127\.0\.0\.1:$port\/%2f/,
	'... and the element that worked');
like($log, qr/parameter "ordflow\.amqp_url" changed to "amqp:\/\/ordflow_u:\*\*\*\@127\.0\.0\.1:1\/%2f, amqp:\/\/ordflow_u:\*\*\*\@127/,
	'the reload logs the new list with both passwords redacted');

$sql->('SELECT ordflow.start(200)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 300 FROM ordflow.metrics()', 't', 60),
	'orders flow over the list');

# --- every element dead: one round, then backoff; logged once --------------
$logpos = OrdflowInvariants::log_position($node);
$set_url->($url->(1) . ',' . $url->(2));
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(NOT connected) FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 60),
	'with every element dead, the workers are disconnected');
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(node IS NULL) FROM ordflow.status()
		 WHERE worker = 'relay'}, 't', 60),
	'... and status().node is empty');
sleep 6;
$log = OrdflowInvariants::log_since($node, $logpos);
my $first = () = $log =~ /ordflow: could not connect to the broker at /g;
my $round = () = $log =~ /ordflow: could not connect to any of the 2 broker URLs/g;
is($first, 2, 'the first failure after the change is logged once per worker (relay, consumer)');
is($round, 2, 'a failed round is logged once per worker, not once per attempt');
like($log, qr/could not connect to any of the 2 broker URLs; the last error: could not connect to 127\.0\.0\.1:[12]/,
	'... with the reason');

# a settings change while down: its first failure is logged again
$logpos = OrdflowInvariants::log_position($node);
$set_url->($url->(3));
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(last_error LIKE '%127.0.0.1:3%') FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 60),
	'a change while disconnected is tried at once');
$log = OrdflowInvariants::log_since($node, $logpos);
like($log, qr/ordflow: could not connect to the broker at amqp:\/\/ordflow_u:\*\*\*\@127\.0\.0\.1:3\/%2f: could not connect to 127\.0\.0\.1:3/,
	'... and its first failure is logged with the reason');

# --- the check hook names the bad element, never the password -------------
my @refused = (
	[ "amqp://ordflow_u:$pw_url\@127.0.0.1,127.0.0.2:$port/%2f", qr/comma/,
		'two hosts in one URL' ],
	[ "$good,amqp://ordflow_u:$pw_url\@127.0.0.1:notaport/%2f", qr/element 2 of 2/,
		'a bad second element' ],
	[ "$good,", qr/comma/, 'a trailing comma' ],
	[ ",$good", qr/element 1 of 2/, 'an empty first element' ],
	[ "amqp://ordflow_u:$pw\@127.0.0.1:$port/%2f", qr/not a valid amqp or amqps URL/,
		'the password written raw (@, / and % unencoded)' ],
	[ "$good, amqp://ordflow_u:$pw\@127.0.0.1:$port/%2f", qr/element 2 of 2/,
		'a raw password in the second element' ],
	[ "ordflow_u:$pw\@127.0.0.1:$port", qr/not an amqp:\/\/ or amqps:\/\/ URL/,
		'no scheme at all' ],
	[ "AMQP://ordflow_u:$pw\@127.0.0.1:$port/", qr/invalid value/, 'an upper-case scheme' ],
);
for my $r (@refused)
{
	my ($v, $re, $what) = @$r;
	my ($ret, $o, $e) = $node->psql('postgres',
		'ALTER SYSTEM SET ordflow.amqp_url = ' . $lit->($v));
	isnt($ret, 0, "refused: $what");
	like($e, qr/invalid value for parameter "ordflow\.amqp_url"/, '... with the usual error');
	like($e, $re, '... that says what is wrong');
	unlike($e, qr/$leak_re/, '... and shows no part of the password');
	note "error: $e";
}
is($sql->(q{SELECT count(*) FROM pg_file_settings WHERE name = 'ordflow.amqp_url'
			  AND setting LIKE '%notaport%'}), 0, 'no refused list was written');

# --- back to a working list, then the guarantees ---------------------------
$set_url->("$good,$good");
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'workers reconnect to the working list')
  or diag $sql->('SELECT * FROM ordflow.status()');
OrdflowInvariants::stop_and_drain($node, label => 'after the list changes');
OrdflowInvariants::check($node, 'after the list changes', min_orders => 300);
$sql->('ALTER SYSTEM RESET ordflow.amqp_url');
$sql->('SELECT pg_reload_conf()');

# --- the password never reached the log -------------------------------------
$log = OrdflowInvariants::log_since($node, 0);
like($log, qr/statement: \(hidden: it names ordflow\.amqp_url\)/,
	'the ALTER SYSTEM statements were logged (log_statement = all), hidden');
my @leaks = grep { /$leak_re/ } split /\n/, $log;
is(scalar(@leaks), 0, 'the server log never shows any part of the broker password')
  or diag join("\n", @leaks[0 .. ($#leaks < 8 ? $#leaks : 8)]);

$node->stop;
$mq->stop;
done_testing();
