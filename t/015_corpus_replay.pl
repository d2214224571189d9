
# The fuzzer's corpus (fuzz/corpus: valid, malformed and hostile messages,
# some with NUL bytes or invalid UTF-8) replayed through the real broker
# path.  Pass 1 publishes every file's raw bytes as an order; pass 2 publishes
# every file again as a user event (with reply_to).  Every message must end
# either processed or in ordflow.dead_letters with its exact bytes, nothing
# may be lost or applied twice, and no worker may crash or restart.
#
# Expectations are not hard-coded per file: a message that left no dead
# letter must be valid JSON to an independent parser (JSON::PP) and its
# content must equal the stored order; orders are grouped by order_id, so
# the corpus's repeated ids must be exact duplicates (no-ops) or conflicts
# (dead letters).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/lib";
use OrdflowTest;

use Encode ();
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $corpus_dir = "$FindBin::RealBin/../fuzz/corpus";
opendir(my $dh, $corpus_dir) or BAIL_OUT("cannot open $corpus_dir: $!");
my @files = sort grep { -f "$corpus_dir/$_" } readdir($dh);
closedir($dh);
cmp_ok(scalar(@files), '>=', 50, 'the corpus holds at least 50 inputs');

my @corpus;
for my $f (@files)
{
	open(my $fh, '<:raw', "$corpus_dir/$f") or die "$f: $!";
	local $/;
	my $body = <$fh>;
	$body = '' unless defined $body;
	close($fh);
	push @corpus, { name => $f, body => $body, hex => unpack('H*', $body) };
}

