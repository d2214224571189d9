/* ordflow--1.0--1.1.sql: trust boundaries, limits, retries, more than one node */

\echo Use "ALTER EXTENSION ordflow UPDATE TO '1.1'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Tables: who may write them
--
-- place_order() becomes SECURITY DEFINER, so no role needs to write these
-- tables itself; a role that could insert outbox rows could make the relay
-- publish anything, user events included.
-- ---------------------------------------------------------------------------

REVOKE ALL ON ordflow.orders, ordflow.order_events, ordflow.outbox,
	ordflow.dead_letters, ordflow.metrics_totals, ordflow.metrics_minute,
	ordflow.generator_state FROM PUBLIC;
REVOKE ALL ON FUNCTION ordflow._wake_relay_at_commit() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Outbox: everything ordflow publishes goes through it.
--   kind 'order': an order message (routing key order.created[.<p>])
--   kind 'reply': a reply to a broker user event, to the default exchange
--                 with the reply_to queue as routing key
--   kind 'retry': a dead letter re-driven by retry_dead_letters(), its
--                 stored body published as it was received
-- ---------------------------------------------------------------------------

ALTER TABLE ordflow.outbox
	ALTER COLUMN order_id DROP NOT NULL,
	ALTER COLUMN payload DROP NOT NULL,
	ADD COLUMN kind text NOT NULL DEFAULT 'order',
	ADD COLUMN correlation_id text,
	ADD COLUMN message_id text,
	ADD COLUMN reply_to text,
	ADD COLUMN raw_body bytea,
	ADD CONSTRAINT outbox_kind CHECK (kind IN ('order', 'reply', 'retry')),
	ADD CONSTRAINT outbox_one_body CHECK ((payload IS NULL) <> (raw_body IS NULL)),
	ADD CONSTRAINT outbox_order_has_id CHECK (kind <> 'order' OR order_id IS NOT NULL);

-- ---------------------------------------------------------------------------
-- Dead letters: the body is stored once, as bytea (at most the first 64 kB
-- of a message larger than ordflow.max_message_size, with its real size);
-- ordflow.dead_letters is a view that adds body_text, so every query
-- written for 1.0 keeps working.
-- ---------------------------------------------------------------------------

ALTER TABLE ordflow.dead_letters RENAME TO dead_letters_raw;
ALTER TABLE ordflow.dead_letters_raw
	DROP COLUMN body_text,
	ADD COLUMN body_size bigint,
	ADD COLUMN reply_to text,
	ADD COLUMN origin text NOT NULL DEFAULT 'consumer',
	ADD CONSTRAINT dead_letters_origin CHECK (origin IN ('consumer', 'relay', 'broker'));
UPDATE ordflow.dead_letters_raw SET body_size = pg_catalog.length(body);
ALTER TABLE ordflow.dead_letters_raw ALTER COLUMN body_size SET NOT NULL;
CREATE INDEX dead_letters_raw_received_at_idx ON ordflow.dead_letters_raw (received_at);

-- The body as text when it is valid UTF-8 without NUL that the database
-- encoding can hold; NULL otherwise.
CREATE FUNCTION ordflow._body_text(body bytea)
RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN convert_from(body, 'UTF8');
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
	RETURN NULL;
END
$$;

CREATE VIEW ordflow.dead_letters AS
	SELECT d.id, d.received_at, d.queue, d.routing_key, d.body,
		   ordflow._body_text(d.body) AS body_text,
		   d.body_size, d.error, d.redelivered, d.message_id, d.correlation_id,
		   d.reply_to, d.origin
	  FROM ordflow.dead_letters_raw AS d;
REVOKE ALL ON ordflow.dead_letters, ordflow.dead_letters_raw FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Broker user events applied once per message_id
-- ---------------------------------------------------------------------------

