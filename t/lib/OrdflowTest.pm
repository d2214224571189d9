
# OrdflowTest: helpers for ordflow's TAP tests.
#
#   use FindBin; use lib "$FindBin::RealBin/lib"; use OrdflowTest;
#
#   my $mq   = OrdflowTest::start_broker();          # private RabbitMQ
#   my $node = OrdflowTest::new_node('main', broker => $mq);
#   $node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
#   ok(OrdflowTest::wait_for($node, 'SELECT count(*) > 0 FROM ordflow.status()', 't'));
#
# The broker runs as the current (unprivileged) user on free loopback ports,
# with every file under a PostgreSQL::Test::Utils temp dir; it is stopped
# when the object goes away or the test ends, even if the test dies.
#
# Broker methods: url, tls_url, port, tls_port, node_name, dir, log_file,
# ctl(@args), try_ctl(@args), stop_app, start_app, stop, kill9, restart,
# is_running, beam_pid, set_watermark(@args), queue_depth($q),
# queue_stats($q), publish($key, $body, %props), publish_many($key,
# \@bodies, %props), get($q, %opts), get_message($q, %opts),
# get_messages($q, %opts), declare_queue($q, %opts), purge_queue($q).
# Module functions: start_broker, new_node, wait_for, amqp_client.

package OrdflowTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(rmtree);
use File::Spec;
use IPC::Run;
use POSIX qw(:sys_wait_h setsid);
use Socket;
use Time::HiRes qw(usleep time);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our $VERSION = '1.0';

my $RABBIT_BIN = $ENV{RABBITMQ_BIN_DIR} || '/usr/lib/rabbitmq/bin';
my @live_brokers;        # weak-ish registry for the END block
my $broker_seq = 0;
my $client_path;

# ---------------------------------------------------------------------------
# ports

sub _can_bind
{
	my ($port) = @_;
	socket(my $s, PF_INET, SOCK_STREAM, getprotobyname('tcp')) or return 0;
	# no SO_REUSEADDR: a TIME_WAIT leftover must count as busy for Erlang
	my $ok = bind($s, sockaddr_in($port, inet_aton('127.0.0.1')))
	  && listen($s, 1);
	close($s);
	return $ok ? 1 : 0;
}

# A block of $n consecutive free ports.  Erlang's CLI tools listen on a
# range too (RABBITMQ_CTL_DIST_PORT_MIN..MAX, by default 35672..35682,
# shared by every rabbitmqctl on the machine), so each broker gets its own
# block: amqp, dist, epmd, tls, then ten ports for its CLI calls.  The block
# is taken below PostgreSQL::Test::Cluster's range (10200..32767) and below
# the kernel's ephemeral range, so neither can hand the ports out meanwhile;
# a reservation file like Cluster.pm's keeps concurrent tests apart.
sub _free_port_block
{
	my ($n) = @_;
	my $lockdir = $ENV{ORDFLOW_PORT_DIR} || '/tmp/ordflow-test-ports';
	if (!-d $lockdir)
	{
		mkdir $lockdir;
		chmod 01777, $lockdir;
	}
	for my $attempt (1 .. 500)
	{
		my $base = 6000 + 16 * int(rand((10150 - 6000) / 16 - 1));
		next if grep { !_can_bind($_) } ($base .. $base + $n - 1);
		my $lock = "$lockdir/$base.rsv";
		# best effort: without a usable lock dir the bind check alone decides
		open(my $fh, '+>>', $lock) or return $base;
		flock($fh, 2) or return $base;
		seek($fh, 0, 0);
		my $pid = <$fh>;
		chomp $pid if defined $pid;
		if (defined $pid && $pid =~ /^\s*(\d+)$/ && (kill(0, $1) || $!{EPERM}))
		{
			close($fh);
			next;
		}
		truncate($fh, 0);
		print $fh "$$\n";
		close($fh);
		return $base;
	}
	croak "no free block of $n loopback ports found";
}

# ---------------------------------------------------------------------------
# the AMQP test client (t/lib/amqp_client.c), compiled once per run

