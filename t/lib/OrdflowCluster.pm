
# OrdflowCluster: an N-node RabbitMQ cluster on loopback for ordflow's TAP
# tests.
#
#   use OrdflowCluster;
#   my $cl = OrdflowCluster::start(3);      # quorum queues need 3 nodes
#   my $url = $cl->url_list;                # amqp://...node1,amqp://...node2,...
#   my $b = $cl->broker_at_port($port);     # an OrdflowTest::Broker
#   $b->kill9; ... $b->restart;
#   $cl->stop;
#
# Each node is an OrdflowTest broker (own ports, data dir and HOME) with
# two changes: every HOME holds the same .erlang.cookie, and every node
# registers with the first node's epmd, so the nodes (and rabbitmqctl) find
# each other.  Nodes 2..N join node 1 with `rabbitmqctl join_cluster`.
# Forming a 3-node cluster takes some 25 s on a quiet machine.

package OrdflowCluster;

use strict;
use warnings;

use Carp;
use IPC::Run;
use Test::More;
use Time::HiRes qw(usleep time);

use OrdflowTest;

our $VERSION = '1.1';

my @live;

=pod

=item OrdflowCluster::start($n, %opts)

Starts $n RabbitMQ nodes (default 3) and clusters them; returns the
cluster once `cluster_status` on node 1 shows all of them running.
%opts go to OrdflowTest::start_broker for every node (extra, timeout).

=cut

sub start
{
	my ($n, %opts) = @_;
	$n ||= 3;
	my $cookie = 'ORDFLOWTEST' . join('', map { ('A' .. 'Z')[ int(rand(26)) ] } 1 .. 20);
	my $t0 = time;
	my $first = OrdflowTest::start_broker(%opts, cookie => $cookie, shared_epmd => 1);
	my @nodes = ($first);
	for my $i (2 .. $n)
	{
		push @nodes, OrdflowTest::start_broker(%opts, cookie => $cookie, shared_epmd => 1,
			epmd_port => $first->{epmd_port});
	}
	my $self = bless { nodes => \@nodes, epmd_port => $first->{epmd_port}, owner_pid => $$ },
	  'OrdflowCluster';
	push @live, $self;
	for my $b (@nodes[ 1 .. $#nodes ])
	{
		$b->ctl('stop_app');
		$b->ctl('join_cluster', $first->node_name);
		$b->ctl('start_app');
	}
	$first->ctl('await_online_nodes', $n, '--timeout', 120);
	my $status = $first->ctl('cluster_status', '--formatter', 'json');
	my @running = $status =~ /"running_nodes"\s*:\s*\[([^\]]*)\]/ ? split(/,/, $1) : ();
	croak "cluster did not form: $status" unless @running == $n;
	note sprintf('RabbitMQ cluster of %d nodes formed in %.1f s', $n, time - $t0);
	return $self;
}

sub nodes { @{ $_[0]{nodes} } }
sub node  { $_[0]{nodes}[ $_[1] ] }

# the URL list of every node, in node order
sub url_list
{
	my ($self) = @_;
	return join(',', map { $_->url } $self->nodes);
}

# the node whose AMQP port is $port ("127.0.0.1:5672" works too)
sub broker_at_port
{
	my ($self, $port) = @_;
	$port = $1 if defined $port && $port =~ /:(\d+)$/;
	for my $b ($self->nodes)
	{
		return $b if defined $port && $b->port == $port;
	}
	return undef;
}

# the node whose Erlang name is $name (e.g. a quorum queue's leader)
sub broker_named
{
	my ($self, $name) = @_;
	for my $b ($self->nodes)
	{
		return $b if $b->node_name eq $name;
	}
	return undef;
}

# any running node, for rabbitmqctl calls
sub running_node
{
	my ($self) = @_;
	for my $b ($self->nodes)
	{
		return $b if $b->is_running;
	}
	croak 'no node of the cluster is running';
}

# queue name => { type, leader } as a running node sees them
sub queue_info
{
	my ($self) = @_;
	my $out = $self->running_node->ctl('list_queues', '-q', '--no-table-headers',
		'name', 'type', 'leader');
	my %q;
	for my $line (split /\n/, $out)
	{
		my ($name, $type, $leader) = split /\t/, $line;
		next unless defined $type;
		$q{$name} = { type => $type, leader => $leader };
	}
	return \%q;
}

# stop every node, then the shared epmd; safe to call twice
sub stop
{
	my ($self) = @_;
	return if $self->{stopped} || $self->{owner_pid} != $$;
	$_->stop for reverse $self->nodes;
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

END
{
	local $?;
	$_->stop for grep { $_ && ref $_ } @live;
	@live = ();
}

1;