CREATE TABLE ordflow.applied_user_events (
	message_id text PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX applied_user_events_applied_at_idx ON ordflow.applied_user_events (applied_at);
REVOKE ALL ON ordflow.applied_user_events FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('ordflow.applied_user_events', '');

-- ---------------------------------------------------------------------------
-- status(): the broker node each worker is connected to, and the uid
-- partitions each consumer holds (NULL with ordflow.partitions = 1).
-- last_error and node show host names, ports and file paths only to roles
-- with pg_read_all_settings; others see the error's class.
-- ---------------------------------------------------------------------------

DROP FUNCTION ordflow.status();
CREATE FUNCTION ordflow.status()
RETURNS TABLE(worker text, pid int, state text, connected boolean,
			  since timestamptz, processed bigint, last_error text, node text,
			  partitions text)
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'ordflow_status';

-- ---------------------------------------------------------------------------
-- update_users('{}', ...) is refused like delete_users('{}')
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION ordflow.update_users(conditions jsonb, new_values jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c      record;
	nv     record;
	cvals  ordflow.users;
	nvals  ordflow.users;
	uids   bigint[];
	bad    ordflow.users;
	n      bigint;
BEGIN
	c := ordflow._user_conditions(conditions);
	-- As for delete_users(): an event with an empty condition must not
	-- rewrite every user.
	IF conditions = '{}'::jsonb THEN
		RAISE EXCEPTION 'update_users refuses empty conditions'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name the users to change, e.g. {"uid": 42}.';
	END IF;
	nv := ordflow._user_new_values(new_values);
	cvals := c.vals;
	nvals := nv.vals;

	-- Lock in uid order, like every other multi-row writer, so concurrent
	-- callers and the consumers cannot deadlock.
	EXECUTE format('SELECT array_agg(s.uid) FROM (SELECT uid FROM ordflow.users'
				   ' WHERE %s ORDER BY uid FOR UPDATE) AS s', c.clause)
		INTO uids USING cvals;
	IF uids IS NULL THEN
		RETURN 0;
	END IF;

	-- Name the first user the change would push out of 0..credit_limit.
	SELECT u.* INTO bad
	  FROM ordflow.users AS u
	 WHERE u.uid = ANY (uids)
	   AND NOT (coalesce(nvals.credit_balance, u.credit_balance)
				<= coalesce(nvals.credit_limit, u.credit_limit))
	 ORDER BY u.uid
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'credit_balance % would exceed credit_limit % for user %',
			ordflow._brief(coalesce(nvals.credit_balance, bad.credit_balance)::text),
			ordflow._brief(coalesce(nvals.credit_limit, bad.credit_limit)::text), bad.uid
			USING ERRCODE = 'check_violation',
				  HINT = 'credit_balance must be between 0 and credit_limit.';
	END IF;

	EXECUTE format('UPDATE ordflow.users SET %s, updated_at = now()'
				   ' WHERE uid = ANY ($2)', nv.set_list)
		USING nvals, uids;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

-- ---------------------------------------------------------------------------
-- place_order() runs with the owner's rights: GRANT EXECUTE is all a role
-- needs to place orders, and it no longer needs (or gets) any right on the
-- tables it writes.
-- ---------------------------------------------------------------------------

ALTER FUNCTION ordflow.place_order(bigint, numeric, text, int) SECURITY DEFINER;
REVOKE ALL ON FUNCTION ordflow.place_order(bigint, numeric, text, int) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- truncate(): dead letters now live in dead_letters_raw; the message ids of
-- applied user events go with the users they made.
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION ordflow.truncate(include_users boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF include_users IS NULL THEN
		RAISE EXCEPTION 'include_users must not be NULL'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;

	IF include_users THEN
		TRUNCATE ordflow.orders, ordflow.order_events, ordflow.outbox,
				 ordflow.dead_letters_raw, ordflow.metrics_totals,
				 ordflow.metrics_minute, ordflow.users, ordflow.applied_user_events;
	ELSE
		TRUNCATE ordflow.orders, ordflow.order_events, ordflow.outbox,
				 ordflow.dead_letters_raw, ordflow.metrics_totals,
				 ordflow.metrics_minute;
	END IF;

	PERFORM ordflow._truncated();
END
$$;

-- ---------------------------------------------------------------------------
-- metrics().orders_per_second over the last 60 seconds in which orders were
-- processed: each minute row remembers when its first and last order were
-- processed.
-- ---------------------------------------------------------------------------

ALTER TABLE ordflow.metrics_minute
	ADD COLUMN first_at timestamptz,
	ADD COLUMN last_at timestamptz;

-- Reads a handful of rows (one per consumer, plus the last two minutes), so
-- it answers in constant time whatever the number of orders.
CREATE OR REPLACE FUNCTION ordflow.metrics()
RETURNS TABLE(orders_processed bigint, orders_completed bigint,
			  orders_declined bigint, avg_execution_price numeric,
			  total_execution_amount numeric, orders_per_second double precision,
			  latency_p50_ms double precision, latency_p99_ms double precision,
			  last_processed_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH t AS (
		SELECT coalesce(sum(m.processed), 0)::bigint AS processed,
			   coalesce(sum(m.completed), 0)::bigint AS completed,
			   coalesce(sum(m.declined), 0)::bigint AS declined,
			   coalesce(sum(m.sum_price), 0) AS sum_price,
			   max(m.last_processed_at) AS last_at,
			   -- one row per worker: summed in C with the percentiles
			   ordflow._latency_percentiles(array_agg(m.latency_hist),
											'{0.5,0.99}') AS pct
		  FROM ordflow.metrics_totals AS m
	), r AS (
		-- throughput over the minutes that overlap the last 60 seconds,
		-- measured from the first order they processed (not from the start
		-- of the minute, which would dilute it with idle time) up to now()
		SELECT coalesce(sum(mm.processed), 0) AS processed,
			   min(coalesce(mm.first_at, mm.minute)) AS since
		  FROM ordflow.metrics_minute AS mm
		 WHERE mm.minute >= date_trunc('minute', now() - interval '60 seconds')
	)
	SELECT t.processed,
		   t.completed,
		   t.declined,
		   CASE WHEN t.completed > 0 THEN t.sum_price / t.completed::numeric END,
		   t.sum_price,
		   CASE WHEN r.since IS NULL THEN 0::float8
				ELSE r.processed::float8 /
					 greatest(1::float8, extract(epoch FROM now() - r.since)::float8)
		   END,
		   t.pct[1],
		   t.pct[2],
		   t.last_at
	  FROM t, r
$$;

-- ---------------------------------------------------------------------------
-- ordflow.node_id: the ids ordflow makes (order_id, uid) are node_id << 48
-- plus a per-node sequence, so node 0 keeps 1, 2, 3, ... and no two ordflow
-- databases sharing a broker hand out the same id.  The sequences stop at
-- 2^48 - 1, below the next node's ids.
-- ---------------------------------------------------------------------------

-- ordflow.node_id is PGC_POSTMASTER, so this is constant while the server
-- runs; NULL (ordflow not loaded, e.g. a restore) counts as node 0.
CREATE FUNCTION ordflow._node_id()
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(pg_catalog.current_setting('ordflow.node_id', true), '0')::pg_catalog.int8 $$;

ALTER SEQUENCE ordflow.order_id_seq MAXVALUE 281474976710655;
ALTER TABLE ordflow.orders ALTER COLUMN order_id
	SET DEFAULT (ordflow._node_id() OPERATOR(pg_catalog.<<) 48)
		OPERATOR(pg_catalog.+) pg_catalog.nextval('ordflow.order_id_seq');

-- users.uid was GENERATED BY DEFAULT AS IDENTITY, which allows no other
-- default: it becomes a plain default on a sequence of the same name that
-- goes on where the identity stopped (1.0 data keeps its uids).
DO $$
DECLARE
	last_val bigint;
	called boolean;
BEGIN
	SELECT s.last_value, s.is_called INTO last_val, called FROM ordflow.users_uid_seq AS s;
	-- out of the extension first, so pg_dump's list of tables loses it too
	ALTER EXTENSION ordflow DROP SEQUENCE ordflow.users_uid_seq;
	ALTER TABLE ordflow.users ALTER COLUMN uid DROP IDENTITY;
	CREATE SEQUENCE ordflow.users_uid_seq MAXVALUE 281474976710655 OWNED BY ordflow.users.uid;
	PERFORM pg_catalog.setval('ordflow.users_uid_seq', last_val, called);
END
$$;
ALTER TABLE ordflow.users ALTER COLUMN uid
	SET DEFAULT (ordflow._node_id() OPERATOR(pg_catalog.<<) 48)
		OPERATOR(pg_catalog.+) pg_catalog.nextval('ordflow.users_uid_seq');
-- A restored database must not hand out uids again.
SELECT pg_catalog.pg_extension_config_dump('ordflow.users_uid_seq', '');

-- ---------------------------------------------------------------------------
-- Dead-letter re-drive and purge
-- ---------------------------------------------------------------------------

-- Republishes stored dead letters (all of them, or those whose id is in
-- ids) through the outbox, as 'retry' rows the relay publishes with their
-- routing key and properties, and deletes them from the dead letters, all
-- in the caller's transaction: a rollback keeps them where they were.
-- Deleting first (DELETE ... RETURNING) claims each row, so two concurrent
-- calls never republish one message twice.
--
-- A dead letter whose body was truncated (a message larger than
-- ordflow.max_message_size keeps only its first 64 kB) or that has no
-- routing key cannot be republished as received: naming one in ids is an
-- error; with ids NULL they are skipped (a NOTICE counts them) and stay.
-- With ids NULL, the outbox rows the relay refused (origin 'relay': rows
-- ordflow did not write, e.g. by a role that kept a 1.0 grant on the
-- outbox) are skipped too, so "retry everything" never publishes them;
-- naming one in ids is the operator's explicit choice.
CREATE FUNCTION ordflow.retry_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bad     ordflow.dead_letters_raw;
	n       bigint;
	skipped bigint;
BEGIN
	IF ids IS NOT NULL THEN
		SELECT d.* INTO bad
		  FROM ordflow.dead_letters_raw AS d
		 WHERE d.id = ANY (ids)
		   AND (d.body_size > length(d.body) OR d.routing_key IS NULL)
		 ORDER BY d.id
		 LIMIT 1;
		IF FOUND THEN
			RAISE EXCEPTION 'dead letter % cannot be republished', bad.id
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = CASE WHEN bad.routing_key IS NULL
								THEN 'It has no routing key.'
								ELSE format('Only the first %s of its %s bytes were stored.',
											length(bad.body), bad.body_size) END,
					  HINT = 'Leave it out of ids, or delete it with purge_dead_letters() or DELETE.';
		END IF;
	END IF;

	WITH d AS (
		DELETE FROM ordflow.dead_letters_raw AS d
		 WHERE (CASE WHEN ids IS NULL THEN d.origin <> 'relay' ELSE d.id = ANY (ids) END)
		   AND d.body_size <= length(d.body)
		   AND d.routing_key IS NOT NULL
		RETURNING d.id, d.routing_key, d.body, d.message_id, d.correlation_id, d.reply_to)
	INSERT INTO ordflow.outbox (kind, routing_key, raw_body, message_id,
								correlation_id, reply_to)
	SELECT 'retry', d.routing_key, d.body, d.message_id, d.correlation_id, d.reply_to
	  FROM d
	 ORDER BY d.id;		-- republished in the order they were received
	GET DIAGNOSTICS n = ROW_COUNT;

	IF ids IS NULL THEN
		SELECT count(*) INTO skipped
		  FROM ordflow.dead_letters_raw AS d
		 WHERE d.body_size > length(d.body) OR d.routing_key IS NULL
			OR d.origin = 'relay';
		IF skipped > 0 THEN
			RAISE NOTICE '% dead letters were not republished', skipped
				USING DETAIL = 'Their body was truncated, they have no routing key, or the relay refused them.',
					  HINT = 'Name a message the relay refused in ids to republish it anyway.';
		END IF;
	END IF;

	IF n > 0 THEN
		PERFORM ordflow._wake_relay_at_commit();
	END IF;
	RETURN n;
END
$$;

-- Deletes the dead letters received more than older_than ago (all of them
-- with the default '0'); returns how many.
CREATE FUNCTION ordflow.purge_dead_letters(older_than interval DEFAULT '0')
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	IF older_than IS NULL THEN
		RAISE EXCEPTION 'older_than must not be NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Use ''0'' to delete every dead letter.';
	END IF;
	IF older_than < interval '0' THEN
		RAISE EXCEPTION 'older_than must not be negative, got %', older_than
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	DELETE FROM ordflow.dead_letters_raw AS d
	 WHERE d.received_at < now() - older_than
		OR older_than = interval '0';
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

REVOKE ALL ON FUNCTION ordflow.retry_dead_letters(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ordflow.purge_dead_letters(interval) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- place_orders(orders jsonb): many orders in a handful of statements, with
-- place_order()'s validation and transaction semantics
-- ---------------------------------------------------------------------------

-- The first key of an order that place_orders() does not know, quoted.
-- A function of its own: a subquery in _place_orders_check() would keep
-- the planner from inlining it.
CREATE FUNCTION ordflow._place_orders_unknown_key(v jsonb)
RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ordflow._brief(to_json(min(k))::text)
	  FROM jsonb_object_keys(v - '{uid,amount,symbol,quantity}'::text[]) AS k
$$;
REVOKE ALL ON FUNCTION ordflow._place_orders_unknown_key(jsonb) FROM PUBLIC;

-- The first check one element of place_orders() fails, as {message, hint},
-- or NULL: the JSON types first, then place_order()'s checks in its order.
-- uid, amount and qty are the element's numbers (NULL when not a number).
-- A single expression without SET clause or subquery, so the planner
-- inlines it into place_orders() (a call per element would cost more than
-- the checks); functions and most operators are schema-qualified, and it
-- only ever runs inside place_orders(), whose search_path is pinned.
CREATE FUNCTION ordflow._place_orders_check(v jsonb, uid numeric, amount numeric, qty numeric)
RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
	SELECT CASE
	WHEN pg_catalog.jsonb_typeof($1) OPERATOR(pg_catalog.<>) 'object' THEN
		ARRAY['must be a JSON object, not ' OPERATOR(pg_catalog.||) pg_catalog.jsonb_typeof($1),
			  'Each order is an object such as {"uid": 1, "amount": 10, "symbol": "ABC", "quantity": 2}.']
	WHEN ($1 OPERATOR(pg_catalog.-) '{uid,amount,symbol,quantity}'::text[]) OPERATOR(pg_catalog.<>) '{}'::jsonb THEN
		ARRAY['unknown key ' OPERATOR(pg_catalog.||) ordflow._place_orders_unknown_key($1),
			  'The keys are uid, amount, symbol and quantity.']
	WHEN pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'uid') NOT IN ('number', 'null') THEN
		ARRAY['uid must be a JSON number, not ' OPERATOR(pg_catalog.||) pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'uid'), NULL]
	WHEN pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'amount') NOT IN ('number', 'null') THEN
		ARRAY['amount must be a JSON number, not ' OPERATOR(pg_catalog.||) pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'amount'),
			  'NaN and Infinity are refused: the amount must be greater than 0 and at most 1e15.']
	WHEN pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'symbol') NOT IN ('string', 'null') THEN
		ARRAY['symbol must be a JSON string, not ' OPERATOR(pg_catalog.||) pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'symbol'), NULL]
	WHEN pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'quantity') NOT IN ('number', 'null') THEN
		ARRAY['quantity must be a JSON number, not ' OPERATOR(pg_catalog.||) pg_catalog.jsonb_typeof($1 OPERATOR(pg_catalog.->) 'quantity'), NULL]
	WHEN $2 OPERATOR(pg_catalog.<>) pg_catalog.trunc($2)
		 OR $2 NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
		ARRAY['invalid uid: ' OPERATOR(pg_catalog.||) ordflow._brief($2::text),
			  'A uid is an integer from -9223372036854775808 to 9223372036854775807.']
	WHEN $4 OPERATOR(pg_catalog.<>) pg_catalog.trunc($4) OR $4 OPERATOR(pg_catalog.>) 2147483647 THEN
		ARRAY['invalid quantity: ' OPERATOR(pg_catalog.||) ordflow._brief($4::text),
			  'The quantity must be an integer from 1 to 2147483647.']
	WHEN $3 IS NULL AND $4 IS NULL THEN
		ARRAY['an order needs an amount or a quantity', NULL]
	WHEN NOT ($3 OPERATOR(pg_catalog.>) 0 AND $3 OPERATOR(pg_catalog.<=) 1e15) THEN
		ARRAY['invalid amount: ' OPERATOR(pg_catalog.||) ordflow._brief($3::text),
			  'The amount must be greater than 0 and at most 1e15.']
	WHEN pg_catalog.char_length($3::text) OPERATOR(pg_catalog.>) 63 THEN
		ARRAY['invalid amount: ' OPERATOR(pg_catalog.||) ordflow._brief($3::text) OPERATOR(pg_catalog.||) ' has more than 63 characters',
			  'Round the amount: it is published as a JSON number of at most 63 characters.']
	WHEN $4 OPERATOR(pg_catalog.<) 1 THEN
		ARRAY['invalid quantity: ' OPERATOR(pg_catalog.||) ordflow._brief($4::text),
			  'The quantity must be at least 1.']
	WHEN pg_catalog.char_length($1 OPERATOR(pg_catalog.->>) 'symbol') NOT BETWEEN 1 AND 12 THEN
		ARRAY['invalid symbol: ' OPERATOR(pg_catalog.||) ordflow._brief(($1 OPERATOR(pg_catalog.->) 'symbol')::text),
			  'The symbol must have 1 to 12 characters.']
	END