sub amqp_client
{
	return $client_path if $client_path && -x $client_path;
	my $src = File::Spec->catfile(dirname(abs_path(__FILE__)), 'amqp_client.c');
	my $bin = "$PostgreSQL::Test::Utils::tmp_check/amqp_client";
	if (!-x $bin || (stat($bin))[9] < (stat($src))[9])
	{
		my $tmp = "$bin.$$";
		my ($out, $err);
		my $cc = $ENV{CC} || 'cc';
		IPC::Run::run([ $cc, '-O1', '-o', $tmp, $src, '-lrabbitmq' ],
			'>', \$out, '2>', \$err)
		  or croak "compiling $src failed:\n$out$err";
		rename($tmp, $bin) or croak "rename $tmp: $!";
	}
	$client_path = $bin;
	return $bin;
}

# ---------------------------------------------------------------------------
# broker

=pod

=item OrdflowTest::start_broker(%opts)

Starts a private RabbitMQ node and waits until it accepts connections.
Options:

  tls    => { cacert => F, cert => F, key => F, verify => 'verify_none'|'verify_peer',
              fail_if_no_peer_cert => 0|1 }   adds an amqps listener (tls_port/tls_url)
  extra  => "rabbitmq.conf lines\n"           appended to rabbitmq.conf
  plugins => ['rabbitmq_management']          enabled plugins (default none: faster start)
  timeout => 60                               seconds to wait for the node
  cookie => 'STRING'                          Erlang cookie (written to the node's HOME)
  epmd_port => P, shared_epmd => 1            use (and never kill) an epmd other
                                              nodes share (OrdflowCluster)

=cut

sub start_broker
{
	my (%opts) = @_;

	my $base = _free_port_block(16);
	my $dir  = PostgreSQL::Test::Utils::tempdir('rabbitmq');
	my $self = bless {
		dir          => $dir,
		port         => $base,
		dist_port    => $base + 1,
		epmd_port    => $opts{epmd_port} || $base + 2,
		tls_port     => $opts{tls} ? $base + 3 : undef,
		ctl_min      => $base + 4,
		ctl_max      => $base + 15,
		node         => sprintf('ordflow_t%d_%d@localhost', $$, ++$broker_seq),
		opts         => \%opts,
		owner_pid    => $$,
	}, 'OrdflowTest::Broker';

	mkdir "$dir/$_" for qw(mnesia log home);
	if (defined $opts{cookie})
	{
		# nodes of one cluster must share it; Erlang wants it private
		_write_file("$dir/home/.erlang.cookie", $opts{cookie});
		chmod 0400, "$dir/home/.erlang.cookie";
	}
	$self->{pid_file} = "$dir/rabbitmq.pid";

	my $conf = "# written by OrdflowTest\n"
	  . "loopback_users.guest = true\n"
	  . "log.file.level = info\n"
	  . "log.console = false\n"
	  # tests must not trip a disk alarm on a nearly full /tmp unless they ask
	  . "disk_free_limit.absolute = 1MB\n";
	if (my $tls = $opts{tls})
	{
		$conf .= "listeners.ssl.default = 127.0.0.1:$self->{tls_port}\n";
		$conf .= "ssl_options.cacertfile = $tls->{cacert}\n" if $tls->{cacert};
		$conf .= "ssl_options.certfile = $tls->{cert}\n"     if $tls->{cert};
		$conf .= "ssl_options.keyfile = $tls->{key}\n"       if $tls->{key};
		$conf .= "ssl_options.verify = " . ($tls->{verify} || 'verify_none') . "\n";
		$conf .= "ssl_options.fail_if_no_peer_cert = "
		  . ($tls->{fail_if_no_peer_cert} ? 'true' : 'false') . "\n";
	}
	$conf .= $opts{extra} . "\n" if defined $opts{extra};
	_write_file("$dir/rabbitmq.conf", $conf);
	my @plugins = @{ $opts{plugins} || [] };
	_write_file("$dir/enabled_plugins", '[' . join(',', @plugins) . "].\n");
	# scripts/test.sh reads this to stop the epmd if a test is killed
	_write_file("$dir/epmd.port", "$self->{epmd_port}\n");

	push @live_brokers, $self;
	$self->_launch;
	return $self;
}

sub _write_file
{
	my ($path, $text) = @_;
	open(my $fh, '>', $path) or croak "cannot write $path: $!";
	print $fh $text;
	close($fh);
}

package OrdflowTest::Broker;

use strict;
use warnings;
use Carp;
use IPC::Run;
use POSIX qw(:sys_wait_h setsid);
use Scalar::Util qw(weaken);
use Test::More;
use Time::HiRes qw(usleep time);

# environment shared by the server and every CLI call
sub _env
{
	my ($self) = @_;
	my $d = $self->{dir};
	return (
		HOME                          => "$d/home",
		RABBITMQ_NODENAME             => $self->{node},
		RABBITMQ_NODE_IP_ADDRESS      => '127.0.0.1',
		RABBITMQ_NODE_PORT            => $self->{port},
		RABBITMQ_DIST_PORT            => $self->{dist_port},
		RABBITMQ_MNESIA_BASE          => "$d/mnesia",
		RABBITMQ_LOG_BASE             => "$d/log",
		RABBITMQ_CONFIG_FILE          => "$d/rabbitmq.conf",
		RABBITMQ_ADVANCED_CONFIG_FILE => "$d/advanced.config",
		RABBITMQ_ENABLED_PLUGINS_FILE => "$d/enabled_plugins",
		RABBITMQ_PID_FILE             => $self->{pid_file},
		# do not read the system's /etc/rabbitmq/rabbitmq-env.conf
		RABBITMQ_CONF_ENV_FILE        => '/dev/null',
		RABBITMQ_CTL_DIST_PORT_MIN    => $self->{ctl_min},
		RABBITMQ_CTL_DIST_PORT_MAX    => $self->{ctl_max},
		# a private epmd, so nothing of ours outlives the test
		ERL_EPMD_PORT                 => $self->{epmd_port},
		ERL_EPMD_ADDRESS              => '127.0.0.1',
		LANG                          => 'C.UTF-8',
		LC_ALL                        => 'C.UTF-8',
	);
}

sub _launch
{
	my ($self) = @_;
	my %env = $self->_env;
	unlink $self->{pid_file};
	my $out = "$self->{dir}/log/server.out";

	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		# own session: a Ctrl-C at the terminal must not skip our cleanup
		setsid();
		@ENV{ keys %env } = values %env;
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $out);
		open(STDERR, '>&', \*STDOUT);
		exec("$RABBIT_BIN/rabbitmq-server")
		  or POSIX::_exit(127);
	}
	$self->{script_pid} = $pid;

	my $timeout = $self->{opts}{timeout} || 60;
	my ($ok, $o) = $self->try_ctl('wait', $self->{pid_file}, '--timeout', $timeout);
	if (!$ok)
	{
		my $log = _slurp($out);
		$self->stop;
		croak "RabbitMQ did not start:\n$o\n--- server output ---\n$log";
	}
	$self->{beam_pid} = _read_pid($self->{pid_file});
	$self->{running} = 1;
	$self->{stopped} = 0;    # restart() after stop() must be stopped again at exit
	note "RabbitMQ $self->{node} ready on 127.0.0.1:$self->{port}"
	  . ($self->{tls_port} ? " (amqps $self->{tls_port})" : '')
	  . ", beam pid $self->{beam_pid}";
	return 1;
}

