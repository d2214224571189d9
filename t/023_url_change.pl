
# ordflow.amqp_url changed at run time (ALTER SYSTEM + pg_reload_conf) to a
# broker that is not there, and back: the workers follow without a
# restart, orders wait in the outbox meanwhile and drain afterwards.  The
# broker password (a distinctive one, for a broker user made for the test)
# never shows in status(), last_error, the server log, error messages or,
# for a non-superuser, pg_settings.  A malformed URL is refused with a
# clear error that does not echo the password.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $secret = 's3cretPW';
my $mq = OrdflowTest::start_broker();
$mq->ctl('add_user', 'ordflow_u', $secret);
$mq->ctl('set_permissions', '-p', '/', 'ordflow_u', '.*', '.*', '.*');
my $port = $mq->port;
my $good_url = "amqp://ordflow_u:$secret\@127.0.0.1:$port/%2f";
# port 1: nothing listens there
my $bad_url = "amqp://ordflow_u:$secret\@127.0.0.1:1/%2f";

# log_statement back to its default: the test framework logs every
# statement, which would quote our own ALTER SYSTEM lines.
my (undef, $node) = OrdflowInvariants::setup('url', broker => $mq, consumers => 1,
	extra => "ordflow.amqp_url = '$good_url'\nlog_statement = none");
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

is($sql->(q{SELECT count(*) FROM ordflow.status() WHERE last_error LIKE '%s3cretPW%'}), 0,
	'connected with the password-protected broker user');
$sql->('CREATE ROLE plain LOGIN');
$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 300 FROM ordflow.metrics()', 't', 60),
	'pipeline processes generated orders before the change');
my $pids = OrdflowInvariants::worker_pids($node);

# --- to a wrong broker -----------------------------------------------------
my $logpos = OrdflowInvariants::log_position($node);
$sql->("ALTER SYSTEM SET ordflow.amqp_url = '$bad_url'");
$sql->('SELECT pg_reload_conf()');
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(NOT connected AND last_error LIKE '%127.0.0.1:1%')
		  FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 60),
	'relay and consumers follow the new URL: disconnected, last_error names the failure')
  or diag $sql->('SELECT * FROM ordflow.status()');
my $err = $sql->(q{SELECT last_error FROM ordflow.status() WHERE worker = 'relay'});
note "relay last_error: $err";
like($err, qr/connect|refused/i, 'last_error says the connection failed');

my $ob1 = $sql->('SELECT count(*) FROM ordflow.outbox');
my $done1 = $sql->('SELECT orders_processed FROM ordflow.metrics()');
sleep 4;
my $ob2 = $sql->('SELECT count(*) FROM ordflow.outbox');
cmp_ok($ob2, '>=', $ob1 + 300, "orders accumulate in the outbox ($ob1 -> $ob2)");
is($sql->('SELECT orders_processed FROM ordflow.metrics()'), $done1,
	'nothing is processed while the URL points nowhere');

# The password, wherever a user or an operator could look.
is($sql->(qq{SELECT count(*) FROM ordflow.status()
			  WHERE last_error LIKE '%$secret%' OR state LIKE '%$secret%'}), 0,
	'status() never shows the password');
my ($r, $out, $e) = $node->psql('postgres', q{
	SELECT name, setting, reset_val, boot_val FROM pg_settings WHERE setting LIKE '%amqp%'
	   OR reset_val LIKE '%amqp%' OR name = 'ordflow.amqp_url'}, extra_params => [ '-U', 'plain' ]);
is($r, 0, 'a non-superuser can query pg_settings');
unlike($out, qr/$secret/, 'pg_settings shows the password to no non-superuser');
($r, $out, $e) = $node->psql('postgres', 'SHOW ordflow.amqp_url', extra_params => [ '-U', 'plain' ]);
unlike("$out$e", qr/$secret/, 'SHOW ordflow.amqp_url does not reveal it to a non-superuser');
($r, $out, $e) = $node->psql('postgres',
	q{SELECT current_setting('ordflow.amqp_url', true)}, extra_params => [ '-U', 'plain' ]);
unlike("$out$e", qr/$secret/, 'current_setting() does not reveal it to a non-superuser');
($r, $out, $e) = $node->psql('postgres',
	q{SELECT * FROM ordflow.status()}, extra_params => [ '-U', 'plain' ]);
unlike("$out$e", qr/$secret/, 'status() as a non-superuser does not show it');