$$;
REVOKE ALL ON FUNCTION ordflow._place_orders_check(jsonb, numeric, numeric, numeric) FROM PUBLIC;

-- orders is a JSON array of objects with place_order()'s arguments as keys
-- (uid, amount, symbol, quantity; a missing key or JSON null is NULL).  The
-- whole array is checked before anything is written, and the first bad
-- element is named by its index (0-based, as in orders->0): no order of a
-- refused array is placed.  Returns the new order ids in input order.
--
-- Every statement is set-wise: one to check and convert the array, one per
-- round to draw ids and insert the orders, their events and their outbox
-- rows.  The ids are drawn as the column default of orders.order_id draws
-- them, but before the insert, so that each drawn id is known to belong to
-- its element; one an
-- outside producer already took is skipped by ON CONFLICT DO NOTHING and
-- that element draws again in the next round, as place_order() loops.
CREATE FUNCTION ordflow.place_orders(orders jsonb)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bad       record;
	uids      bigint[];
	amounts   numeric[];
	symbols   text[];
	qtys      int[];
	n         int;
	idx       int[];		-- elements (1-based) still without an order
	all_i     int[] := '{}';	-- the elements placed so far
	all_id    bigint[] := '{}';	-- and their order ids
	node      bigint;
	placed    record;