sub _slurp
{
	my ($f) = @_;
	open(my $fh, '<', $f) or return '';
	local $/;
	my $t = <$fh>;
	return defined $t ? $t : '';
}

sub _read_pid
{
	my ($f) = @_;
	my $t = _slurp($f);
	return ($t =~ /(\d+)/) ? $1 : undef;
}

sub url
{
	my ($self) = @_;
	return "amqp://guest:guest\@127.0.0.1:$self->{port}/%2f";
}

sub tls_url
{
	my ($self, $host) = @_;
	croak "broker started without tls" unless $self->{tls_port};
	$host ||= 'localhost';
	return "amqps://guest:guest\@$host:$self->{tls_port}/%2f";
}

sub port      { $_[0]{port} }
sub tls_port  { $_[0]{tls_port} }
sub node_name { $_[0]{node} }
sub dir       { $_[0]{dir} }
sub beam_pid  { $_[0]{beam_pid} }
sub log_file  { "$_[0]{dir}/log/$_[0]{node}.log" }

sub is_running
{
	my ($self) = @_;
	return _alive($self->{beam_pid});
}

# kill(0) succeeds on a zombie too; a zombie that nobody reaps is dead for us
sub _alive
{
	my ($pid) = @_;
	return 0 unless $pid && kill(0, $pid);
	return _slurp("/proc/$pid/stat") =~ /^\d+ \(.*?\) [ZX]/ ? 0 : 1;
}