my $mq   = OrdflowTest::start_broker();
my $node = OrdflowTest::new_node('corpus', broker => $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
OrdflowTest::enable_user_events($node);

sub sq { return $node->safe_psql('postgres', $_[0]); }

sub wait_queue_empty
{
	my ($q) = @_;
	for (1 .. 150)
	{
		my $d = $mq->queue_depth($q);
		return 1 if defined $d && $d == 0;
		select(undef, undef, undef, 0.3);
	}
	diag "queue $q still holds " . ($mq->queue_depth($q) // 'undef') . ' messages';
	return 0;
}

# strict: invalid UTF-8, lone surrogates, NaN, trailing garbage all refused
my $json = JSON::PP->new->utf8->allow_nonref->allow_bignum;

sub decode_or_undef
{
	my ($bytes) = @_;
	my $d = eval { $json->decode($bytes) };
	return $@ ? undef : $d;
}

ok( OrdflowTest::wait_for($node,
		q{SELECT count(*) = 1 FROM ordflow.status() WHERE worker = 'consumer 0' AND connected},
		't', 90),
	'consumer 0 is connected');

my $utf8_db = sq('SHOW server_encoding') eq 'UTF8';

# uids 1..9 exist, so the corpus's uids (7, 9, ...) meet real credit checks:
# uid 7 can pay, uid 9 cannot pay 99.5; uid 8's lname has a quote (event_d).
for my $i (1 .. 9)
{
	my ($lname, $limit) = ("L$i", 100);
	$limit = 1000 if $i == 7;
	$limit = 50   if $i == 9;
	$lname = q{O''Brien} if $i == 8;
	is(sq("SELECT ordflow.create_user('U$i', '$lname', $limit)"), $i, "user $i created");
}

my $pids_sql = q{SELECT string_agg(worker || '=' || pid, ',' ORDER BY worker) FROM ordflow.status()};
my $pids_before = sq($pids_sql);
like($pids_before, qr/consumer 0=\d+/, "worker pids recorded: $pids_before");

# A number JSON::PP gave us, as SQL text (or undef if it is not a number).
sub sql_num
{
	my ($v) = @_;
	return undef if !defined $v || (ref $v && ref($v) !~ /^Math::Big/);
	my $s = "$v";
	return $s =~ /^-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$/ ? $s : undef;
}

# SQL predicate: does ordflow.orders row o say what message $d says?
sub content_matches_sql
{
	my ($d) = @_;
	my @p;
	for my $col ([ 'uid', 'bigint' ], [ 'quantity', 'int' ], [ 'amount', 'numeric' ])
	{
		my ($c, $t) = @$col;
		my $v = $d->{$c};
		if (!defined $v) { push @p, "o.$c IS NULL"; next; }
		my $n = sql_num($v);
		return 'false' unless defined $n;
		push @p, "o.$c = '$n'::$t";
	}
	my $s = $d->{symbol};
	if (!defined $s) { push @p, 'o.symbol IS NULL'; }
	elsif (ref $s) { return 'false'; }
	else
	{
		my $b = $s;
		utf8::encode($b);
		push @p, "o.symbol = convert_from(decode('" . unpack('H*', $b) . "', 'hex'), 'UTF8')";
	}
	return join(' AND ', @p);
}

# ---------------------------------------------------------------------------
# Pass 1: every file as an order.  One publish per file (raw bytes on the
# client's stdin), each confirmed before the next, so delivery order is
# file order; then a sentinel outside the corpus's ids.

my $sentinel_id = 987650001;
for my $c (@corpus)
{
	$mq->publish('order.created', $c->{body});
}
$mq->publish('order.created', qq({"order_id": $sentinel_id, "symbol": "END", "quantity": 1}));
ok( OrdflowTest::wait_for($node,
		"SELECT status FROM ordflow.orders WHERE order_id = $sentinel_id", 'completed', 120),
	'sentinel after the corpus is processed');
ok(wait_queue_empty('ordflow.orders'), 'pass 1: the orders queue drains to 0');

# dead letters of pass 1, keyed by raw body
my %dead;
for my $line (split /\n/, sq(q{SELECT encode(body, 'hex') || ' ' || coalesce(routing_key, '-') || ' '
		|| (body_text IS NULL)::text || ' ' || encode(convert_to(error, 'UTF8'), 'hex')
		|| ' ' || coalesce((convert_to(body_text, 'UTF8') = body)::text, 'null')
		FROM ordflow.dead_letters WHERE queue = 'ordflow.orders' ORDER BY id}))
{
	my ($hex, $rk, $text_null, $err_hex, $text_same) = split / /, $line;
	push @{ $dead{$hex} }, { rk => $rk, text_null => $text_null,
		error => pack('H*', $err_hex), text_same => $text_same };
}
# (an empty body's hex is '': split / / keeps that leading empty field)
my %known = map { $_->{hex} => 1 } @corpus;
my @stray = grep { !$known{$_} } keys %dead;
is(scalar(@stray), 0, 'every order dead letter is the body of a corpus file')
  or diag explain \@stray;

my (%processed, $n_dead, $n_proc);
$n_dead = $n_proc = 0;
for my $c (@corpus)
{
	my $name = $c->{name};
	my $dl = $dead{ $c->{hex} } || [];
	cmp_ok(scalar(@$dl), '<=', 1, "$name: at most one dead letter");
	if (@$dl)
	{
		$n_dead++;
		my $d = $dl->[0];
		is($d->{rk}, 'order.created', "$name: dead letter keeps the routing key");
		like($d->{error}, qr/\S/, "$name: dead letter has a reason ($d->{error})");
		# strict UTF-8 (Perl's utf8::decode lets surrogates and > U+10FFFF through)
		my $valid_text = $utf8_db && $c->{body} !~ /\0/
		  && defined eval { Encode::decode('UTF-8', my $copy = $c->{body}, Encode::FB_CROAK) };
		if ($valid_text)
		{
			is($d->{text_same}, 'true', "$name: body_text equals the body");
		}
		else
		{
			is($d->{text_null}, 'true', "$name: body_text is null for a body that is not text");
		}
		$c->{dead_error} = $d->{error};
		next;
	}
	# no dead letter: it must have been an order (processed or a no-op copy)
	$n_proc++;
	ok($name !~ /^bad_/, "$name: a bad_ input is not accepted");
	my $d = decode_or_undef($c->{body});
	ok(ref $d eq 'HASH', "$name: accepted input is a JSON object to JSON::PP")
	  or next;
	my $id = sql_num($d->{order_id});
	ok(defined $id && $id =~ /^[0-9]+$/ && $id >= 1, "$name: accepted input has an integer order_id")
	  or next;
	push @{ $processed{$id} }, { name => $name, d => $d };
}
is($n_dead + $n_proc, scalar(@corpus), 'pass 1: each file is dead-lettered or an order');
diag "pass 1: $n_dead dead letters, $n_proc accepted, " . scalar(keys %processed) . ' distinct order ids';
cmp_ok(scalar(keys %processed), '>=', 5, 'pass 1: the corpus has valid orders too');
cmp_ok($n_dead, '>=', 50, 'pass 1: and many malformed ones');

# Each accepted order_id has one processed row whose content equals every
# accepted message with that id (a different content must have been a
# conflict dead letter, not silently dropped).
for my $id (sort { $a <=> $b } keys %processed)
{
	is(sq("SELECT status::text IN ('completed', 'declined') AND source = 'broker'"
			. " FROM ordflow.orders WHERE order_id = $id"),
		't', "order $id is processed (from " . join(', ', map { $_->{name} } @{ $processed{$id} }) . ')');
	for my $m (@{ $processed{$id} })
	{
		is(sq('SELECT ' . content_matches_sql($m->{d}) . " FROM ordflow.orders o WHERE order_id = $id"),
			't', "order $id holds what $m->{name} says");
	}
}
is(sq("SELECT count(*) FROM ordflow.orders WHERE order_id <> $sentinel_id"),
	scalar(keys %processed), 'no order row beyond the accepted order ids');

# A conflict dead letter really conflicts with the stored row.
for my $c (grep { defined $_->{dead_error} && $_->{dead_error} =~ /already exists with different content/ } @corpus)
{
	my $d = decode_or_undef($c->{body});
	my $id = ref $d eq 'HASH' ? sql_num($d->{order_id}) : undef;
	ok(defined $id && $processed{$id}, "$c->{name}: its conflict is with an accepted order") or next;
	is(sq('SELECT ' . content_matches_sql($d) . " FROM ordflow.orders o WHERE order_id = $id"),
		'f', "$c->{name}: its content differs from order $id");
}

# Whatever JSON::PP refuses (invalid JSON or UTF-8, NaN, ...) is dead.
for my $c (@corpus)
{
	next if defined decode_or_undef($c->{body});
	ok(defined $c->{dead_error}, "$c->{name}: invalid JSON is a dead letter");
}

# Processing rules and bookkeeping for what was accepted.
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE (SELECT count(*) FROM ordflow.order_events e WHERE e.order_id = o.order_id) <> 2
			OR NOT EXISTS (SELECT 1 FROM ordflow.order_events e
							WHERE e.order_id = o.order_id AND e.status = 'initialised')
			OR NOT EXISTS (SELECT 1 FROM ordflow.order_events e
							WHERE e.order_id = o.order_id AND e.status = o.status)}),
	'0', 'every order has exactly its initialised and its final event');
