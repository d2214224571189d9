
# Proves the test harness itself: a private RabbitMQ that really carries
# messages, a node with ordflow preloaded, the extension created, and the
# supervisor worker showing up in ordflow.status().

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;

use PostgreSQL::Test::Utils;
use Test::More;

my $mq = OrdflowTest::start_broker();
ok($mq->is_running, 'broker process is running');
like($mq->url, qr{^amqp://guest:guest\@127\.0\.0\.1:\d+/%2f$}, 'broker URL is loopback');

# The broker carries a message end to end, with its properties.
my $q = 'harness.check';
$mq->declare_queue($q);
is($mq->queue_depth($q), 0, 'rabbitmqctl reports the declared queue, empty');
my $body = qq({"order_id": 1, "note": "it's \\"quoted\\""});
$mq->publish($q, $body, exchange => '', correlation_id => 'corr-1',
	reply_to => 'nowhere', message_id => 'm-1');
is($mq->queue_depth($q), 1, 'rabbitmqctl sees the published message');
my $m = $mq->get_message($q);
ok($m, 'message read back');
is($m->{body},           $body,              'body intact');
is($m->{correlation_id}, 'corr-1',           'correlation_id intact');
is($m->{reply_to},       'nowhere',          'reply_to intact');
is($m->{message_id},     'm-1',              'message_id intact');
is($m->{delivery_mode},  2,                  'persistent');
is($m->{content_type},   'application/json', 'content type');
is($mq->get($q), undef, 'queue is empty after the read');

# amqp-tools (what the README shows an outside producer) reach it too.
my ($out, $err) = ('', '');
ok( IPC::Run::run(
		[ 'amqp-publish', '--url=' . $mq->url, '-e', '', '-r', $q, '-p',
			'-C', 'application/json', '-b', 'via amqp-publish' ],
		'>', \$out, '2>', \$err),
	"amqp-publish works: $err");
($out, $err) = ('', '');
IPC::Run::run([ 'amqp-get', '--url=' . $mq->url, '-q', $q ], '>', \$out, '2>', \$err);
is($out, 'via amqp-publish', 'amqp-get reads it back');

# A node preloading ordflow, pointed at the broker.
my $node = OrdflowTest::new_node('main', broker => $mq);
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'ordflow', 'ordflow is preloaded');
is($node->safe_psql('postgres', q{SELECT setting FROM pg_settings WHERE name = 'ordflow.amqp_url'}),
	$mq->url, 'ordflow.amqp_url points at the private broker');
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
is($node->safe_psql('postgres',
		q{SELECT extversion FROM pg_extension WHERE extname = 'ordflow'}),
	'1.1', 'CREATE EXTENSION ordflow succeeds');

# The supervisor worker appears once the extension exists.
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) > 0 FROM ordflow.status() WHERE worker LIKE '%supervisor%'},
		't', 90),
	'ordflow.status() shows the supervisor');
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type LIKE 'ordflow%'},
		't', 60),
	'ordflow workers appear in pg_stat_activity');

# The extension reaches the private broker: some worker reports a connection.
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) > 0 FROM ordflow.status() WHERE connected},
		't', 60),
	'an ordflow worker is connected to the broker');

# A broker restart keeps its queues (the helpers the fault tests use).
$mq->declare_queue('harness.durable', durable => 1);
$mq->publish('harness.durable', 'survives', exchange => '');
$mq->restart;
ok($mq->is_running, 'broker restarted');
is($mq->get('harness.durable'), 'survives', 'persistent message survived restart');

ok(!$node->log_contains('terminated by signal'), 'no ordflow worker crashed');
$node->stop;
my $beam = $mq->beam_pid;
$mq->stop;
ok(!OrdflowTest::Broker::_alive($beam), 'broker process is gone after stop');

done_testing();
