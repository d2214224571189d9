
# OrdflowInvariants: what must hold after any fault, once the pipeline has
# drained (SPEC "Guarantees"), plus the set-up the fault tests share.
#
#   use OrdflowInvariants;
#   my ($mq, $node) = OrdflowInvariants::setup('outage');
#   $node->safe_psql('postgres', 'SELECT ordflow.start(300)');
#   ... fault ...
#   OrdflowInvariants::stop_and_drain($node);
#   OrdflowInvariants::check($node, 'after the outage');
#   OrdflowInvariants::workers_stable($node, 'after the outage');
#
# Every check is an ordinary Test::More assertion that reports the
# offending counts (or rows) when it fails.

package OrdflowInvariants;

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

use OrdflowTest;

our $VERSION = '1.0';

# Users with limits from 300 to 3000: at a few hundred orders/s for tens of
# seconds some run dry, so both completed and declined orders occur.
sub create_users
{
	my ($node, $n) = @_;
	$n ||= 10;
	$node->safe_psql('postgres', qq{
		SELECT ordflow.create_user('user' || g, 'fault' || g, (300 * g)::numeric)
		  FROM generate_series(1, $n) AS g});
	return $n;
}

# A broker (unless given), a node preloading ordflow pointed at it, the
# extension, users, and every worker up and connected.
sub setup
{
	my ($name, %o) = @_;
	my $mq = $o{broker} || OrdflowTest::start_broker(%{ $o{broker_opts} || {} });
	my $node = OrdflowTest::new_node($name, broker => $mq,
		consumers => $o{consumers} // 1, extra => $o{extra});
	$node->safe_psql('postgres', 'CREATE EXTENSION ordflow');
	create_users($node, $o{users});
	ok(wait_connected($node, $o{consumers} // 1, 90),
		"$name: relay and consumers connected to the broker");
	return ($mq, $node);
}

# True once status() shows the relay and every consumer connected.
sub wait_connected
{
	my ($node, $consumers, $timeout) = @_;
	$consumers //= 1;
	return OrdflowTest::wait_for($node, qq{
		SELECT count(*) FILTER (WHERE connected) = 1 + $consumers
		  FROM ordflow.status()
		 WHERE worker = 'relay' OR worker LIKE 'consumer %'}, 't', $timeout || 90);
}

sub scalar_sql
{
	my ($node, $sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# Orders, outbox rows, processed orders: one line, for notes and diags.
sub counts
{
	my ($node) = @_;
	return scalar_sql($node, q{
		SELECT format('orders=%s initialised=%s outbox=%s processed=%s',
			(SELECT count(*) FROM ordflow.orders),
			(SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'),
			(SELECT count(*) FROM ordflow.outbox),
			(SELECT orders_processed FROM ordflow.metrics()))});
}

# ordflow.stop(), then wait until the generator made its last order and
# the relay and consumers have processed everything.
sub stop_and_drain
{
	my ($node, %o) = @_;
	my $timeout = $o{timeout} || 120;
	$node->safe_psql('postgres', 'SELECT ordflow.stop()');
	my $drained_sql = q{
		SELECT (SELECT count(*) FROM ordflow.outbox) = 0
		   AND NOT EXISTS (SELECT 1 FROM ordflow.orders WHERE status = 'initialised')};
	my $ok = OrdflowTest::wait_for($node, $drained_sql, 't', $timeout);
	# The generator may commit one more batch just after stop(): look again
	# once it surely has.
	if ($ok)
	{
		sleep 2;
		$ok = OrdflowTest::wait_for($node, $drained_sql, 't', $timeout);
	}
	ok($ok, ($o{label} ? "$o{label}: " : '') . 'pipeline drained (outbox empty, no initialised order)')
	  or diag counts($node);
	return $ok;
}

sub _zero
{
	my ($node, $sql, $what, $detail_sql) = @_;
	my $n = scalar_sql($node, $sql);
	my $ok = is($n, 0, $what);
	if (!$ok && $detail_sql)
	{
		diag scalar_sql($node, $detail_sql);
	}
	return $ok;
}

=pod

=item OrdflowInvariants::check($node, $label, %opts)

After a drain: every committed order processed exactly once, balances and
metrics consistent, outbox empty.  Options: min_orders => N (at least that
many orders exist), dead_letters => 0 (expected dead letters; undef skips),
order_ids => [ids placed and committed by the test, each must be processed],
symbols => { SYM => n } (n processed orders with that symbol; the generator
only makes 3-character symbols, so longer ones are the test's own).

=cut

sub check
{
	my ($node, $label, %o) = @_;
	my $p = "$label: ";
	my $min = $o{min_orders} // 1;

	my $orders = scalar_sql($node, 'SELECT count(*) FROM ordflow.orders');
	cmp_ok($orders, '>=', $min, "${p}at least $min orders were made ($orders)");

	_zero($node, q{SELECT count(*) FROM ordflow.orders WHERE status = 'initialised'},
		"${p}no order left unprocessed",
		q{SELECT string_agg(order_id::text, ',') FROM (SELECT order_id FROM ordflow.orders
		   WHERE status = 'initialised' ORDER BY order_id LIMIT 20) x});

	_zero($node, q{
		SELECT count(*) FROM (
			SELECT o.order_id FROM ordflow.orders AS o
			  LEFT JOIN ordflow.order_events AS e ON e.order_id = o.order_id
			 GROUP BY o.order_id HAVING count(e.event_id) <> 2) AS x},
		"${p}exactly two events per order",
		q{SELECT string_agg(format('%s:%s', order_id, n), ',') FROM (
			SELECT o.order_id, count(e.event_id) AS n FROM ordflow.orders AS o
			  LEFT JOIN ordflow.order_events AS e ON e.order_id = o.order_id
			 GROUP BY o.order_id HAVING count(e.event_id) <> 2 ORDER BY 1 LIMIT 20) AS x});

	_zero($node, q{
		SELECT count(*) FROM (
			SELECT order_id FROM ordflow.order_events WHERE status <> 'initialised'
			 GROUP BY order_id HAVING count(*) > 1) AS x},
		"${p}no order has more than one final event");

	_zero($node, q{
		SELECT count(*) FROM ordflow.orders AS o
		 WHERE (SELECT count(*) FROM ordflow.order_events AS e
				 WHERE e.order_id = o.order_id AND e.status = 'initialised') <> 1
			OR (SELECT count(*) FROM ordflow.order_events AS e
				 WHERE e.order_id = o.order_id AND e.status = o.status) <> 1},
		"${p}each order has one initialised event and one final event matching its status");

	_zero($node, q{
		SELECT count(*) FROM ordflow.order_events AS e
		 WHERE NOT EXISTS (SELECT 1 FROM ordflow.orders AS o WHERE o.order_id = e.order_id)},
		"${p}no event without its order");

	_zero($node, q{
		SELECT count(*) FROM ordflow.orders AS o
		 WHERE (o.status = 'completed' AND (o.execution_price IS NULL OR o.execution_price <= 0
				OR o.processed_at IS NULL
				OR NOT EXISTS (SELECT 1 FROM ordflow.order_events AS e
							   WHERE e.order_id = o.order_id AND e.status = 'completed'
								 AND e.amount = o.execution_price)))
			OR (o.status = 'declined' AND (o.execution_price IS NOT NULL OR o.processed_at IS NULL))},
		"${p}completed orders carry their price (also in the event), declined ones none");

	_zero($node, q{
		SELECT count(*) FROM ordflow.users AS u
		 WHERE u.credit_balance <> u.credit_limit - coalesce(
				(SELECT sum(o.execution_price) FROM ordflow.orders AS o
				  WHERE o.uid = u.uid AND o.status = 'completed'), 0)},
		"${p}every balance = credit_limit - sum(completed execution_price)",
		q{SELECT string_agg(format('uid %s: limit %s balance %s completed %s', u.uid,
				u.credit_limit, u.credit_balance,
				(SELECT sum(o.execution_price) FROM ordflow.orders AS o
				  WHERE o.uid = u.uid AND o.status = 'completed')), E'\n')
			FROM ordflow.users AS u});

	_zero($node, q{SELECT count(*) FROM ordflow.users WHERE credit_balance < 0},
		"${p}no balance below zero");

	_zero($node, q{SELECT count(*) FROM ordflow.outbox}, "${p}outbox empty");

	my $metrics_sql = q{
		WITH m AS (SELECT * FROM ordflow.metrics()),
		r AS (SELECT count(*) FILTER (WHERE status <> 'initialised') AS processed,
					 count(*) FILTER (WHERE status = 'completed') AS completed,
					 count(*) FILTER (WHERE status = 'declined') AS declined,
					 avg(execution_price) FILTER (WHERE status = 'completed') AS avg,
					 coalesce(sum(execution_price) FILTER (WHERE status = 'completed'), 0) AS total
				FROM ordflow.orders)
		SELECT format('%s|%s|%s|%s|%s', m.orders_processed, m.orders_completed,
					  m.orders_declined, round(m.avg_execution_price, 9),
					  m.total_execution_amount),
			   format('%s|%s|%s|%s|%s', r.processed, r.completed, r.declined,
					  round(r.avg, 9), r.total)
		  FROM m, r};
	# psql -A separates the two columns by '|' too: ten fields in all
	my @all = split /\|/, scalar_sql($node, $metrics_sql), -1;
	is(join('|', @all[0 .. 4]), join('|', @all[5 .. 9]),
		"${p}metrics() equals a recompute from orders (processed|completed|declined|avg|total)");

	if (defined $o{dead_letters} || !exists $o{dead_letters})
	{
		my $want_dl = $o{dead_letters} // 0;
		is(scalar_sql($node, 'SELECT count(*) FROM ordflow.dead_letters'), $want_dl,
			"${p}$want_dl dead letters")
		  or diag scalar_sql($node,
			q{SELECT string_agg(format('%s: %s', error, left(body_text, 200)), E'\n')
				FROM (SELECT * FROM ordflow.dead_letters ORDER BY id LIMIT 10) d});
	}

	if ($o{order_ids} && @{ $o{order_ids} })
	{
		my $ids = join(',', @{ $o{order_ids} });
		is(scalar_sql($node, qq{
				SELECT count(*) FROM ordflow.orders
				 WHERE order_id IN ($ids) AND status <> 'initialised'}),
			scalar @{ $o{order_ids} },
			"${p}each of the " . scalar(@{ $o{order_ids} })
			  . ' orders the test committed during the fault was processed');
	}
	for my $sym (sort keys %{ $o{symbols} || {} })
	{
		is(scalar_sql($node, qq{
				SELECT count(*) FROM ordflow.orders
				 WHERE symbol = '$sym' AND status <> 'initialised'}),
			$o{symbols}{$sym},
			"${p}all $o{symbols}{$sym} '$sym' orders the test committed were processed");
	}
	note "$label: " . counts($node) . ' ' . scalar_sql($node, q{
		SELECT format('completed=%s declined=%s',
			count(*) FILTER (WHERE status = 'completed'),
			count(*) FILTER (WHERE status = 'declined')) FROM ordflow.orders});
	return;
}

# worker name => pid, from status()
sub worker_pids
{
	my ($node) = @_;
	my %pids;
	for my $line (split /\n/,
		scalar_sql($node, 'SELECT worker, pid FROM ordflow.status() ORDER BY worker'))
	{
		my ($w, $pid) = split /\|/, $line;
		$pids{$w} = $pid;
	}
	return \%pids;
}

=pod

=item OrdflowInvariants::workers_stable($node, $label, consumers => 1, secs => 5)

status() lists the supervisor, the generator, the relay and every consumer,
each pid a live ordflow backend in pg_stat_activity, and the pids stay the
same over a few seconds (nothing is crash-looping).

=cut

sub workers_stable
{
	my ($node, $label, %o) = @_;
	my $consumers = $o{consumers} // 1;
	my $secs = $o{secs} || 5;
	my @names = ('supervisor', 'generator', 'relay', map { "consumer $_" } 0 .. $consumers - 1);
	my $list = join(',', map { "'$_'" } @names);

	ok( OrdflowTest::wait_for($node, qq{
			SELECT count(DISTINCT s.worker) = ${\ scalar @names}
			  FROM ordflow.status() AS s
			  JOIN pg_stat_activity AS a ON a.pid = s.pid
			 WHERE s.worker IN ($list) AND a.backend_type LIKE 'ordflow%'}, 't', 90),
		"$label: status() shows @names, each a live ordflow backend")
	  or diag scalar_sql($node, 'SELECT * FROM ordflow.status()');
	my $before = worker_pids($node);
	sleep $secs;
	my $after = worker_pids($node);
	my %b = map { $_ => $before->{$_} } grep { exists $before->{$_} } @names;
	my %a = map { $_ => $after->{$_} } grep { exists $after->{$_} } @names;
	is_deeply(\%a, \%b, "$label: worker pids unchanged over ${secs}s (no crash loop)")
	  or diag scalar_sql($node, 'SELECT * FROM ordflow.status()');
	return;
}

# The node's log from byte $offset on.
sub log_since
{
	my ($node, $offset) = @_;
	return PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset // 0);
}

sub log_position
{
	my ($node) = @_;
	return -s $node->logfile;
}

1;