is(sq(q{SELECT count(*) FROM ordflow.orders o
		 WHERE NOT CASE
			WHEN o.uid IS NULL THEN o.status = 'completed'
			WHEN NOT EXISTS (SELECT 1 FROM ordflow.users u WHERE u.uid = o.uid)
				THEN o.status = 'declined' AND o.notes = 'unknown user'
			ELSE o.status = 'completed'
				OR (o.status = 'declined' AND o.notes = 'insufficient balance')
			END
			OR (o.status = 'declined') <> (o.execution_price IS NULL)
			OR (o.status = 'completed' AND o.amount IS NOT NULL AND o.execution_price <> o.amount)}),
	'0', 'statuses, notes and prices follow the processing rules');
is(sq(q{SELECT count(*) FROM ordflow.users u
		 WHERE u.credit_balance <> u.credit_limit - coalesce((SELECT sum(execution_price)
				FROM ordflow.orders o WHERE o.uid = u.uid AND o.status = 'completed'), 0)
			OR u.credit_balance < 0}),
	'0', 'every balance equals limit minus completed prices, none negative');
is(sq(q{SELECT m.orders_processed = r.p AND m.orders_completed = r.c AND m.orders_declined = r.d
		   AND m.total_execution_amount = r.t
		 FROM ordflow.metrics() m,
			  (SELECT count(*) FILTER (WHERE status <> 'initialised') p,
					  count(*) FILTER (WHERE status = 'completed') c,
					  count(*) FILTER (WHERE status = 'declined') d,
					  coalesce(sum(execution_price) FILTER (WHERE status = 'completed'), 0) t
				 FROM ordflow.orders) r}),
	't', 'metrics() equals a recompute after pass 1');

