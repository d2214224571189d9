
# The smaller holes of issue 8, on one broker and one node:
#  1. routing key, message_id, correlation_id and reply_to that are not valid
#     UTF-8 are stored escaped (\xNN): COPY, pg_dump and a restore of the
#     dead letters work (1.0 stored the raw bytes);
#  2. created_at 10 minutes ahead or in year 9999 is refused as "future"
#     (1.0 accepted it and pinned retention);
#  3. one order dated 0001-01-01 among 200 normal ones: processed, metrics()
#     works, p50/p99 stay normal (1.0: p99 of 37,715,228 ms);
#  4. outside orders that take ids of ordflow's sequence never pause the
#     generator (1.0 counted orders it never inserted and paused for good);
#  5. ordflow.dead_letter_retention: old dead letters are deleted by the
#     supervisor, recent ones kept (1.0 kept everything for ever);
#  6. status().last_error shows no host or port to a role without
#     pg_read_all_settings, while a superuser sees them (1.0 showed them to
#     any role).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;
use OrdflowHostile;

use Encode ();
use IPC::Run;
use POSIX qw(strftime);
use PostgreSQL::Test::Utils;
use Socket;
use Test::More;
use Time::HiRes qw(time usleep);

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('holes', broker => $mq);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq('CREATE EXTENSION ordflow');
sq(q{INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance)
	 SELECT 'U' || g, 'L' || g, 1e9, 1e9 FROM generate_series(1, 5) g});
ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) FILTER (WHERE connected) = 2 FROM ordflow.status()
		   WHERE worker IN ('relay', 'consumer 0')}, 't', 90),
	'relay and consumer 0 connected');
my $dlt = OrdflowHostile::dl_table($node);

sub valid_utf8
{
	my ($bytes) = @_;
	my $copy = $bytes;
	return eval { Encode::decode('UTF-8', $copy, Encode::FB_CROAK); 1 } ? 1 : 0;
}

# --- 1. metadata that is not UTF-8 ----------------------------------------
{
	my $label = 'non-UTF-8 metadata';
	OrdflowHostile::publish($mq, "order.\xff\xfe", 'not json: bad-meta-1',
		message_id => "m\xc3\x28", correlation_id => "c\xff", reply_to => "r\x80q");
	OrdflowHostile::publish($mq, 'order.created', 'not json: bad-meta-2',
		message_id => "tab\tand\x01ctl");
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.dead_letters WHERE body::text LIKE '%6261642d6d6574612d%'},
			'2', 60),
		"$label: both messages are dead letters");
	my $row = sq(q{SELECT routing_key || '|' || message_id || '|' || correlation_id || '|'
						  || coalesce(to_jsonb(d) ->> 'reply_to', '')
					 FROM ordflow.dead_letters d WHERE body = 'not json: bad-meta-1'::bytea});
	# convert_to() checks the encoding (a raw 0xff in a text column fails)
	my ($cret, $cout, $cerr) = $node->psql('postgres',
		q{SELECT encode(convert_to(routing_key || message_id || correlation_id, 'UTF8'), 'hex')
			FROM ordflow.dead_letters WHERE body = 'not json: bad-meta-1'::bytea});
	is($cret, 0, "$label: the stored text columns are valid in the database encoding") or diag $cerr;
	ok(valid_utf8($row), "$label: the stored metadata is valid UTF-8");
	is($row, 'order.\xff\xfe|m\xc3(|c\xff|r\x80q', "$label: each offending byte is stored as \\xNN");
	is(sq(q{SELECT message_id FROM ordflow.dead_letters WHERE body = 'not json: bad-meta-2'::bytea}),
		'tab\x09and\x01ctl', "$label: control characters are escaped too");

	my ($ret, $out, $err) = $node->psql('postgres', "COPY $dlt TO STDOUT");
	is($ret, 0, "$label: COPY $dlt TO STDOUT succeeds") or diag $err;
	ok(valid_utf8($out), "$label: and writes valid UTF-8");

	my ($dump, $derr) = ('', '');
	my $ok = IPC::Run::run([ 'pg_dump', '-a', '-t', $dlt, '-d', $node->connstr('postgres') ],
		'>', \$dump, '2>', \$derr);
	ok($ok, "$label: pg_dump -a -t $dlt succeeds") or diag $derr;
	ok(valid_utf8($dump), "$label: the dump is valid UTF-8");
	like($dump, qr/bad-meta-1|6261642d6d6574612d31/, "$label: the dump holds the dead letters");

	# the dump restores (into the emptied table: the extension lives in
	# ordflow.database only)
	my $before = sq("SELECT count(*) FROM $dlt");
	sq("DELETE FROM $dlt");
	my ($rout, $rerr) = ('', '');
	$ok = IPC::Run::run([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$dump, '>', \$rout, '2>', \$rerr);
	ok($ok, "$label: the dump restores") or diag $rerr;
	is(sq("SELECT count(*) FROM $dlt"), $before, "$label: every dead letter is back");
	is(sq(q{SELECT count(*) FROM ordflow.dead_letters WHERE routing_key = 'order.\xff\xfe'}),
		'1', "$label: the restored row reads back the same");
}

