
# OrdflowHostile: helpers for the hostile-input tests (t/030..t/036).
#
# They work against both the 1.0 and the 1.1 harness and schema, so each
# test can be run on the released code to see it fail for the right reason:
# settings are written to postgresql.conf (ALTER SYSTEM refuses a setting
# 1.0 does not know), dead letters are read through whichever table holds
# them, and 1.1-only columns through to_jsonb(row).
#
#   OrdflowHostile::set_conf($node, 'ordflow.user_events_role' => 'r', ...)
#   OrdflowHostile::restart_consumers($node)
#   OrdflowHostile::publish($mq, $key, $body, url => U, expiration => MS, %props)
#   OrdflowHostile::add_broker_user($mq, $user, $password, $conf, $write, $read)
#   OrdflowHostile::await_reply($mq, $queue, $node, $timeout)
#   OrdflowHostile::stays($node, $sql, $expected, $secs, $db)
#   OrdflowHostile::dl_table($node, $db)
#   OrdflowHostile::server_alive($node, $label)

package OrdflowHostile;

use strict;
use warnings;

use Carp;
use IPC::Run;
use Test::More;
use Time::HiRes qw(time usleep);

use PostgreSQL::Test::Utils;
use OrdflowTest;

sub _q { my ($s) = @_; $s =~ s/'/''/g; return "'$s'"; }

# Is $name a setting this server knows (1.0 drops the 1.1 names)?
sub known_setting
{
	my ($node, $name) = @_;
	return $node->safe_psql('postgres',
		'SELECT count(*) FROM pg_catalog.pg_settings WHERE name = ' . _q($name)) eq '1';
}

# Appends name = 'value' lines to postgresql.conf (the last one wins),
# reloads, and waits until a new session sees every value this server knows.
sub set_conf
{
	my ($node, @kv) = @_;
	my $conf = '';
	my @check;
	while (my ($k, $v) = splice(@kv, 0, 2))
	{
		$conf .= "$k = " . _q($v) . "\n";
		push @check, [ $k, $v ]
		  if known_setting($node, $k)
		  && $node->safe_psql('postgres', 'SELECT current_setting(' . _q($k) . ')') ne $v;
	}
	my $logpos = -s $node->logfile;
	$node->append_conf('postgresql.conf', $conf);
	$node->reload;
	for my $c (@check)
	{
		my ($k, $v) = @$c;
		# the postmaster logs each setting a reload changes; after that line
		# every new process (and a worker at its next loop) has the value
		my $re = quotemeta(qq{parameter "$k" changed to});
		my $deadline = time + 60;
		while (time < $deadline)
		{
			last if PostgreSQL::Test::Utils::slurp_file($node->logfile, $logpos) =~ /$re/;
			usleep(100_000);
		}
	}
	return 1;
}

# Terminates every consumer and waits until the supervisor has started them
# again (new pids, connected): they read settings and database defaults
# (ALTER DATABASE ... SET) afresh.
sub restart_consumers
{
	my ($node, $timeout) = @_;
	$timeout ||= 120;
	my $old = $node->safe_psql('postgres',
		q{SELECT coalesce(string_agg(pid::text, ','), '0') FROM ordflow.status()
		   WHERE worker LIKE 'consumer %' AND pid IS NOT NULL});
	$node->safe_psql('postgres', "SELECT pg_terminate_backend(p) FROM unnest('{$old}'::int[]) AS p");
	return OrdflowTest::wait_for($node, qq{
		SELECT count(*) > 0 AND bool_and(connected AND pid IS NOT NULL
										 AND NOT pid = ANY ('{$old}'::int[]))
		  FROM ordflow.status() WHERE worker LIKE 'consumer %'}, 't', $timeout);
}

# publish with the test client; url => another broker URL (credentials),
# expiration => per-message TTL in ms; other options as Broker::publish.
# Returns (exit code, stderr); croaks only if the client could not run.
sub publish
{
	my ($mq, $key, $body, %p) = @_;
	my $url = delete $p{url} || $mq->url;
	my $exp = delete $p{expiration};
	my $allow_fail = delete $p{allow_fail};
	my @args = $mq->_publish_args($key, %p);
	push @args, '--expiration', $exp if defined $exp;
	my ($out, $err) = ('', '');
	IPC::Run::run([ OrdflowTest::amqp_client(), $url, @args ],
		'<', \$body, '>', \$out, '2>', \$err);
	my $rc = $? >> 8;
	croak "publish to '$key' failed (exit $rc): $err" if $rc != 0 && !$allow_fail;
	return wantarray ? ($rc, $err) : $rc;
}

# a broker user with the given permission regexps on vhost /
sub add_broker_user
{
	my ($mq, $user, $password, $conf, $write, $read) = @_;
	$mq->ctl('add_user', $user, $password);
	$mq->ctl('set_permissions', '-p', '/', $user, $conf, $write, $read);
	return sprintf('amqp://%s:%s@127.0.0.1:%d/%%2f', $user, $password, $mq->port);
}

# The next message on $queue, polling so a dead server ends the wait early.
sub await_reply
{
	my ($mq, $queue, $node, $timeout) = @_;
	my $deadline = time + ($timeout || 90);
	while (time < $deadline)
	{
		my $m = $mq->get_message($queue, wait => 2);
		return $m if $m;
		my ($ret) = $node->psql('postgres', 'SELECT 1');
		if ($ret != 0)
		{
			diag "the server stopped answering while waiting for a reply on $queue";
			return undef;
		}
	}
	return undef;
}

# True if $sql keeps returning $expected for $secs seconds (a check that
# something does NOT happen, e.g. no replay); false at the first deviation.
sub stays
{
	my ($node, $sql, $expected, $secs, $db) = @_;
	$expected = 't' unless defined $expected;
	my $deadline = time + $secs;
	while (1)
	{
		my ($ret, $out, $err) = $node->psql($db || 'postgres', $sql);
		if ($ret != 0 || $out ne $expected)
		{
			diag "stays: $sql\nexpected $expected, got: $out $err";
			return 0;
		}
		return 1 if time >= $deadline;
		usleep(500_000);
	}
}

# The table that holds the dead letters: dead_letters_raw in 1.1 (the view
# dead_letters adds body_text), dead_letters in 1.0.
sub dl_table
{
	my ($node, $db) = @_;
	my $t = $node->safe_psql($db || 'postgres',
		q{SELECT to_regclass('ordflow.dead_letters_raw') IS NOT NULL});
	return $t eq 't' ? 'ordflow.dead_letters_raw' : 'ordflow.dead_letters';
}

# The server still answers and no process died of a signal (the harness
# runs with restart_after_crash = off, so a crash leaves it down).
sub server_alive
{
	my ($node, $label) = @_;
	my ($ret, $out) = $node->psql('postgres', 'SELECT 1');
	my $ok = ok($ret == 0 && $out eq '1', "$label: the server is still up");
	ok(!$node->log_contains('terminated by signal'), "$label: no process was terminated by a signal");
	return $ok;
}

1;