BEGIN
	IF orders IS NULL THEN
		RAISE EXCEPTION 'orders must not be NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass a JSON array of orders, e.g. [{"amount": 10}].';
	END IF;
	IF jsonb_typeof(orders) <> 'array' THEN
		RAISE EXCEPTION 'orders must be a JSON array, not %', jsonb_typeof(orders)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass a JSON array of orders, e.g. [{"amount": 10}].';
	END IF;
	n := jsonb_array_length(orders);
	IF n = 0 THEN
		RETURN;
	END IF;

	-- One pass: the first element that fails a check (in place_order()'s
	-- order, after the JSON types), and the converted columns.  Values are
	-- cast only once their element passed every check.
	SELECT (array_agg(c.i ORDER BY c.i) FILTER (WHERE c.ck IS NOT NULL))[1] AS i,
		   (array_agg(c.ck ORDER BY c.i) FILTER (WHERE c.ck IS NOT NULL))[1:1] AS ck,
		   array_agg(CASE WHEN c.ck IS NULL THEN c.uid::bigint END ORDER BY c.i) AS uids,
		   array_agg(CASE WHEN c.ck IS NULL THEN c.amount END ORDER BY c.i) AS amounts,
		   array_agg(CASE WHEN c.ck IS NULL THEN c.v->>'symbol' END ORDER BY c.i) AS symbols,
		   array_agg(CASE WHEN c.ck IS NULL THEN c.qty::int END ORDER BY c.i) AS qtys
	  INTO bad
	  FROM (SELECT t.i, t.v, t.uid, t.amount, t.qty,
				   ordflow._place_orders_check(t.v, t.uid, t.amount, t.qty) AS ck
			  FROM (SELECT e.i, e.v,
						   CASE WHEN jsonb_typeof(e.v->'uid') = 'number'
								THEN (e.v->'uid')::numeric END AS uid,
						   CASE WHEN jsonb_typeof(e.v->'amount') = 'number'
								THEN (e.v->'amount')::numeric END AS amount,
						   CASE WHEN jsonb_typeof(e.v->'quantity') = 'number'
								THEN (e.v->'quantity')::numeric END AS qty
					  FROM jsonb_array_elements(orders) WITH ORDINALITY AS e(v, i)
					OFFSET 0) AS t		-- each number converted once
			OFFSET 0) AS c;				-- each element checked once

	IF bad.i IS NOT NULL AND bad.ck[1][2] IS NULL THEN
		RAISE EXCEPTION 'orders[%]: %', bad.i - 1, bad.ck[1][1]
			USING ERRCODE = 'invalid_parameter_value';
	ELSIF bad.i IS NOT NULL THEN
		RAISE EXCEPTION 'orders[%]: %', bad.i - 1, bad.ck[1][1]
			USING ERRCODE = 'invalid_parameter_value', HINT = bad.ck[1][2];
	END IF;
	uids := bad.uids;
	amounts := bad.amounts;
	symbols := bad.symbols;
	qtys := bad.qtys;

	-- The default of orders.order_id, with the node id (a function with a
	-- SET clause, so never inlined) evaluated once instead of per row.
	-- 11_place_orders checks that the default is still this expression.
	node := ordflow._node_id();

	-- Each round draws an id for every element still without an order
	-- (all of them in the first), inserts, and hands the elements whose id
	-- was taken to the next round.  Arrays are only ever read with unnest():
	-- reaching element i of a text or numeric array walks the i - 1 before
	-- it.  Events and outbox rows follow the order ids, which a round draws
	-- in input order.
	idx := ARRAY(SELECT generate_series(1, n));
	WHILE cardinality(idx) > 0 LOOP
		-- EXECUTE: planned for the actual sizes each time (a generic plan
		-- could pick a nested loop for 100,000 rows).
		EXECUTE $q$
			WITH drawn AS MATERIALIZED (
				SELECT s.*, ($6 << 48) + nextval('ordflow.order_id_seq') AS id
				  FROM unnest($1, $2, $3, $4, $5) AS s(i, uid, amount, symbol, qty)
			), o AS (
				INSERT INTO ordflow.orders AS o (order_id, uid, amount, symbol, quantity, source)
				SELECT d.id, d.uid, d.amount, d.symbol, d.qty, 'sql'
				  FROM drawn AS d
				 ORDER BY d.i
				ON CONFLICT (order_id) DO NOTHING
				RETURNING o.order_id, o.uid, o.amount, o.symbol, o.quantity, o.created_at
			), ev AS (
				INSERT INTO ordflow.order_events (order_id, uid, status, amount)
				SELECT o.order_id, o.uid, 'initialised', o.amount
				  FROM o
				 ORDER BY o.order_id
			), ob AS (
				INSERT INTO ordflow.outbox (order_id, routing_key, payload)
				SELECT o.order_id, 'order.created',
					   ordflow._order_payload(o.order_id, o.uid, o.symbol,
											  o.quantity, o.amount, o.created_at)
				  FROM o
				 ORDER BY o.order_id
			)
			SELECT array_agg(d.i) FILTER (WHERE o.order_id IS NOT NULL) AS placed_i,
				   array_agg(d.id) FILTER (WHERE o.order_id IS NOT NULL) AS placed_id,
				   array_agg(d.i) FILTER (WHERE o.order_id IS NULL) AS i,
				   array_agg(d.uid) FILTER (WHERE o.order_id IS NULL) AS uid,
				   array_agg(d.amount) FILTER (WHERE o.order_id IS NULL) AS amount,
				   array_agg(d.symbol) FILTER (WHERE o.order_id IS NULL) AS symbol,
				   array_agg(d.qty) FILTER (WHERE o.order_id IS NULL) AS qty
			  FROM drawn AS d LEFT JOIN o ON o.order_id = d.id$q$
			INTO placed
			USING idx, uids, amounts, symbols, qtys, node;

		all_i := all_i || placed.placed_i;
		all_id := all_id || placed.placed_id;
		idx := coalesce(placed.i, '{}');
		uids := placed.uid;
		amounts := placed.amount;
		symbols := placed.symbol;
		qtys := placed.qty;
	END LOOP;

	PERFORM ordflow._wake_relay_at_commit();
	RETURN QUERY SELECT u.id FROM unnest(all_i, all_id) AS u(i, id) ORDER BY u.i;
END
$$;
REVOKE ALL ON FUNCTION ordflow.place_orders(jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- uid partitions (ordflow.partitions, ordflow.owned_partitions): a user's
-- partition is uid mod partitions, an order without uid goes by its
-- order_id.  Both functions call the C code the workers use.
-- ---------------------------------------------------------------------------

CREATE FUNCTION ordflow.partition_of(uid bigint)
RETURNS int
LANGUAGE c STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'ordflow_partition_of';

-- The partitions this node holds, ascending.
CREATE FUNCTION ordflow._owned_partitions()
RETURNS int[]
LANGUAGE c STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'ordflow_owned_partition_list';