my $log = OrdflowInvariants::log_since($node, $logpos);
my $fail_lines = () = $log =~ /ordflow: (?:could not connect|lost the broker)/g;
cmp_ok($fail_lines, '>=', 2, "the log reports the failure ($fail_lines lines)");
cmp_ok($fail_lines, '<=', 4, 'at most two failure lines per worker, not one per attempt');
like($log, qr/ordflow: broker settings changed, reconnecting/,
	'the log says the workers reconnect because the settings changed');

# --- back to the right broker ---------------------------------------------
$sql->('ALTER SYSTEM RESET ordflow.amqp_url');
$sql->('SELECT pg_reload_conf()');
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'workers reconnect to the right URL')
  or diag $sql->('SELECT * FROM ordflow.status()');
ok( OrdflowTest::wait_for($node, 'SELECT count(*) < 1000 FROM ordflow.outbox', 't', 90),
	'the backlog drains');
is_deeply(OrdflowInvariants::worker_pids($node), $pids,
	'the workers followed both changes without a restart (same pids)');

# --- a malformed URL is refused, without echoing the password ------------
for my $bad ("amqp://ordflow_u:$secret\@127.0.0.1:notaport/%2f",
	"http://ordflow_u:$secret\@127.0.0.1:$port/",
	"amqp://ordflow_u:$secret\@127.0.0.1:70000/%2f")
{
	my ($ret, $o, $er) = $node->psql('postgres',
		"ALTER SYSTEM SET ordflow.amqp_url = '$bad'");
	isnt($ret, 0, "ALTER SYSTEM refuses a malformed URL");
	like($er, qr/invalid value for parameter "ordflow\.amqp_url"/, '... with a clear error');
	unlike($er, qr/$secret/, '... that does not echo the password');
	note "error: $er";
}
is($sql->(q{SELECT count(*) FROM pg_file_settings WHERE name = 'ordflow.amqp_url'
			  AND setting LIKE '%notaport%'}), 0, 'the refused URL was not written');
# a session-level SET is refused to non-superusers
($r, $out, $e) = $node->psql('postgres', "SET ordflow.amqp_url = '$good_url'",
	extra_params => [ '-U', 'plain' ]);
isnt($r, 0, 'a non-superuser cannot set ordflow.amqp_url');
unlike($e, qr/$secret/, '... and the error does not echo the value');

# --- straight from one working URL to another ------------------------------
# (the same broker by host name): the workers reconnect at once, and the
# consumers must consume on the new connection too.
my $done2 = $sql->('SELECT orders_processed FROM ordflow.metrics()');
my $t_change = $sql->('SELECT now()');
$sql->("ALTER SYSTEM SET ordflow.amqp_url = 'amqp://ordflow_u:$secret\@localhost:$port/%2f'");
$sql->('SELECT pg_reload_conf()');
ok( OrdflowTest::wait_for($node, qq{
		SELECT count(*) = 2 FROM ordflow.status()
		 WHERE (worker = 'relay' OR worker LIKE 'consumer %') AND connected
		   AND since > '$t_change'}, 't', 60),
	'a change between two working URLs: the workers reconnect');
ok( OrdflowTest::wait_for($node,
		"SELECT orders_processed >= $done2 + 600 FROM ordflow.metrics()", 't', 60),
	'... and orders are processed over the new connection')
  or diag OrdflowInvariants::counts($node) . "\n" . $sql->('SELECT * FROM ordflow.status()');
my $q = $mq->queue_stats('ordflow.orders');
cmp_ok($q->{consumers}, '>=', 1, "the orders queue has a consumer ($q->{consumers})");
$sql->('ALTER SYSTEM RESET ordflow.amqp_url');
$sql->('SELECT pg_reload_conf()');

OrdflowInvariants::stop_and_drain($node, label => 'after the URL changes');
OrdflowInvariants::check($node, 'after the URL changes', min_orders => 1500);
OrdflowInvariants::workers_stable($node, 'after the URL changes');

# Neither the reload ("parameter ... changed to ...") nor the workers may
# log the password; nor may the STATEMENT line PostgreSQL adds to the
# error of a refused ALTER SYSTEM / SET (log_min_error_statement = error
# by default), which quotes the statement as typed.
my @leaks = grep { /$secret/ } split /\n/, OrdflowInvariants::log_since($node, 0);
my @stmt = grep { /STATEMENT:/ } @leaks;
my @other = grep { !/STATEMENT:/ } @leaks;
is(scalar(@other), 0, 'the server log never shows the broker password')
  or diag join("\n", @other[0 .. ($#other < 5 ? $#other : 5)]);
is(scalar(@stmt), 0, 'not even in the STATEMENT line of a refused ALTER SYSTEM')
  or diag join("\n", @stmt[0 .. ($#stmt < 3 ? $#stmt : 3)]);

$node->stop;
$mq->stop;
done_testing();