# rabbitmqctl -n NODE @args; returns (ok, stdout+stderr)
sub try_ctl
{
	my ($self, @args) = @_;
	my %env = $self->_env;
	local @ENV{ keys %env } = values %env;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ "$RABBIT_BIN/rabbitmqctl", '-n', $self->{node}, @args ],
		'<', \'', '>', \$out, '2>', \$err);
	return ($ok ? 1 : 0, $out . $err) if wantarray;
	return $ok ? 1 : 0;
}

# rabbitmqctl -n NODE @args; dies on failure, returns stdout
sub ctl
{
	my ($self, @args) = @_;
	my %env = $self->_env;
	local @ENV{ keys %env } = values %env;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$RABBIT_BIN/rabbitmqctl", '-n', $self->{node}, @args ],
		'<', \'', '>', \$out, '2>', \$err)
	  or croak "rabbitmqctl @args failed: $out$err";
	return $out;
}

sub stop_app  { $_[0]->ctl('stop_app');  return 1 }
sub start_app { $_[0]->ctl('start_app'); $_[0]->ctl('await_startup'); return 1 }

# set_watermark(0.000001) or set_watermark('absolute', '1MB'); 0.4 restores the default
sub set_watermark
{
	my ($self, @v) = @_;
	$self->ctl('set_vm_memory_high_watermark', @v);
	return 1;
}

# queue name => { messages, ready, unacked, consumers }; undef if no such queue
sub queue_stats
{
	my ($self, $queue) = @_;
	my $out = $self->ctl('list_queues', '-q', '--no-table-headers',
		'name', 'messages', 'messages_ready', 'messages_unacknowledged', 'consumers');
	for my $line (split /\n/, $out)
	{
		my @f = split /\t/, $line;
		next unless @f >= 5 && $f[0] eq $queue;
		return { messages => $f[1], ready => $f[2], unacked => $f[3], consumers => $f[4] };
	}
	return undef;
}

# messages in the queue (ready + unacked); undef if the queue does not exist
sub queue_depth
{
	my ($self, $queue) = @_;
	my $s = $self->queue_stats($queue);
	return $s ? $s->{messages} : undef;
}

sub _client
{
	my ($self, $stdin, @args) = @_;
	my $bin = OrdflowTest::amqp_client();
	my ($out, $err) = ('', '');
	my @tls = $self->{client_tls} ? @{ $self->{client_tls} } : ();
	my $url = $self->{client_url} || $self->url;
	IPC::Run::run([ $bin, $url, @args, @tls ],
		'<', \$stdin, '>', \$out, '2>', \$err);
	my $rc = $? >> 8;
	return ($rc, $out, $err);
}

# publish($routing_key, $body, exchange => 'ordflow' (default), persistent => 1
# (default), content_type => 'application/json' (default; undef for none),
# reply_to, correlation_id, message_id, headers => {k => v}, mandatory => 1).
# Waits for the publisher confirm; dies if the broker refuses; returns 1.
sub publish
{
	my ($self, $key, $body, %p) = @_;
	my @args = $self->_publish_args($key, %p);
	my ($rc, $out, $err) = $self->_client($body, @args);
	croak "publish to '$key' failed (exit $rc): $err" if $rc != 0;
	return 1;
}

# publish_many($routing_key, \@bodies, %props): one message per body, one
# connection; bodies must not contain newlines.
sub publish_many
{
	my ($self, $key, $bodies, %p) = @_;
	for (@$bodies)
	{
		croak "publish_many: body contains a newline: $_" if /\n/;
	}
	my @args = ($self->_publish_args($key, %p), '--lines');
	my ($rc, $out, $err) =
	  $self->_client(join('', map { "$_\n" } @$bodies), @args);
	croak "publish_many to '$key' failed (exit $rc): $err" if $rc != 0;
	return scalar @$bodies;
}