# --- 2. created_at in the future --------------------------------------------
{
	my $label = 'future created_at';
	my $soon = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time + 600));
	$mq->publish('order.created', qq({"order_id": 8100001, "uid": 1, "amount": 5, "created_at": "$soon"}));
	$mq->publish('order.created', q({"order_id": 8100002, "uid": 1, "amount": 5, "created_at": "9999-12-31T00:00:00Z"}));
	$mq->publish('order.created', q({"order_id": 8100003, "uid": 1, "amount": 5}));
	ok(OrdflowTest::wait_for($node, q{SELECT status FROM ordflow.orders WHERE order_id = 8100003}, 'completed', 60),
		"$label: a normal order behind them is processed");
	for my $id (8100001, 8100002)
	{
		is( sq(qq{SELECT count(*) FROM ordflow.dead_letters
				   WHERE body_text LIKE '%$id%' AND error LIKE '%created_at%' AND error LIKE '%future%'}),
			'1', "$label: order $id is a dead letter saying created_at is in the future");
		is(sq("SELECT count(*) FROM ordflow.orders WHERE order_id = $id"), '0', "$label: order $id not inserted");
	}
}

# --- 3. an order dated 0001-01-01 ------------------------------------------
{
	my $label = 'ancient created_at';
	my $old = sub { sprintf('{"order_id": %d, "uid": null, "quantity": 1, "symbol": "OLD"%s}', @_) };
	my @bodies = map { $old->(8200000 + $_, '') } 1 .. 100;
	push @bodies, $old->(8200101, ', "created_at": "0001-01-01T00:00:00Z"');
	push @bodies, map { $old->(8200101 + $_, '') } 1 .. 100;
	$mq->publish_many('order.created', \@bodies);
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.orders WHERE symbol = 'OLD' AND status = 'completed'}, '201', 90),
		"$label: all 201 orders are processed, the ancient one included");
	my ($ret, $out, $err) = $node->psql('postgres',
		'SELECT latency_p50_ms, latency_p99_ms FROM ordflow.metrics()');
	is($ret, 0, "$label: metrics() works") or diag $err;
	my ($p50, $p99) = split /\|/, $out // '';
	note "$label: p50 $p50 ms, p99 $p99 ms";
	cmp_ok($p50 // 1e18, '<', 600_000, "$label: p50 stays normal (under 10 minutes)");
	cmp_ok($p99 // 1e18, '<', 600_000, "$label: p99 stays normal (one outlier in 201 orders)");
	is(sq(OrdflowTest::metrics_recompute_sql()), 't|t|t|t|t|t', "$label: metrics match the orders");
}

# --- 4. outside orders taking ids of ordflow's sequence -----------------------
{
	my $label = 'generator back-pressure';
	my $s = sq(q{SELECT nextval('ordflow.order_id_seq')});
	my $taken = 200;
	$mq->publish_many('order.created',
		[ map { sprintf('{"order_id": %d, "uid": null, "quantity": 1, "symbol": "TAKEN"}', $s + $_) } 1 .. $taken ]);
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.orders WHERE symbol = 'TAKEN' AND status = 'completed'}, $taken, 90),
		"$label: $taken outside orders took the next ids of the sequence");
	OrdflowHostile::set_conf($node, 'ordflow.generator_max_backlog' => '50');
	sq('SELECT ordflow.start(50)');
	ok( OrdflowTest::wait_for($node,
			qq{SELECT count(*) >= 150 FROM ordflow.orders WHERE source = 'generator' AND order_id > $s + $taken},
			't', 180),
		"$label: the generator keeps generating past the taken ids")
	  or diag sq(q{SELECT worker || ' ' || state || ' ' || processed FROM ordflow.status() WHERE worker = 'generator'});
	my $p0 = sq(q{SELECT processed FROM ordflow.status() WHERE worker = 'generator'});
	ok( OrdflowTest::wait_for($node,
			qq{SELECT processed >= $p0 + 50 FROM ordflow.status() WHERE worker = 'generator'}, 't', 120),
		"$label: status().processed of the generator keeps growing");
	sq('SELECT ordflow.stop()');
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'}, '0', 90),
		"$label: the generated orders are processed");
	is( sq(qq{SELECT count(*) FROM ordflow.orders WHERE order_id BETWEEN $s + 1 AND $s + $taken AND symbol <> 'TAKEN'}),
		'0', "$label: no taken id was overwritten");
}

