
# A broker password never reaches the server log, whatever characters it
# has (SPEC "Trust boundaries"; issue 8).  Single URLs only, so that the
# same test shows the hole on 1.0, whose redactor stopped at a space or a
# quote.
#
# One password per character class the old redactor tripped over or a URL
# treats specially: space, quote, double quote, comma, '@', '/', '%'.  For
# each: a broker user with that password, ALTER SYSTEM to a URL with it
# (percent-encoded where a URL needs it) and a reload (PostgreSQL logs
# "parameter ... changed to ..."), a connection, and ALTER SYSTEM with the
# password written raw (refused: the check hook's error and the STATEMENT
# line).  log_statement = all logs every statement as typed.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowInvariants;

use PostgreSQL::Test::Utils;
use Test::More;

my %passwords = (
	space  => 'Qv7spc one two',
	quote  => q{Qv7quo it's},
	dquote => q{Qv7dqu say "hi"},
	comma  => 'Qv7com a,b,c',
	at     => 'Qv7at me@home',
	slash  => 'Qv7sla and/or',
	pct    => 'Qv7pct 100%sure',
);
my $mq = OrdflowTest::start_broker();
my $port = $mq->port;
my (undef, $node) = OrdflowInvariants::setup('redact', broker => $mq, consumers => 1,
	extra => 'log_statement = all');
my $sql = sub { $node->safe_psql('postgres', $_[0]) };
my $lit = sub { (my $s = $_[0]) =~ s/'/''/g; "'$s'" };

for my $kind (sort keys %passwords)
{
	my $pw = $passwords{$kind};
	my $user = "u_$kind";
	$mq->ctl('add_user', $user, $pw);
	$mq->ctl('set_permissions', '-p', '/', $user, '.*', '.*', '.*');
	(my $enc = $pw) =~ s/([@\/%:])/sprintf('%%%02X', ord($1))/ge;
	my $url = "amqp://$user:$enc\@127.0.0.1:$port/%2f";

	my $pos = OrdflowInvariants::log_position($node);
	$sql->('ALTER SYSTEM SET ordflow.amqp_url = ' . $lit->($url));
	$sql->('SELECT pg_reload_conf()');
	ok( OrdflowTest::wait_for_log($node, $pos,
			qr/ordflow: connected to the broker at amqp:\/\/$user:\*\*\*\@127\.0\.0\.1:$port\//, 2, 60),
		"$kind: the workers log in with the password")
	  or diag $sql->('SELECT * FROM ordflow.status()');

	# the same password written raw: refused unless only '@', '/' and '%'
	# are special, and either way never echoed
	my ($ret, $o, $e) = $node->psql('postgres',
		'ALTER SYSTEM SET ordflow.amqp_url = '
		  . $lit->("amqp://$user:$pw\@127.0.0.1:$port/%2f,amqp://$user:$pw\@127.0.0.1:1/"));
	unlike("$o$e", qr/\Q$pw\E|Qv7/, "$kind: a raw list's error shows no part of the password");
	($ret, $o, $e) = $node->psql('postgres',
		'ALTER SYSTEM SET ordflow.amqp_url = ' . $lit->("amqp://$user:$pw\@127.0.0.1:$port/%2f"));
	unlike("$o$e", qr/\Q$pw\E|Qv7/, "$kind: a raw URL's error shows no part of the password");
}
$sql->('ALTER SYSTEM RESET ordflow.amqp_url');
$sql->('SELECT pg_reload_conf()');
ok(OrdflowInvariants::wait_connected($node, 1, 60), 'back on the default URL');

my $log = OrdflowInvariants::log_since($node, 0);
like($log, qr/parameter "ordflow\.amqp_url" changed to "amqp:\/\/u_space:\*\*\*\@127/,
	'the reload logged the new URL, redacted');
for my $kind (sort keys %passwords)
{
	my $tag = substr($passwords{$kind}, 0, 6);
	my @leaks = grep { /\Q$tag\E/ } split /\n/, $log;
	is(scalar(@leaks), 0, "$kind: the server log never shows the password")
	  or diag join("\n", @leaks[0 .. ($#leaks < 4 ? $#leaks : 4)]);
}

$node->stop;
$mq->stop;
done_testing();