sub _publish_args
{
	my ($self, $key, %p) = @_;
	my $exchange = exists $p{exchange} ? $p{exchange} : 'ordflow';
	my @a = ('publish', '--exchange', $exchange, '--routing-key', $key);
	push @a, '--persistent' if !exists $p{persistent} || $p{persistent};
	my $ct = exists $p{content_type} ? $p{content_type} : 'application/json';
	push @a, '--content-type', $ct if defined $ct;
	push @a, '--reply-to', $p{reply_to}             if defined $p{reply_to};
	push @a, '--correlation-id', $p{correlation_id} if defined $p{correlation_id};
	push @a, '--message-id', $p{message_id}         if defined $p{message_id};
	push @a, '--mandatory' if $p{mandatory};
	for my $k (sort keys %{ $p{headers} || {} })
	{
		push @a, '--header', "$k=$p{headers}{$k}";
	}
	return @a;
}

# get_messages($queue, wait => seconds (default 0), count => n (default 1)):
# list of { body, routing_key, exchange, redelivered, content_type,
# delivery_mode, correlation_id, reply_to, message_id, headers => {} },
# each acknowledged (removed from the queue).
sub get_messages
{
	my ($self, $queue, %o) = @_;
	my @args = ('get', $queue, '--count', $o{count} || 1, '--wait', $o{wait} || 0);
	my ($rc, $out, $err) = $self->_client('', @args);
	return () if $rc == 3;
	croak "get from '$queue' failed (exit $rc): $err" if $rc != 0;
	my @msgs;
	my $pos = 0;
	while ($pos < length($out))
	{
		my %m = (headers => {});
		while (1)
		{
			my $nl = index($out, "\n", $pos);
			croak "bad client output" if $nl < 0;
			my $line = substr($out, $pos, $nl - $pos);
			$pos = $nl + 1;
			my ($k, $v) = split /=/, $line, 2;
			if ($k eq 'body_length')
			{
				$m{body} = substr($out, $pos, $v);
				$pos += $v + 1;
				last;
			}
			if ($k =~ /^header\.(.*)$/) { $m{headers}{$1} = $v; }
			else { $m{$k} = $v; }
		}
		push @msgs, \%m;
	}
	return @msgs;
}

sub get_message
{
	my ($self, $queue, %o) = @_;
	my @m = $self->get_messages($queue, %o, count => 1);
	return $m[0];
}

# the body of the next message (acknowledged), or undef if the queue is empty
sub get
{
	my ($self, $queue, %o) = @_;
	my $m = $self->get_message($queue, %o);
	return $m ? $m->{body} : undef;
}

# declare_queue($name, durable => 0|1, bind => [$exchange, $key])
sub declare_queue
{
	my ($self, $name, %o) = @_;
	my @args = ('declare-queue', $name);
	push @args, '--durable' if $o{durable};
	push @args, '--bind', @{ $o{bind} } if $o{bind};
	my ($rc, $out, $err) = $self->_client('', @args);
	croak "declare_queue '$name' failed (exit $rc): $err" if $rc != 0;
	return 1;
}

sub purge_queue
{
	my ($self, $name) = @_;
	my ($rc, $out, $err) = $self->_client('', 'purge', $name);
	croak "purge_queue '$name' failed (exit $rc): $err" if $rc != 0;
	return 1;
}

# use the amqps listener for publish/get: use_tls(cacert => F, cert => F,
# key => F, no_verify => 1, host => 'localhost'); use_tls() with no
# arguments switches back to plain amqp.
sub use_tls
{
	my ($self, %o) = @_;
	if (!%o)
	{
		delete $self->{client_url};
		delete $self->{client_tls};
		return;
	}
	$self->{client_url} = $self->tls_url($o{host});
	my @t;
	push @t, '--cacert', $o{cacert} if $o{cacert};
	push @t, '--cert', $o{cert}, '--key', $o{key} if $o{cert};
	push @t, '--no-verify' if $o{no_verify};
	$self->{client_tls} = \@t;
	return;
}

# kill -9 the Erlang VM (the node's data stays; restart() brings it back)
sub kill9
{
	my ($self) = @_;
	return unless $self->{beam_pid};
	kill 'KILL', $self->{beam_pid};
	$self->_wait_gone($self->{beam_pid}, 10);
	$self->_reap_script;
	$self->{running} = 0;
	return 1;
}