# --- 5. dead letter retention ------------------------------------------------
{
	my $label = 'dead_letter_retention';
	$mq->publish_many('order.created', [ 'retention-old-1', 'retention-old-2', 'retention-new-1' ]);
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.dead_letters WHERE body::text LIKE '%726574656e74696f6e2d%'}, '3', 60),
		"$label: three dead letters");
	sq(qq{UPDATE $dlt SET received_at = now() - interval '2 hours'
		   WHERE body IN ('retention-old-1'::bytea, 'retention-old-2'::bytea)});
	OrdflowHostile::set_conf($node, 'ordflow.dead_letter_retention' => '1h');
	ok( OrdflowTest::wait_for($node,
			q{SELECT count(*) FROM ordflow.dead_letters WHERE body IN ('retention-old-1'::bytea, 'retention-old-2'::bytea)},
			'0', 180),
		"$label: dead letters older than the retention are deleted by the supervisor");
	is(sq(q{SELECT count(*) FROM ordflow.dead_letters WHERE body = 'retention-new-1'::bytea}), '1',
		"$label: a recent one is kept");
	is(sq(q{SELECT count(*) FROM ordflow.dead_letters WHERE body = 'not json: bad-meta-1'::bytea}), '1',
		"$label: and so are the earlier ones");
}

# --- 6. last_error for a role without pg_read_all_settings -----------------
{
	my $label = 'last_error';
	sq(q{CREATE ROLE monitor LOGIN;
		 GRANT USAGE ON SCHEMA ordflow TO monitor;
		 GRANT EXECUTE ON FUNCTION ordflow.status() TO monitor});
	socket(my $sock, PF_INET, SOCK_STREAM, getprotobyname('tcp')) or die "socket: $!";
	bind($sock, sockaddr_in(0, inet_aton('127.0.0.1'))) or die "bind: $!";
	my ($port) = sockaddr_in(getsockname($sock));
	close($sock);    # nothing listens there now
	OrdflowHostile::set_conf($node, 'ordflow.amqp_url' => "amqp://guest:guest\@127.0.0.1:$port/%2f");
	ok( OrdflowTest::wait_for($node,
			qq{SELECT NOT connected AND last_error LIKE '%$port%' FROM ordflow.status() WHERE worker = 'consumer 0'},
			't', 120),
		"$label: a superuser sees the port in the consumer's last_error")
	  or diag sq(q{SELECT last_error FROM ordflow.status() WHERE worker = 'consumer 0'});
	my ($ret, $out, $err) = $node->psql('postgres',
		q{SELECT coalesce(last_error, '<null>') || '|' || coalesce(to_jsonb(s) ->> 'node', '<null>')
			FROM ordflow.status() s WHERE worker = 'consumer 0'},
		extra_params => [ '-U', 'monitor' ]);
	is($ret, 0, "$label: the monitor role can call status()") or diag $err;
	my ($le, $nd) = split /\|/, $out // '', 2;
	note "$label: monitor sees: $out";
	ok(defined $le && $le ne '<null>' && $le ne '', "$label: the monitor sees that there is an error");
	unlike($le // '', qr/\Q$port\E/, "$label: but not the port");
	unlike($le // '', qr/127\.0\.0\.1|localhost/, "$label: nor the host");
	is($nd, '<null>', "$label: and no node");
	OrdflowHostile::set_conf($node, 'ordflow.amqp_url' => $mq->url);
	ok( OrdflowTest::wait_for($node,
			q{SELECT connected FROM ordflow.status() WHERE worker = 'consumer 0'}, 't', 120),
		"$label: the consumer reconnects to the broker");
}

OrdflowHostile::server_alive($node, 'at the end');

$node->stop;
$mq->stop;
done_testing();
