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
--   kind 'forward': an order or user event a consumer took from a shared
--                 queue and hands on to its partition (routing key
--                 order.created.<p> or user.<T>.<p>), or an order placed
--                 here for another node's partition; published as it is,
--                 without our node and origin
-- ---------------------------------------------------------------------------

ALTER TABLE ordflow.outbox
	ALTER COLUMN order_id DROP NOT NULL,
	ALTER COLUMN payload DROP NOT NULL,
	ADD COLUMN kind text NOT NULL DEFAULT 'order',
	ADD COLUMN correlation_id text,
	ADD COLUMN message_id text,
	ADD COLUMN reply_to text,
	ADD COLUMN raw_body bytea,
	ADD CONSTRAINT outbox_kind CHECK (kind IN ('order', 'reply', 'retry', 'forward')),
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
LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
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
	applied_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	-- the uid partition whose queue delivered the event (NULL: a shared
	-- queue): export_partition() moves the record with the partition
	partition  int
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
-- orders: half of each page left free for the processed version of its rows.
-- A consumer updates every order once (status, price, notes, processed_at),
-- all its batch's rows of a page in one transaction; no index covers those
-- columns, so with room on the page the update is HOT and adds no
-- orders_pkey entry.  Full pages (fillfactor 100) made 6-35 % of them HOT,
-- 50 makes 70-99 % HOT (t/049; the drain's throughput, bounded by the
-- broker, gains little: bench/RESULTS.md).  At 100 each update puts the new version on another
-- page, so once processed the table is about as big either way (measured:
-- 582 pages against 520 for 22,000 orders).
-- ---------------------------------------------------------------------------

ALTER TABLE ordflow.orders SET (fillfactor = 50);

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

-- ordflow.partitions, also PGC_POSTMASTER; NULL (not loaded) counts as 1.
-- Without SET clause, so that the planner inlines it: place_order() and
-- the uid default read it on every call (every name is schema-qualified).
CREATE FUNCTION ordflow._partitions()
RETURNS int
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT COALESCE(pg_catalog.current_setting('ordflow.partitions', true), '1')::pg_catalog.int4 $$;

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

-- A new uid: node_id << 48 plus the sequence (1, 2, 3, ... on node 0 with
-- one partition), drawing again while the result falls in a partition
-- this node does not hold (ordflow.owned_partitions), so a node creates
-- users only in its own partitions.  Every value is drawn from the
-- sequence, never computed ahead: a change of owned_partitions can never
-- hand out a uid twice.  At most ordflow.partitions draws.
-- (partition_of() and _owned_partitions() are created further down;
-- PL/pgSQL looks them up when it runs.)
CREATE FUNCTION ordflow._new_uid_owned()
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	base  bigint := ordflow._node_id() << 48;
	owned int[] := ordflow._owned_partitions();
	u     bigint;
BEGIN
	IF cardinality(owned) = 0 THEN
		RAISE EXCEPTION 'this node holds no uid partition, so it cannot create users'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Set ordflow.owned_partitions to the partitions this node holds, or create the user on a node that holds some.';
	END IF;
	LOOP
		u := base + nextval('ordflow.users_uid_seq');
		EXIT WHEN ordflow.partition_of(u) = ANY (owned);
	END LOOP;
	RETURN u;
END
$$;

-- The default of users.uid.  With one partition, the expression of the
-- node ids alone; a single expression without SET clause, so the planner
-- inlines it and a bulk insert of users pays no function call per row.
CREATE FUNCTION ordflow._new_uid()
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
	SELECT CASE WHEN ordflow._partitions() OPERATOR(pg_catalog.=) 1
		   THEN (ordflow._node_id() OPERATOR(pg_catalog.<<) 48)
				OPERATOR(pg_catalog.+) pg_catalog.nextval('ordflow.users_uid_seq')
		   ELSE ordflow._new_uid_owned() END
$$;
-- Both executable by PUBLIC, like the default they are: whoever may insert
-- users (create_user() runs with the caller's rights, the user events role
-- included) evaluates them, and needs the right to draw from the sequence.