# start the node again on the same ports and data dir, wait until ready
sub restart
{
	my ($self) = @_;
	$self->_stop_node if $self->is_running;
	$self->_launch;
	return 1;
}

sub _wait_gone
{
	my ($self, $pid, $secs) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		$self->_reap_script;
		return 1 unless _alive($pid);
		usleep(50_000);
	}
	return 0;
}

sub _reap_script
{
	my ($self) = @_;
	return unless $self->{script_pid};
	my $r = waitpid($self->{script_pid}, WNOHANG);
	delete $self->{script_pid} if $r == $self->{script_pid} || $r == -1;
}

# graceful stop of the node (SIGTERM makes RabbitMQ shut down cleanly)
sub _stop_node
{
	my ($self) = @_;
	my $pid = $self->{beam_pid};
	if (_alive($pid))
	{
		kill 'TERM', $pid;
		if (!$self->_wait_gone($pid, 20))
		{
			kill 'KILL', $pid;
			$self->_wait_gone($pid, 5);
		}
	}
	$self->_reap_script;
	$self->{running} = 0;
}

# stop the node and its epmd; safe to call twice
sub stop
{
	my ($self) = @_;
	return if $self->{stopped};
	return if $self->{owner_pid} != $$;    # a forked child must not stop it
	$self->_stop_node;
	if ($self->{script_pid})
	{
		kill 'KILL', $self->{script_pid};
		waitpid($self->{script_pid}, 0);
		delete $self->{script_pid};
	}
	# the node started its own epmd on our private port; ask it to go
	# (a shared one is the cluster's to stop)
	if ($self->{opts}{shared_epmd})
	{
		$self->{stopped} = 1;
		return 1;
	}
	local $ENV{ERL_EPMD_PORT} = $self->{epmd_port};
	IPC::Run::run([ 'epmd', '-port', $self->{epmd_port}, '-kill' ],
		'<', \'', '>', \my $o, '2>', \my $e);
	$self->{stopped} = 1;
	return 1;
}

sub DESTROY
{
	my ($self) = @_;
	local ($., $@, $!, $^E, $?);
	$self->stop;
}

package OrdflowTest;

END
{
	local $?;
	for my $b (@live_brokers)
	{
		$b->stop if $b && ref $b;
	}
	@live_brokers = ();
}

# ---------------------------------------------------------------------------
# postgres

=pod

=item OrdflowTest::new_node($name, %opts)

A started PostgreSQL::Test::Cluster with ordflow preloaded.  Options:
broker => $mq (else the URL points at a closed port), consumers => N,
database => 'postgres', extra => "postgresql.conf lines", start => 0 to
leave it stopped.  The extension is not created.  As with every
PostgreSQL::Test::Cluster node, restart_after_crash is off (a crashed
worker brings the node down, so crashes fail tests loudly); a test that
kills a worker on purpose passes extra => 'restart_after_crash = on'.

=cut

sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	# UTF-8 whatever the caller's locale: dead_letters.body_text and
	# multibyte symbols depend on it
	$node->init(extra => [ '--encoding=UTF8', '--locale=C.UTF-8' ]);
	my $url = $opts{broker} ? $opts{broker}->url : 'amqp://guest:guest@127.0.0.1:1/%2f';
	my $db = $opts{database} || 'postgres';
	my $conf = <<"EOC";
shared_preload_libraries = 'ordflow'
ordflow.amqp_url = '$url'
ordflow.database = '$db'
max_worker_processes = 20
log_line_prefix = '%m [%p] %b '
log_min_messages = info
EOC
	$conf .= "ordflow.consumers = $opts{consumers}\n" if defined $opts{consumers};
	$conf .= $opts{extra} . "\n" if defined $opts{extra};
	$node->append_conf('postgresql.conf', $conf);
	$node->start unless defined $opts{start} && !$opts{start};
	return $node;
}

=pod

=item OrdflowTest::enable_user_events($node, $role, @privileges)

Lets broker user events through, as the README tells operators to: creates
$role (default ordflow_events) with USAGE on schema ordflow, the given
privileges on ordflow.users (default SELECT, INSERT, UPDATE, DELETE) and
USAGE on its sequences, sets ordflow.user_events_role to it and reloads.

