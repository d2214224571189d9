
# amqps:// with certificate verification, against RabbitMQ TLS listeners
# using a CA and certificates made here with openssl: the pipeline works
# over TLS with a client certificate; a wrong CA is refused with a clear
# error and retried (never downgraded to plain AMQP) until the right CA is
# configured; amqp_tls_verify = off is an explicit opt-out; a broker whose
# certificate is for another host name is refused.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $dir = PostgreSQL::Test::Utils::tempdir('tls');

sub openssl
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'openssl', @args ], '<', \'', '>', \$out, '2>', \$err)
	  or BAIL_OUT("openssl @args failed: $err");
	return $out;
}

sub make_ca
{
	my ($name) = @_;
	openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '3',
		'-subj', "/CN=$name", '-keyout', "$dir/$name.key", '-out', "$dir/$name.crt");
	return "$dir/$name.crt";
}

# a certificate signed by $ca, with the given subjectAltName (or none)
sub make_cert
{
	my ($name, $ca, $cn, $san, $usage) = @_;
	openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', "/CN=$cn",
		'-keyout', "$dir/$name.key", '-out', "$dir/$name.csr");
	open(my $fh, '>', "$dir/$name.ext") or die;
	print $fh "basicConstraints = CA:FALSE\n";
	print $fh "extendedKeyUsage = $usage\n";
	print $fh "subjectAltName = $san\n" if $san;
	close($fh);
	openssl('x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/$ca.crt",
		'-CAkey', "$dir/$ca.key", '-CAcreateserial', '-days', '3',
		'-extfile', "$dir/$name.ext", '-out', "$dir/$name.crt");
	chmod 0600, "$dir/$name.key";
	return ("$dir/$name.crt", "$dir/$name.key");
}

my $ca = make_ca('ca');
my $wrong_ca = make_ca('wrongca');
my ($srv_crt, $srv_key) = make_cert('server', 'ca', 'localhost',
	'DNS:localhost,IP:127.0.0.1', 'serverAuth');
my ($cli_crt, $cli_key) = make_cert('client', 'ca', 'ordflow-client', undef, 'clientAuth');
my ($oth_crt, $oth_key) = make_cert('other', 'ca', 'broker.example.net',
	'DNS:broker.example.net', 'serverAuth');

# The broker asks for and verifies a client certificate.
my $mq = OrdflowTest::start_broker(tls => {
	cacert => $ca, cert => $srv_crt, key => $srv_key,
	verify => 'verify_peer', fail_if_no_peer_cert => 1 });
my $url = $mq->tls_url('localhost');
like($url, qr{^amqps://}, "TLS URL $url");

my (undef, $node) = OrdflowInvariants::setup('tls', broker => $mq, consumers => 1,
	extra => "ordflow.amqp_url = '$url'\n"
	  . "ordflow.amqp_tls_ca_file = '$ca'\n"
	  . "ordflow.amqp_tls_cert_file = '$cli_crt'\n"
	  . "ordflow.amqp_tls_key_file = '$cli_key'\n");
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

# --- the pipeline over TLS -------------------------------------------------
$sql->('SELECT ordflow.start(300)');
ok( OrdflowTest::wait_for($node,
		'SELECT orders_processed >= 600 FROM ordflow.metrics()', 't', 60),
	'orders are processed over amqps:// with a verified broker and a client certificate');
my $conns = $mq->ctl('list_connections', '-q', '--no-table-headers', 'ssl', 'port');
my @c = grep { /\S/ } split /\n/, $conns;
cmp_ok(scalar(@c), '>=', 2, 'the broker sees the relay and the consumer connected');
is(scalar(grep { /^true\s+${\ $mq->tls_port}\b/ } @c), scalar(@c),
	'every connection to the broker uses TLS on the amqps port')
  or diag $conns;

# --- a wrong CA: refused, logged, retried, not downgraded ------------------
my $logpos = OrdflowInvariants::log_position($node);
$sql->("ALTER SYSTEM SET ordflow.amqp_tls_ca_file = '$wrong_ca'");
# each retry is logged at DEBUG1 ("broker still unreachable"): count them
$sql->('ALTER SYSTEM SET log_min_messages = debug1');
$sql->('SELECT pg_reload_conf()');
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(NOT connected) FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 60),
	'with a CA that did not sign the broker certificate, the workers are not connected')
  or diag $sql->('SELECT * FROM ordflow.status()');
my $err = $sql->(q{SELECT last_error FROM ordflow.status() WHERE worker = 'relay'});
note "relay last_error with the wrong CA: $err";
like($err, qr/certificate|verif/i, 'last_error says the certificate verification failed');
my $done = $sql->('SELECT orders_processed FROM ordflow.metrics()');
my $ob1 = $sql->('SELECT count(*) FROM ordflow.outbox');
sleep 6;
is($sql->('SELECT orders_processed FROM ordflow.metrics()'), $done,
	'nothing is processed meanwhile');