ALTER TABLE ordflow.users ALTER COLUMN uid SET DEFAULT ordflow._new_uid();
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
-- As in place_order(), an element whose partition another node holds gets
-- only its outbox row, to order.created.<p>.
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
	parts     int;
	owned     int[];
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
	-- Evaluated once too.  An element whose partition (of its uid, or of
	-- its order_id without uid) another node holds gets only its outbox
	-- row: the owner makes the order's row when it consumes the message.
	parts := ordflow._partitions();
	owned := ordflow._owned_partitions();

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
				SELECT t.*,
					   $7 = 1 OR ordflow.partition_of(coalesce(t.uid, t.id)) = ANY ($8) AS here
				  FROM (SELECT s.*, ($6 << 48) + nextval('ordflow.order_id_seq') AS id
						  FROM unnest($1, $2, $3, $4, $5) AS s(i, uid, amount, symbol, qty)
						OFFSET 0) AS t		-- one id per element
			), o AS (
				INSERT INTO ordflow.orders AS o (order_id, uid, amount, symbol, quantity, source)
				SELECT d.id, d.uid, d.amount, d.symbol, d.qty, 'sql'
				  FROM drawn AS d
				 WHERE d.here
				 ORDER BY d.i
				ON CONFLICT (order_id) DO NOTHING
				RETURNING o.order_id, o.uid, o.amount, o.symbol, o.quantity, o.created_at
			), ev AS (
				INSERT INTO ordflow.order_events (order_id, uid, status, amount)
				SELECT o.order_id, o.uid, 'initialised', o.amount
				  FROM o
				 ORDER BY o.order_id
			), ob AS (
				INSERT INTO ordflow.outbox (kind, order_id, message_id, routing_key, payload)
				SELECT m.kind, m.order_id, m.order_id::text,
					   ordflow._order_routing_key(m.uid, m.order_id, $7),
					   ordflow._order_payload(m.order_id, m.uid, m.symbol,
											  m.quantity, m.amount, m.created_at)
				  FROM (SELECT 'order' AS kind, o.* FROM o
						UNION ALL
						SELECT 'forward', d.id, d.uid, d.amount, d.symbol, d.qty, clock_timestamp()
						  FROM drawn AS d
						 WHERE NOT d.here) AS m
				 ORDER BY m.order_id
			)
			SELECT array_agg(d.i) FILTER (WHERE o.order_id IS NOT NULL OR NOT d.here) AS placed_i,
				   array_agg(d.id) FILTER (WHERE o.order_id IS NOT NULL OR NOT d.here) AS placed_id,
				   array_agg(d.i) FILTER (WHERE o.order_id IS NULL AND d.here) AS i,
				   array_agg(d.uid) FILTER (WHERE o.order_id IS NULL AND d.here) AS uid,
				   array_agg(d.amount) FILTER (WHERE o.order_id IS NULL AND d.here) AS amount,
				   array_agg(d.symbol) FILTER (WHERE o.order_id IS NULL AND d.here) AS symbol,
				   array_agg(d.qty) FILTER (WHERE o.order_id IS NULL AND d.here) AS qty
			  FROM drawn AS d LEFT JOIN o ON o.order_id = d.id$q$
			INTO placed
			USING idx, uids, amounts, symbols, qtys, node, parts, owned;

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

-- ---------------------------------------------------------------------------
-- Orders by partition: the routing key, and placement on the node that
-- holds the order's partition
-- ---------------------------------------------------------------------------

-- The routing key of an order: order.created with one partition, else
-- order.created.<partition of its uid, or of its order_id without uid>.
-- partitions is ordflow._partitions(), which the callers evaluate once per
-- statement.  A single expression without SET clause, so the planner
-- inlines it into the set-wise inserts (like _order_payload()); hence
-- every name is schema-qualified.
CREATE FUNCTION ordflow._order_routing_key(uid bigint, order_id bigint, partitions int)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
	SELECT CASE WHEN $3 OPERATOR(pg_catalog.=) 1 THEN 'order.created'
		   ELSE 'order.created.' OPERATOR(pg_catalog.||)
				ordflow.partition_of(COALESCE($1, $2))::pg_catalog.text END
$$;