=cut

sub enable_user_events
{
	my ($node, $role, @privs) = @_;
	$role ||= 'ordflow_events';
	@privs = qw(SELECT INSERT UPDATE DELETE) unless @privs;
	my $p = join(', ', @privs);
	$node->safe_psql('postgres', qq{
		DO \$\$ BEGIN CREATE ROLE $role; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
		GRANT USAGE ON SCHEMA ordflow TO $role;
		GRANT $p ON ordflow.users TO $role;
		GRANT USAGE ON ALL SEQUENCES IN SCHEMA ordflow TO $role;
		ALTER SYSTEM SET ordflow.user_events_role = '$role';
		SELECT pg_reload_conf();
	});
	return $role;
}

=pod

=item OrdflowTest::wait_for($node, $sql, $expected, $timeout_s, $dbname)

Polls $sql (psql -XAt) until its output equals $expected (default 't');
true on success, false after $timeout_s seconds (default 60), printing
the last output and error.

=cut

sub wait_for
{
	my ($node, $sql, $expected, $timeout, $dbname) = @_;
	$expected = 't' unless defined $expected;
	$timeout ||= 60;
	$dbname ||= 'postgres';
	my $deadline = time + $timeout;
	my ($ret, $out, $err);
	while (1)
	{
		($ret, $out, $err) = $node->psql($dbname, $sql);
		$out = '' unless defined $out;
		$err = '' unless defined $err;
		return 1 if $ret == 0 && $out eq $expected;
		last if time >= $deadline;
		usleep(200_000);
	}
	diag "wait_for timed out after ${timeout}s:\n$sql\nexpected: $expected\n"
	  . "last output: $out\nlast error: $err";
	return 0;
}

=pod

=item OrdflowTest::wait_for_log($node, $offset, $regex, $count, $timeout_s)

Polls the node's log from byte $offset on until $regex matches at least
$count times (default 1); true on success, false after $timeout_s seconds
(default 60).

=cut

sub wait_for_log
{
	my ($node, $offset, $re, $count, $timeout) = @_;
	$count ||= 1;
	my $deadline = time + ($timeout || 60);
	while (1)
	{
		my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset // 0);
		my $n = () = $log =~ /$re/g;
		return 1 if $n >= $count;
		if (time >= $deadline)
		{
			diag "wait_for_log timed out: $n of $count matches of $re";
			return 0;
		}
		usleep(200_000);
	}
}

=pod

=item OrdflowTest::metrics_recompute_sql(%opts)

SQL comparing ordflow.metrics() with a recompute from ordflow.orders: one
boolean per figure, in this order: processed, completed, declined, total
execution amount, average execution price, last_processed_at; all true
prints 't|t|t|t|t|t'.  last_processed_at may be NULL on both sides unless
last_set => 1 (then it must equal the newest processed_at, plain =).
latency => 1 adds a seventh: p50 is set and p99 >= p50.

=cut

sub metrics_recompute_sql
{
	my (%o) = @_;
	my $last = $o{last_set}
	  ? 'm.last_processed_at = r.last_at'
	  : 'm.last_processed_at IS NOT DISTINCT FROM r.last_at';
	$last .= ",\n\t\t   m.latency_p50_ms IS NOT NULL AND m.latency_p99_ms >= m.latency_p50_ms"
	  if $o{latency};
	return qq{
	WITH r AS (
		SELECT count(*) FILTER (WHERE status <> 'initialised') AS processed,
			   count(*) FILTER (WHERE status = 'completed') AS completed,
			   count(*) FILTER (WHERE status = 'declined') AS declined,
			   coalesce(sum(execution_price) FILTER (WHERE status = 'completed'), 0) AS total,
			   max(processed_at) AS last_at
		  FROM ordflow.orders)
	SELECT m.orders_processed = r.processed, m.orders_completed = r.completed,
		   m.orders_declined = r.declined, m.total_execution_amount = r.total,
		   m.avg_execution_price IS NOT DISTINCT FROM
			   CASE WHEN r.completed > 0 THEN r.total / r.completed END,
		   $last
	  FROM ordflow.metrics() m, r};
}

1;