# ---------------------------------------------------------------------------
# Pass 2: every file again as a user event, with reply_to.  The key follows
# the event's own "type" when it has one (and, for well-typed events, once
# more with a wrong type in the key); otherwise C, R, U, D in turn.

my $reply_q = 'corpus.replies';
$mq->declare_queue($reply_q);
my @crud = qw(C R U D);
my %sent;    # correlation id => { c, key }
my $i = 0;
my $users_before = sq('SELECT count(*) FROM ordflow.users');
for my $c (@corpus)
{
	my $d = decode_or_undef($c->{body});
	my $t = (ref $d eq 'HASH' && defined $d->{type} && !ref $d->{type} && length($d->{type}) == 1)
	  ? uc($d->{type}) : $crud[ $i % 4 ];
	my @pubs = ([ "ev-$i", "user.$t" ]);
	if (ref $d eq 'HASH' && defined $d->{type} && !ref $d->{type} && $d->{type} =~ /^[CRUD]$/)
	{
		my ($pos) = grep { $crud[$_] eq $d->{type} } 0 .. 3;
		push @pubs, [ "mm-$i", 'user.' . $crud[ ($pos + 1) % 4 ] ];
	}
	for my $p (@pubs)
	{
		$mq->publish($p->[1], $c->{body}, reply_to => $reply_q, correlation_id => $p->[0]);
		$sent{ $p->[0] } = { c => $c, key => $p->[1] };
	}
	$i++;
}
ok(wait_queue_empty('ordflow.user_events'), 'pass 2: the user-events queue drains to 0');

my %reply;
my $deadline = time + 60;
while (keys(%reply) < keys(%sent) && time < $deadline)
{
	for my $m ($mq->get_messages($reply_q, count => scalar(keys %sent) - scalar(keys %reply), wait => 2))
	{
		my $cid = $m->{correlation_id} // '';
		ok(!exists $reply{$cid}, "one reply for $cid");
		$reply{$cid} = $m->{body};
	}
}
is(scalar(keys %reply), scalar(keys %sent), 'pass 2: every user event got a reply');
is(scalar(grep { !$sent{$_} } keys %reply), 0, 'pass 2: every reply answers a message we sent');