-- As in 1.0, plus partitions: an order whose partition another node holds
-- (ordflow.owned_partitions) gets only its outbox row, to
-- order.created.<p>; the owner makes its row and its 'initialised' event
-- when it consumes the message, as for an outside order.  Otherwise it
-- would stay 'initialised' here for ever.  The row is of kind 'forward',
-- published without our node and origin: should the partition come back
-- here before the message is consumed, it must not pass for one of our own
-- orders that truncate() removed (those are dropped).  Without uid, the partition is
-- the order_id's, so the id is drawn first (as the column default draws
-- it).  With one partition, exactly the 1.0 statements.
CREATE OR REPLACE FUNCTION ordflow.place_order(uid bigint DEFAULT NULL,
											   amount numeric DEFAULT NULL,
											   symbol text DEFAULT NULL,
											   quantity int DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	new_id  bigint;
	created timestamptz;
	parts   int := ordflow._partitions();
	owned   int[];
BEGIN
	IF place_order.amount IS NULL AND place_order.quantity IS NULL THEN
		RAISE EXCEPTION 'an order needs an amount or a quantity'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- NaN is greater than every number, Infinity greater than 1e15.
	IF NOT (place_order.amount > 0 AND place_order.amount <= 1e15) THEN
		RAISE EXCEPTION 'invalid amount: %', ordflow._brief(place_order.amount::text)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The amount must be greater than 0 and at most 1e15.';
	END IF;
	-- The consumer reads at most 63 characters of amount text: refuse here
	-- what it would dead-letter (e.g. 1e-100 or 5.000... written in full).
	IF char_length(place_order.amount::text) > 63 THEN
		RAISE EXCEPTION 'invalid amount: % has more than 63 characters', ordflow._brief(place_order.amount::text)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Round the amount: it is published as a JSON number of at most 63 characters.';
	END IF;
	IF place_order.quantity < 1 THEN
		RAISE EXCEPTION 'invalid quantity: %', place_order.quantity
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The quantity must be at least 1.';
	END IF;
	IF char_length(place_order.symbol) NOT BETWEEN 1 AND 12 THEN
		RAISE EXCEPTION 'invalid symbol: %', ordflow._brief(pg_catalog.to_json(place_order.symbol)::text)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The symbol must have 1 to 12 characters.';
	END IF;

	-- Outside producers choose their own ids; skip any they already took.
	IF parts = 1 THEN
		LOOP
			INSERT INTO ordflow.orders AS o (uid, amount, symbol, quantity, source)
			VALUES (place_order.uid, place_order.amount, place_order.symbol,
					place_order.quantity, 'sql')
			ON CONFLICT (order_id) DO NOTHING
			RETURNING o.order_id, o.created_at INTO new_id, created;
			EXIT WHEN FOUND;
		END LOOP;
	ELSE
		owned := ordflow._owned_partitions();
		LOOP
			new_id := (ordflow._node_id() << 48) + nextval('ordflow.order_id_seq');
			IF NOT ordflow.partition_of(coalesce(place_order.uid, new_id)) = ANY (owned) THEN
				INSERT INTO ordflow.outbox (kind, order_id, message_id, routing_key, payload)
				VALUES ('forward', new_id, new_id::text,
						ordflow._order_routing_key(place_order.uid, new_id, parts),
						ordflow._order_payload(new_id, place_order.uid, place_order.symbol,
											   place_order.quantity, place_order.amount,
											   clock_timestamp()));
				PERFORM ordflow._wake_relay_at_commit();
				RETURN new_id;
			END IF;
			INSERT INTO ordflow.orders AS o (order_id, uid, amount, symbol, quantity, source)
			VALUES (new_id, place_order.uid, place_order.amount, place_order.symbol,
					place_order.quantity, 'sql')
			ON CONFLICT (order_id) DO NOTHING
			RETURNING o.created_at INTO created;
			EXIT WHEN FOUND;
		END LOOP;
	END IF;

	INSERT INTO ordflow.order_events (order_id, uid, status, amount)
	VALUES (new_id, place_order.uid, 'initialised', place_order.amount);

	INSERT INTO ordflow.outbox (order_id, routing_key, payload)
	VALUES (new_id, ordflow._order_routing_key(place_order.uid, new_id, parts),
			ordflow._order_payload(new_id, place_order.uid, place_order.symbol,
								   place_order.quantity, place_order.amount, created));

	PERFORM ordflow._wake_relay_at_commit();
	RETURN new_id;
END
$$;

-- ---------------------------------------------------------------------------
-- Moving a partition to another node (README, "Running on more than one
-- node"): on the old owner, remove p from ordflow.owned_partitions and
-- reload; export_partition(p); on the new owner, import_partition() while
-- p is not yet in its owned_partitions, then add it there and reload; on
-- the old owner, drop_partition(p).  Messages for p wait in its queue
-- meanwhile.  Superuser only unless granted, like the other control
-- functions.
-- ---------------------------------------------------------------------------

-- Raises 22004/22023 unless p is a partition number (0 .. partitions - 1),
-- and 55000 if this node holds it: "what" says what was refused.
CREATE FUNCTION ordflow._partition_not_owned(p int, what text)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF p IS NULL THEN
		RAISE EXCEPTION 'the partition must not be NULL'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF p < 0 OR p >= ordflow._partitions() THEN
		RAISE EXCEPTION 'partition % does not exist', p
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('ordflow.partitions is %s, so partitions are 0 to %s.',
								  ordflow._partitions(), ordflow._partitions() - 1);
	END IF;
	IF p = ANY (ordflow._owned_partitions()) THEN
		RAISE EXCEPTION 'cannot % partition %: this node holds it', what, p
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('ordflow.owned_partitions is "%s".',
								  current_setting('ordflow.owned_partitions', true)),
				  HINT = CASE what
					WHEN 'import' THEN 'Import a partition before this node takes it: remove it from ordflow.owned_partitions, reload, import, then add it again and reload.'
					ELSE 'Remove the partition from ordflow.owned_partitions (ALTER SYSTEM SET ordflow.owned_partitions = ...) and SELECT pg_reload_conf() first.'
				  END;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION ordflow._partition_not_owned(int, text) FROM PUBLIC;

-- The users of partition p, its orders (of its users, or without uid, of
-- order_ids in p) and their events, as {"partitions": P, "partition": p,
-- "users": [...], "orders": [...], "events": [...], "applied_user_events":
-- [...]}, rows as to_jsonb() writes them (events without event_id, applied
-- user events without partition).  Finished orders and the message_ids of
-- applied user events move too: a late copy of a message (a producer's
-- retry, a redelivery, a relay's second publish) reaches the new owner,
-- which must know it was done.  Refused while this node holds p.  The
-- rows are locked FOR UPDATE, orders first and then users, like a
-- consumer's batch: one still in flight here is waited for, and the
-- export has what it committed.
CREATE FUNCTION ordflow.export_partition(p int)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o   jsonb;
	u   jsonb;
	e   jsonb;
	a   jsonb;
	ids bigint[];
BEGIN
	PERFORM ordflow._partition_not_owned(p, 'export');

	SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.order_id), '[]'),
		   coalesce(array_agg(x.order_id), '{}')
	  INTO o, ids
	  FROM (SELECT r.*
			  FROM ordflow.orders AS r
			 WHERE ordflow.partition_of(coalesce(r.uid, r.order_id)) = p
			 ORDER BY r.order_id
			   FOR UPDATE) AS x;
	SELECT coalesce(jsonb_agg(to_jsonb(v) - 'event_id' ORDER BY v.event_id), '[]')
	  INTO e
	  FROM ordflow.order_events AS v
	 WHERE v.order_id = ANY (ids);
	SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.uid), '[]')
	  INTO u
	  FROM (SELECT r.*
			  FROM ordflow.users AS r
			 WHERE ordflow.partition_of(r.uid) = p
			 ORDER BY r.uid
			   FOR UPDATE) AS x;

	SELECT coalesce(jsonb_agg(to_jsonb(v) - 'partition' ORDER BY v.message_id), '[]')
	  INTO a
	  FROM ordflow.applied_user_events AS v
	 WHERE v.partition = p;

	RETURN jsonb_build_object('partitions', ordflow._partitions(), 'partition', p,
							  'users', u, 'orders', o, 'events', e,
							  'applied_user_events', a);