cmp_ok($sql->('SELECT count(*) FROM ordflow.outbox'), '>', $ob1, 'orders wait in the outbox');
is($sql->(q{SELECT count(*) FROM ordflow.status()
			 WHERE (worker = 'relay' OR worker LIKE 'consumer %') AND connected}), 0,
	'still not connected: never silently downgraded');
my $log = OrdflowInvariants::log_since($node, $logpos);
like($log, qr/ordflow: could not connect to the broker at amqps:\S+: .*(certificate|verif|SSL|TLS)/i,
	'the server log shows the refused connection');
$sql->('ALTER SYSTEM RESET log_min_messages');
$sql->('SELECT pg_reload_conf()');
# 6 s and more with a backoff of 0.5, 1, 2, 4 s: a few retries per worker,
# neither none nor a tight loop
my $retries = () = $log =~ /ordflow: broker still unreachable: .*(?:certificate|verif|SSL)/gi;
cmp_ok($retries, '>=', 2, "the workers keep retrying ($retries retries logged at DEBUG1)");
cmp_ok($retries, '<=', 2 * 8, '... with backoff, not in a tight loop');
my $first = () = $log =~ /ordflow: could not connect to the broker/g;
cmp_ok($first, '<=', 4, "at LOG level, at most two lines per worker ($first)");
is(scalar(@{ [ grep { /\S/ } split /\n/, $mq->ctl('list_connections', '-q', '--no-table-headers', 'ssl') ] }),
	0, 'no connection reached the broker, in plain AMQP or otherwise');

# --- the right CA again ------------------------------------------------------
$sql->('ALTER SYSTEM RESET ordflow.amqp_tls_ca_file');
$sql->('SELECT pg_reload_conf()');
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'with the right CA the workers reconnect');
ok( OrdflowTest::wait_for($node,
		"SELECT orders_processed >= $done + 600 FROM ordflow.metrics()", 't', 60),
	'and orders are processed again');

# --- verification off: an explicit opt-out ---------------------------------
$sql->("ALTER SYSTEM SET ordflow.amqp_tls_ca_file = '$wrong_ca'");
$sql->('ALTER SYSTEM SET ordflow.amqp_tls_verify = off');
$sql->('SELECT pg_reload_conf()');
$done = $sql->('SELECT orders_processed FROM ordflow.metrics()');
ok( OrdflowTest::wait_for($node,
		"SELECT orders_processed >= $done + 300 FROM ordflow.metrics()", 't', 60),
	'with amqp_tls_verify = off the wrong CA is accepted (explicit opt-out)');
ok(OrdflowInvariants::wait_connected($node, 1, 30), '... connected');
$sql->('ALTER SYSTEM RESET ordflow.amqp_tls_verify');
$sql->('ALTER SYSTEM RESET ordflow.amqp_tls_ca_file');
$sql->('SELECT pg_reload_conf()');

# --- a certificate for another host name ------------------------------------
my $mq2 = OrdflowTest::start_broker(tls => {
	cacert => $ca, cert => $oth_crt, key => $oth_key,
	verify => 'verify_peer', fail_if_no_peer_cert => 1 });
my $url2 = $mq2->tls_url('localhost');
$logpos = OrdflowInvariants::log_position($node);
$sql->("ALTER SYSTEM SET ordflow.amqp_url = '$url2'");
$sql->('SELECT pg_reload_conf()');
ok( OrdflowTest::wait_for($node, q{
		SELECT bool_and(NOT connected AND last_error IS NOT NULL) FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', 60),
	'a broker whose certificate names another host is refused')
  or diag $sql->('SELECT * FROM ordflow.status()');
$err = $sql->(q{SELECT last_error FROM ordflow.status() WHERE worker = 'relay'});
note "relay last_error with the host name mismatch: $err";
like($err, qr/host ?name|verif|certificate/i, 'last_error says why');
sleep 3;
is(scalar(@{ [ grep { /\S/ } split /\n/, $mq2->ctl('list_connections', '-q', '--no-table-headers', 'ssl') ] }),
	0, 'no connection to the mismatching broker was kept');

$sql->('ALTER SYSTEM RESET ordflow.amqp_url');
$sql->('SELECT pg_reload_conf()');
ok(OrdflowInvariants::wait_connected($node, 1, 90), 'back on the right broker');
$mq2->stop;

OrdflowInvariants::stop_and_drain($node, label => 'after the TLS faults');
OrdflowInvariants::check($node, 'after the TLS faults', min_orders => 1500);
OrdflowInvariants::workers_stable($node, 'after the TLS faults');
unlike(OrdflowInvariants::log_since($node, 0), qr/terminated by signal/, 'no backend crashed');

$node->stop;
$mq->stop;
done_testing();