my %udead;
for my $line (split /\n/, sq(q{SELECT encode(body, 'hex') || ' ' || routing_key
		FROM ordflow.dead_letters WHERE queue = 'ordflow.user_events'}))
{
	my ($hex, $rk) = split / /, $line;
	$udead{"$hex $rk"}++;
}
my ($n_err, $created, $deleted) = (0, 0, 0);
my @created_uids;
for my $cid (sort keys %sent)
{
	my $s = $sent{$cid};
	my $name = "$s->{c}{name} on $s->{key}";
	my $r = defined $reply{$cid} ? decode_or_undef($reply{$cid}) : undef;
	ok(ref $r eq 'HASH', "$name: the reply is a JSON object") or next;
	my $ndl = $udead{"$s->{c}{hex} $s->{key}"} // 0;
	if (exists $r->{error})
	{
		$n_err++;
		is($ndl, 1, "$name: refused ($r->{error}) and dead-lettered once");
		like($r->{sqlstate} // '', qr/^[0-9A-Z]{5}$/, "$name: the error reply has a SQLSTATE");
		next;
	}
	is($ndl, 0, "$name: applied, not dead-lettered");
	ok($cid =~ /^ev-/, "$name: a key that contradicts the type is never applied");
	my $d = decode_or_undef($s->{c}{body});
	is(ref $d eq 'HASH' ? $d->{type} : undef, substr($s->{key}, 5), "$name: the applied event has that type");
	is($r->{type}, substr($s->{key}, 5), "$name: the reply names the type");
	if ($r->{type} eq 'C')
	{
		$created++;
		push @created_uids, $r->{uid};
	}
	$deleted += $r->{deleted} if $r->{type} eq 'D';
	if ($r->{type} eq 'U')
	{
		my $cond = $json->encode({ %{ $d->{condition} }, %{ $d->{new_val} } });
		$cond =~ s/'/''/g;
		cmp_ok(sq("SELECT count(*) FROM ordflow.read_users('$cond')"), '>=', $r->{updated},
			"$name: the updated users hold the new values");
	}
}
is(sq(q{SELECT count(*) FROM ordflow.dead_letters WHERE queue = 'ordflow.user_events'}), $n_err,
	'pass 2: one dead letter per refused event, none for applied ones');
is(sq('SELECT count(*) FROM ordflow.users'), $users_before + $created - $deleted,
	"pass 2: users changed only by applied events ($created created, $deleted deleted)");
for my $uid (@created_uids)
{
	is(sq("SELECT count(*) FROM ordflow.users WHERE uid = $uid"), 1, "created user $uid exists");
}
cmp_ok($n_err, '<', scalar(keys %sent), 'pass 2: some events were valid');
is(sq(q{SELECT count(*) FROM ordflow.users WHERE credit_balance < 0 OR credit_balance > credit_limit}),
	'0', 'no balance outside 0..limit after the events');

# ---------------------------------------------------------------------------
# Pass 3: the extreme values place_order() accepts must make it through the
# relay and the consumer's parser too (a committed order that the consumer
# dead-letters would stay 'initialised' for ever).

my $dead_before = sq('SELECT count(*) FROM ordflow.dead_letters');
my $placed = sq(q{SELECT string_agg(id::text, ',') FROM (VALUES
	(ordflow.place_order(amount => 999999999999999.12345678901234567890123456789012345678901234567)),
	(ordflow.place_order(amount => 0.000000000000000000000000000000000000000000000000000000000001)),
	(ordflow.place_order(amount => 1e15, symbol => repeat(U&'\+01F600', 12))),
	(ordflow.place_order(quantity => 2147483647, symbol => E'"\\\n\t\x01''')),
	(ordflow.place_order(uid => '-9223372036854775808', amount => 1)),
	(ordflow.place_order(uid => 9223372036854775807, quantity => 1, amount => 5.000))) AS v(id)});
my @placed = split /,/, $placed;
is(scalar(@placed), 6, 'six extreme orders placed');
ok( OrdflowTest::wait_for($node,
		"SELECT count(*) FROM ordflow.orders WHERE order_id IN ($placed) AND status <> 'initialised'",
		'6', 60),
	'every extreme order placed through SQL is processed');
is(sq("SELECT string_agg(status::text || coalesce(':' || notes, ''), ',' ORDER BY order_id)"
		. " FROM ordflow.orders WHERE order_id IN ($placed)"),
	'completed,completed,completed,completed,declined:unknown user,declined:unknown user',
	'their statuses follow the processing rules');
is(sq('SELECT count(*) FROM ordflow.dead_letters'), $dead_before, 'none of them was dead-lettered');
ok(OrdflowTest::wait_for($node, 'SELECT count(*) FROM ordflow.outbox', '0', 30), 'the outbox is empty');

# ---------------------------------------------------------------------------
# Nobody crashed, nothing is stuck.

is(sq($pids_sql), $pids_before, 'no worker restarted (same pids)');
ok( OrdflowTest::wait_for($node,
		q{SELECT connected FROM ordflow.status() WHERE worker = 'consumer 0'}, 't', 30),
	'consumer 0 still connected');
is($mq->queue_depth('ordflow.orders'), 0, 'orders queue empty');
is($mq->queue_depth('ordflow.user_events'), 0, 'user-events queue empty');
is($mq->queue_depth('ordflow.dead'), 0, 'nothing was rejected to the broker\'s dead-letter queue');
is(sq("SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'"), '0', 'no order left unprocessed');
ok(!$node->log_contains('terminated by signal'), 'no process terminated by a signal');
ok(!$node->log_contains('PANIC'), 'no PANIC in the server log');

$node->stop;
$mq->stop;
done_testing();