END
$$;

-- A timestamptz from JSON, or NULL if v is no string of a finite one.
-- PARALLEL UNSAFE: the exception block is a subtransaction, which
-- parallel mode forbids (and so are the two checks that call it).
CREATE FUNCTION ordflow._import_timestamptz(v jsonb)
RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t timestamptz;
BEGIN
	IF jsonb_typeof(v) <> 'string' THEN
		RETURN NULL;
	END IF;
	t := (v #>> '{}')::timestamptz;
	RETURN CASE WHEN isfinite(t) THEN t END;
EXCEPTION WHEN data_exception THEN
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ordflow._import_timestamptz(jsonb) FROM PUBLIC;

-- A JSON number that is an integer in lo..hi, as numeric; else NULL.
CREATE FUNCTION ordflow._import_int(v jsonb, lo numeric, hi numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT n FROM (SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN v::numeric END AS n) AS s
	 WHERE n = trunc(n) AND n BETWEEN lo AND hi
$$;
REVOKE ALL ON FUNCTION ordflow._import_int(jsonb, numeric, numeric) FROM PUBLIC;

-- An exported row's shape problem (for import_partition()): not an object,
-- a key other than keys, or one of keys missing; NULL if none.
CREATE FUNCTION ordflow._import_shape(v jsonb, keys text[], what text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN jsonb_typeof(v) <> 'object' THEN 'must be a JSON object, not ' || jsonb_typeof(v)
		WHEN (v - keys) <> '{}' THEN 'unknown key ' || (SELECT ordflow._brief(to_json(min(k))::text)
														  FROM jsonb_object_keys(v - keys) AS k)
		WHEN NOT v ?& keys THEN what || ' needs the keys ' || array_to_string(keys, ', ')
	END
$$;
REVOKE ALL ON FUNCTION ordflow._import_shape(jsonb, text[], text) FROM PUBLIC;

-- The first problem of one exported user (for import_partition()), or NULL.
CREATE FUNCTION ordflow._import_user_check(v jsonb, p int)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keys  constant text[] := '{uid,name,lname,credit_limit,credit_balance,created_at,updated_at}';
	shape text;
	uid   numeric;
	lim   numeric;
	bal   numeric;
BEGIN
	shape := ordflow._import_shape(v, keys, 'a user');
	IF shape IS NOT NULL THEN
		RETURN shape;
	END IF;
	uid := ordflow._import_int(v -> 'uid', -9223372036854775808, 9223372036854775807);
	IF uid IS NULL THEN
		RETURN 'invalid uid: ' || ordflow._brief((v -> 'uid')::text);
	ELSIF ordflow.partition_of(uid::bigint) <> p THEN
		RETURN format('uid %s is in partition %s, not %s', uid, ordflow.partition_of(uid::bigint), p);
	ELSIF jsonb_typeof(v -> 'name') <> 'string' THEN
		RETURN 'name must be a JSON string, not ' || jsonb_typeof(v -> 'name');
	ELSIF jsonb_typeof(v -> 'lname') <> 'string' THEN
		RETURN 'lname must be a JSON string, not ' || jsonb_typeof(v -> 'lname');
	ELSIF jsonb_typeof(v -> 'credit_limit') <> 'number' THEN
		RETURN 'credit_limit must be a JSON number, not ' || jsonb_typeof(v -> 'credit_limit');
	ELSIF jsonb_typeof(v -> 'credit_balance') <> 'number' THEN
		RETURN 'credit_balance must be a JSON number, not ' || jsonb_typeof(v -> 'credit_balance');
	END IF;
	lim := (v -> 'credit_limit')::numeric;
	bal := (v -> 'credit_balance')::numeric;
	IF NOT (lim >= 0 AND lim <= 1e15) THEN
		RETURN 'credit_limit must be between 0 and 1e15, got ' || ordflow._brief(lim::text);
	ELSIF NOT (bal >= 0 AND bal <= lim) THEN
		RETURN 'credit_balance must be between 0 and credit_limit, got ' || ordflow._brief(bal::text);
	ELSIF ordflow._import_timestamptz(v -> 'created_at') IS NULL THEN
		RETURN 'created_at must be a timestamp string, got ' || ordflow._brief((v -> 'created_at')::text);
	ELSIF ordflow._import_timestamptz(v -> 'updated_at') IS NULL THEN
		RETURN 'updated_at must be a timestamp string, got ' || ordflow._brief((v -> 'updated_at')::text);
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ordflow._import_user_check(jsonb, int) FROM PUBLIC;

-- The first problem of the order_id, uid and status an exported order or
-- event has (for the two checks below), or NULL: integers, the partition
-- p, a status.  "what" names the element in the message.
CREATE FUNCTION ordflow._import_order_ref(v jsonb, p int, what text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id  numeric := ordflow._import_int(v -> 'order_id', -9223372036854775808, 9223372036854775807);
	uid numeric := ordflow._import_int(v -> 'uid', -9223372036854775808, 9223372036854775807);
BEGIN
	IF id IS NULL THEN
		RETURN 'invalid order_id: ' || ordflow._brief((v -> 'order_id')::text);
	ELSIF uid IS NULL AND jsonb_typeof(v -> 'uid') <> 'null' THEN
		RETURN 'invalid uid: ' || ordflow._brief((v -> 'uid')::text);
	ELSIF ordflow.partition_of(coalesce(uid, id)::bigint) <> p THEN
		RETURN format('%s %s is in partition %s, not %s', what, id,
					  ordflow.partition_of(coalesce(uid, id)::bigint), p);
	ELSIF jsonb_typeof(v -> 'status') <> 'string'
		  OR v ->> 'status' NOT IN ('initialised', 'completed', 'declined') THEN
		RETURN 'status must be "initialised", "completed" or "declined", not '
			|| ordflow._brief((v -> 'status')::text);
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ordflow._import_order_ref(jsonb, int, text) FROM PUBLIC;

-- The first problem of one exported order (for import_partition()), or
-- NULL: an order of partition p, as export_partition() writes it, that
-- place_order() and a consumer could have made.
CREATE FUNCTION ordflow._import_order_check(v jsonb, p int)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keys    constant text[] := '{order_id,uid,symbol,quantity,amount,status,execution_price,notes,created_at,processed_at,source}';
	problem text;
	amt     numeric;
BEGIN
	problem := coalesce(ordflow._import_shape(v, keys, 'an order'),
						ordflow._import_order_ref(v, p, 'order'));
	IF problem IS NOT NULL THEN
		RETURN problem;
	ELSIF v ->> 'status' = 'initialised' AND jsonb_typeof(v -> 'execution_price') <> 'null' THEN
		RETURN 'execution_price must be null in an unfinished order';
	ELSIF v ->> 'status' = 'initialised' AND jsonb_typeof(v -> 'processed_at') <> 'null' THEN
		RETURN 'processed_at must be null in an unfinished order';
	ELSIF v ->> 'status' <> 'initialised' AND ordflow._import_timestamptz(v -> 'processed_at') IS NULL THEN
		RETURN 'processed_at must be a timestamp string in a finished order, got '
			|| ordflow._brief((v -> 'processed_at')::text);
	ELSIF jsonb_typeof(v -> 'execution_price') NOT IN ('number', 'null') THEN
		RETURN 'execution_price must be a JSON number or null, not ' || jsonb_typeof(v -> 'execution_price');
	ELSIF NOT coalesce((v ->> 'execution_price')::numeric BETWEEN 0 AND 1e18, true) THEN
		RETURN 'invalid execution_price: ' || ordflow._brief((v -> 'execution_price')::text);
	ELSIF jsonb_typeof(v -> 'notes') NOT IN ('string', 'null') THEN
		RETURN 'notes must be a JSON string or null, not ' || jsonb_typeof(v -> 'notes');
	ELSIF jsonb_typeof(v -> 'symbol') NOT IN ('string', 'null') THEN
		RETURN 'symbol must be a JSON string or null, not ' || jsonb_typeof(v -> 'symbol');
	ELSIF char_length(v ->> 'symbol') NOT BETWEEN 1 AND 12 THEN
		RETURN 'invalid symbol: ' || ordflow._brief((v -> 'symbol')::text);
	ELSIF jsonb_typeof(v -> 'quantity') <> 'null'
		  AND ordflow._import_int(v -> 'quantity', 1, 2147483647) IS NULL THEN
		RETURN 'invalid quantity: ' || ordflow._brief((v -> 'quantity')::text);
	ELSIF jsonb_typeof(v -> 'amount') NOT IN ('number', 'null') THEN
		RETURN 'amount must be a JSON number or null, not ' || jsonb_typeof(v -> 'amount');
	ELSIF jsonb_typeof(v -> 'amount') = 'null' AND jsonb_typeof(v -> 'quantity') = 'null' THEN
		RETURN 'an order needs an amount or a quantity';
	END IF;
	amt := (v ->> 'amount')::numeric;
	IF NOT (amt > 0 AND amt <= 1e15) OR char_length(amt::text) > 63 THEN
		RETURN 'invalid amount: ' || ordflow._brief(amt::text);
	ELSIF ordflow._import_timestamptz(v -> 'created_at') IS NULL THEN
		RETURN 'created_at must be a timestamp string, got ' || ordflow._brief((v -> 'created_at')::text);
	ELSIF v ->> 'source' IS NULL OR jsonb_typeof(v -> 'source') <> 'string'
		  OR v ->> 'source' NOT IN ('sql', 'generator', 'broker') THEN
		RETURN 'source must be "sql", "generator" or "broker", not ' || ordflow._brief((v -> 'source')::text);
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ordflow._import_order_check(jsonb, int) FROM PUBLIC;

-- The first problem of one exported event (for import_partition()), or
-- NULL: an event of an order of partition p.
CREATE FUNCTION ordflow._import_event_check(v jsonb, p int)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keys    constant text[] := '{order_id,uid,status,event_time,amount,notes}';
	problem text;
BEGIN
	problem := coalesce(ordflow._import_shape(v, keys, 'an event'),
						ordflow._import_order_ref(v, p, 'the event of order'));
	IF problem IS NOT NULL THEN
		RETURN problem;
	ELSIF ordflow._import_timestamptz(v -> 'event_time') IS NULL THEN
		RETURN 'event_time must be a timestamp string, got ' || ordflow._brief((v -> 'event_time')::text);
	ELSIF jsonb_typeof(v -> 'amount') NOT IN ('number', 'null') THEN
		RETURN 'amount must be a JSON number or null, not ' || jsonb_typeof(v -> 'amount');
	ELSIF char_length(v ->> 'amount') > 63 THEN
		RETURN 'invalid amount: ' || ordflow._brief(v ->> 'amount');
	ELSIF jsonb_typeof(v -> 'notes') NOT IN ('string', 'null') THEN
		RETURN 'notes must be a JSON string or null, not ' || jsonb_typeof(v -> 'notes');
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ordflow._import_event_check(jsonb, int) FROM PUBLIC;

-- The first problem of one exported applied user event, or NULL.
CREATE FUNCTION ordflow._import_applied_event_check(v jsonb)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	shape text := ordflow._import_shape(v, '{message_id,applied_at}', 'an applied user event');
BEGIN
	IF shape IS NOT NULL THEN
		RETURN shape;
	ELSIF jsonb_typeof(v -> 'message_id') <> 'string' OR char_length(v ->> 'message_id') NOT BETWEEN 1 AND 255 THEN
		RETURN 'message_id must be a JSON string of 1 to 255 characters, got '
			|| ordflow._brief((v -> 'message_id')::text);
	ELSIF ordflow._import_timestamptz(v -> 'applied_at') IS NULL THEN
		RETURN 'applied_at must be a timestamp string, got ' || ordflow._brief((v -> 'applied_at')::text);
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ordflow._import_applied_event_check(jsonb) FROM PUBLIC;

-- Imports what export_partition() wrote on another node (or on this one):
-- users inserted, or updated to the exported values if the uid exists;
-- orders inserted as they were, with their events, unless the order_id
-- exists; the message_ids of applied user events remembered.  Everything
-- is checked first (hostile input: the first bad element is named, 22023,
-- and nothing is written).  Refused while this
-- node holds the partition: its queue would be consumed before its users
-- are here.  Returns how many users were written and orders inserted.
-- (The ids keep the exporting node's prefix, so they cannot collide with
-- the ids this node's sequences make.)
CREATE FUNCTION ordflow.import_partition(data jsonb)
RETURNS TABLE(users bigint, orders bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keys constant text[] := '{partitions,partition,users,orders,events,applied_user_events}';
	p    int;
	bad  record;
BEGIN
	IF data IS NULL THEN
		RAISE EXCEPTION 'data must not be NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass what export_partition() returned.';
	END IF;
	IF jsonb_typeof(data) <> 'object' OR NOT data ?& keys OR (data - keys) <> '{}' THEN
		RAISE EXCEPTION 'data must be a JSON object with exactly the keys partitions, partition, users, orders, events and applied_user_events'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass what export_partition() returned.';
	END IF;
	IF ordflow._import_int(data -> 'partitions', 1, 1024) IS DISTINCT FROM ordflow._partitions() THEN
		RAISE EXCEPTION 'data was exported with % partitions, this node has %',
			ordflow._brief((data -> 'partitions')::text), ordflow._partitions()
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'ordflow.partitions must be the same on every node.';
	END IF;
	p := ordflow._import_int(data -> 'partition', 0, ordflow._partitions() - 1);
	IF p IS NULL THEN
		RAISE EXCEPTION 'invalid partition: %', ordflow._brief((data -> 'partition')::text)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM ordflow._partition_not_owned(p, 'import');
	IF jsonb_typeof(data -> 'users') <> 'array' OR jsonb_typeof(data -> 'orders') <> 'array'
	   OR jsonb_typeof(data -> 'events') <> 'array'
	   OR jsonb_typeof(data -> 'applied_user_events') <> 'array' THEN
		RAISE EXCEPTION 'users, orders, events and applied_user_events must be JSON arrays'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	-- the first bad element, of users, then orders, events and applied
	-- user events; an event must belong to an order of the import
	SELECT k.key, e.i - 1 AS i, c.msg INTO bad
	  FROM (VALUES (1, 'users'), (2, 'orders'), (3, 'events'), (4, 'applied_user_events')) AS k(n, key),
		   jsonb_array_elements(data -> k.key) WITH ORDINALITY AS e(v, i),
		   LATERAL (SELECT CASE k.key
							   WHEN 'users' THEN ordflow._import_user_check(e.v, p)
							   WHEN 'orders' THEN ordflow._import_order_check(e.v, p)
							   WHEN 'applied_user_events' THEN ordflow._import_applied_event_check(e.v)
							   ELSE coalesce(ordflow._import_event_check(e.v, p),
											 CASE WHEN (e.v -> 'order_id') NOT IN
														   (SELECT o.v -> 'order_id'
															  FROM jsonb_array_elements(data -> 'orders') AS o(v))
												  THEN format('order %s is not among the orders', e.v -> 'order_id')
											 END)
						   END AS msg) AS c
	 WHERE c.msg IS NOT NULL
	 ORDER BY k.n, e.i
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION '%[%]: %', bad.key, bad.i, bad.msg
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the smallest key that appears twice, of users before orders
	SELECT k.key, k.id, (e.v ->> k.id)::numeric AS v INTO bad
	  FROM (VALUES (1, 'users', 'uid'), (2, 'orders', 'order_id')) AS k(n, key, id),
		   jsonb_array_elements(data -> k.key) AS e(v)
	 GROUP BY k.n, k.key, k.id, 3
	HAVING count(*) > 1
	 ORDER BY k.n, 3
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION '% % appears more than once in %', bad.id, bad.v, bad.key
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	-- orders before users, each in key order, as a consumer's batch locks;
	-- integers through numeric, which reads 1.0 and 1e3 too; the events of
	-- the orders inserted, in the exported order
	WITH o AS (
		INSERT INTO ordflow.orders AS o (order_id, uid, symbol, quantity, amount, status,
										 execution_price, notes, created_at, processed_at, source)
		SELECT (e.v ->> 'order_id')::numeric::bigint, (e.v ->> 'uid')::numeric::bigint, e.v ->> 'symbol',
			   (e.v ->> 'quantity')::numeric::int, (e.v ->> 'amount')::numeric,
			   (e.v ->> 'status')::ordflow.order_status, (e.v ->> 'execution_price')::numeric,
			   e.v ->> 'notes', (e.v ->> 'created_at')::timestamptz,
			   (e.v ->> 'processed_at')::timestamptz, e.v ->> 'source'
		  FROM jsonb_array_elements(data -> 'orders') AS e(v)
		 ORDER BY 1
		ON CONFLICT (order_id) DO NOTHING
		RETURNING o.order_id
	), ev AS (
		INSERT INTO ordflow.order_events (order_id, uid, status, event_time, amount, notes)
		SELECT (e.v ->> 'order_id')::numeric::bigint, (e.v ->> 'uid')::numeric::bigint,
			   (e.v ->> 'status')::ordflow.order_status, (e.v ->> 'event_time')::timestamptz,
			   (e.v ->> 'amount')::numeric, e.v ->> 'notes'
		  FROM jsonb_array_elements(data -> 'events') WITH ORDINALITY AS e(v, i)
		 WHERE (e.v ->> 'order_id')::numeric::bigint IN (SELECT o.order_id FROM o)
		 ORDER BY e.i
	)
	SELECT count(*) INTO import_partition.orders FROM o;

	INSERT INTO ordflow.applied_user_events AS a (message_id, applied_at, partition)
	SELECT e.v ->> 'message_id', (e.v ->> 'applied_at')::timestamptz, p
	  FROM jsonb_array_elements(data -> 'applied_user_events') AS e(v)
	ON CONFLICT (message_id) DO NOTHING;

	INSERT INTO ordflow.users AS u (uid, name, lname, credit_limit, credit_balance,
									created_at, updated_at)
	SELECT (e.v ->> 'uid')::numeric::bigint, e.v ->> 'name', e.v ->> 'lname',
		   (e.v ->> 'credit_limit')::numeric, (e.v ->> 'credit_balance')::numeric,
		   (e.v ->> 'created_at')::timestamptz, (e.v ->> 'updated_at')::timestamptz
	  FROM jsonb_array_elements(data -> 'users') AS e(v)
	 ORDER BY 1
	ON CONFLICT (uid) DO UPDATE
	   SET name = excluded.name, lname = excluded.lname,
		   credit_limit = excluded.credit_limit, credit_balance = excluded.credit_balance,
		   created_at = excluded.created_at, updated_at = excluded.updated_at;
	GET DIAGNOSTICS import_partition.users = ROW_COUNT;

	RETURN NEXT;
END
$$;

-- On the old owner, once the new one imported the partition: deletes the
-- users of partition p, its orders with their events and its applied user
-- events (they live on the new owner now).  Outbox rows stay: the relay
-- still publishes them to order.created.<p>, which the new owner consumes.
-- Refused while this node holds p.  Returns how many users and orders
-- were deleted.
CREATE FUNCTION ordflow.drop_partition(p int)
RETURNS TABLE(users bigint, orders bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids bigint[];
BEGIN
	PERFORM ordflow._partition_not_owned(p, 'drop');

	-- locked in key order, orders first, as a consumer's batch locks
	SELECT array_agg(x.order_id) INTO ids
	  FROM (SELECT r.order_id
			  FROM ordflow.orders AS r
			 WHERE ordflow.partition_of(coalesce(r.uid, r.order_id)) = p
			 ORDER BY r.order_id
			   FOR UPDATE) AS x;
	DELETE FROM ordflow.order_events AS e WHERE e.order_id = ANY (ids);
	DELETE FROM ordflow.orders AS r WHERE r.order_id = ANY (ids);
	GET DIAGNOSTICS drop_partition.orders = ROW_COUNT;

	SELECT array_agg(x.uid) INTO ids
	  FROM (SELECT r.uid
			  FROM ordflow.users AS r
			 WHERE ordflow.partition_of(r.uid) = p
			 ORDER BY r.uid
			   FOR UPDATE) AS x;
	DELETE FROM ordflow.users AS r WHERE r.uid = ANY (ids);
	GET DIAGNOSTICS drop_partition.users = ROW_COUNT;
	DELETE FROM ordflow.applied_user_events AS a WHERE a.partition = p;

	RETURN NEXT;
END
$$;

REVOKE ALL ON FUNCTION ordflow.export_partition(int) FROM PUBLIC;
REVOKE ALL ON FUNCTION ordflow.import_partition(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ordflow.drop_partition(int) FROM PUBLIC;
