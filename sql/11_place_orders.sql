--
-- 11_place_orders: place_orders(jsonb) places many orders at once with
-- place_order()'s checks (the first bad element named by its index, and
-- nothing written), its rows (order, initialised event, outbox message)
-- and its transaction semantics; ids in input order, ids an outside
-- producer took skipped.  No broker here: the outbox rows stay visible.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ordflow;
RESET client_min_messages;
SELECT ordflow.truncate();
CREATE FUNCTION pg_temp.counts() RETURNS text LANGUAGE sql AS $$
	SELECT format('orders=%s events=%s outbox=%s',
	              (SELECT count(*) FROM ordflow.orders),
	              (SELECT count(*) FROM ordflow.order_events),
	              (SELECT count(*) FROM ordflow.outbox)) $$;

-- place_orders() draws ids as the order_id default does, with the node
-- id evaluated once: if this default changes, change place_orders() too.
SELECT pg_get_expr(d.adbin, d.adrelid) AS order_id_default
  FROM pg_attrdef AS d
  JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
 WHERE d.adrelid = 'ordflow.orders'::regclass AND a.attname = 'order_id';

-- NULL, not an array, empty.
SELECT regress_util.err($$SELECT ordflow.place_orders(NULL)$$);
SELECT regress_util.err($$SELECT ordflow.place_orders('{"amount": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.place_orders('"x"')$$);
SELECT count(*) AS no_rows FROM ordflow.place_orders('[]');

-- Every check; the index is the failing element's (0-based), not the
-- first element's.
SELECT j, regress_util.err(format('SELECT ordflow.place_orders(%L)', '[{"amount": 1}, ' || j || ']'))
  FROM (VALUES
	('null'), ('1'), ('"order"'), ('[{"amount": 2}]'),
	('{"amount": 1, "price": 2}'), ('{"amount": 1, "Uid": 2}'),
	('{"uid": "7", "amount": 1}'), ('{"uid": true, "amount": 1}'),
	('{"uid": 1.5, "amount": 1}'), ('{"uid": 9223372036854775808, "amount": 1}'),
	('{"amount": "10"}'), ('{"amount": "NaN"}'), ('{"amount": "Infinity"}'),
	('{"amount": {}}'), ('{"symbol": 5, "amount": 1}'), ('{"symbol": ["A"], "amount": 1}'),
	('{"quantity": "2"}'), ('{"quantity": 2.5}'), ('{"quantity": 2147483648}'),
	('{}'), ('{"uid": 1, "symbol": "ABC"}'), ('{"uid": null, "amount": null, "quantity": null}'),
	('{"amount": 0}'), ('{"amount": -3}'), ('{"amount": 1000000000000000.001}'),
	('{"amount": 1e400}'), ('{"amount": 1e-100}'),
	('{"quantity": 0}'), ('{"quantity": -1, "amount": 5}'),
	('{"quantity": 1, "symbol": ""}'), ('{"quantity": 1, "symbol": "ABCDEFGHIJKLM"}')
  ) AS t(j);
-- the hint is place_order()'s
\set VERBOSITY verbose
SELECT ordflow.place_orders('[{"amount": 1}, {"amount": 1}, {"amount": 0}]');
\set VERBOSITY default
-- nothing of a refused array was written
SELECT pg_temp.counts();

-- Valid orders: the same forms as place_order() accepts; JSON numbers
-- written 1.0 are integers.
SELECT last_value AS seq_before FROM ordflow.order_id_seq \gset
SELECT id - :seq_before AS id_offset
  FROM ordflow.place_orders('[{"amount": 10},
	{"quantity": 3, "symbol": "AB3"},
	{"uid": 7, "amount": 12.345, "symbol": "XYZ", "quantity": 4},
	{"uid": 12, "amount": 1e15},
	{"uid": null, "amount": 0.0001, "symbol": "q\"\\\n\t\u0001", "quantity": 1},
	{"symbol": "ABCDEFGHIJKL", "quantity": 2147483647},
	{"uid": 3.0, "quantity": 2.0}]') AS id;
SELECT pg_temp.counts();
SELECT order_id - :seq_before AS id_offset, uid, symbol, quantity, amount, status, source
  FROM ordflow.orders ORDER BY order_id;
SELECT e.order_id - :seq_before AS id_offset, e.uid, e.status, e.amount
  FROM ordflow.order_events AS e ORDER BY e.event_id;
-- outbox rows in input order, each the payload place_order() would write
SELECT b.order_id - :seq_before AS id_offset, b.kind, b.routing_key,
       b.payload = ordflow._order_payload(o.order_id, o.uid, o.symbol, o.quantity,
                                          o.amount, o.created_at) AS payload_as_place_order,
       (b.payload::jsonb - 'order_id' - 'created_at')::text AS payload
  FROM ordflow.outbox AS b JOIN ordflow.orders AS o USING (order_id)
 ORDER BY b.id;

-- The same order through place_order() and place_orders(): same rows
-- apart from ids and times.
SELECT ordflow.place_order(5, 2.5, 'SAME', 3) AS one \gset
SELECT id AS many FROM ordflow.place_orders('[{"uid": 5, "amount": 2.5, "symbol": "SAME", "quantity": 3}]') AS id \gset
SELECT count(DISTINCT (uid, symbol, quantity, amount, status, source)) AS distinct_orders
  FROM ordflow.orders WHERE order_id IN (:one, :many);
SELECT count(DISTINCT (payload::jsonb - 'order_id' - 'created_at')) AS distinct_payloads
  FROM ordflow.outbox WHERE order_id IN (:one, :many);

-- Ids an outside producer already took are skipped, and the ids still
-- come back in input order.
SELECT last_value AS seq_before FROM ordflow.order_id_seq \gset
INSERT INTO ordflow.orders (order_id, amount, source)
SELECT :seq_before + g, 99, 'broker' FROM generate_series(2, 3) AS g;
-- (the ids are kept first: a query sees no row its own functions wrote)
CREATE TEMP TABLE placed AS
SELECT p.id, p.k
  FROM ordflow.place_orders('[{"amount": 1}, {"amount": 2}, {"amount": 3}, {"amount": 4}]')
	   WITH ORDINALITY AS p(id, k);
SELECT p.id - :seq_before AS id_offset, o.amount
  FROM placed AS p JOIN ordflow.orders AS o ON o.order_id = p.id
 ORDER BY p.k;
SELECT count(*) AS outside_rows_untouched
  FROM ordflow.orders WHERE order_id IN (:seq_before + 2, :seq_before + 3) AND amount = 99;
SELECT count(*) AS outbox_for_outside_rows
  FROM ordflow.outbox WHERE order_id IN (:seq_before + 2, :seq_before + 3);

-- Rows in the caller's transaction: a rollback (or a rolled-back
-- savepoint) leaves nothing.
SELECT pg_temp.counts() AS before \gset
BEGIN;
SELECT count(*) FROM ordflow.place_orders('[{"amount": 1}, {"amount": 2}]');
SELECT pg_temp.counts() <> :'before' AS seen_in_transaction;
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT count(*) FROM ordflow.place_orders('[{"amount": 1}, {"amount": 2}]');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT pg_temp.counts() = :'before' AS nothing_left;

-- Many orders: as many ids as orders, distinct, in input order.
TRUNCATE placed;
INSERT INTO placed
SELECT p.id, p.k
  FROM ordflow.place_orders((SELECT jsonb_agg(jsonb_build_object('amount', g) ORDER BY g)
                               FROM generate_series(1, 5000) AS g))
       WITH ORDINALITY AS p(id, k);
SELECT count(*) AS n, count(DISTINCT p.id) AS distinct_ids,
       bool_and(o.amount = p.k) AS amounts_match
  FROM placed AS p JOIN ordflow.orders AS o ON o.order_id = p.id;

-- Privileges: EXECUTE is all a role needs; without it, refused.
CREATE ROLE ordflow_regress_bulk;
CREATE ROLE ordflow_regress_nobulk;
GRANT USAGE ON SCHEMA ordflow TO ordflow_regress_bulk, ordflow_regress_nobulk;
GRANT EXECUTE ON FUNCTION ordflow.place_orders(jsonb) TO ordflow_regress_bulk;
SET ROLE ordflow_regress_bulk;
SELECT count(*) AS placed FROM ordflow.place_orders('[{"amount": 5, "symbol": "BULK"}]');
SELECT regress_util.err($$INSERT INTO ordflow.orders (amount) VALUES (1)$$);
SELECT regress_util.err($$SELECT ordflow._place_orders_check('{}', 1, 1, 1)$$);
RESET ROLE;
SET ROLE ordflow_regress_nobulk;
SELECT regress_util.err($$SELECT ordflow.place_orders('[{"amount": 5}]')$$);
RESET ROLE;
SELECT count(*) AS bulk_orders FROM ordflow.orders WHERE symbol = 'BULK';
REVOKE ALL ON FUNCTION ordflow.place_orders(jsonb) FROM ordflow_regress_bulk;
REVOKE ALL ON SCHEMA ordflow FROM ordflow_regress_bulk, ordflow_regress_nobulk;
DROP ROLE ordflow_regress_bulk;
DROP ROLE ordflow_regress_nobulk;
SELECT ordflow.truncate();

-- One partition (ordflow.partitions = 1, as everywhere in this suite):
-- every uid and order is in partition 0, which this node holds; orders
-- are routed order.created as in 1.0, uids are 1, 2, 3, ... (02_users);
-- export/import/drop_partition() are refused.
SELECT ordflow._partitions() AS partitions, ordflow._owned_partitions() AS owned,
       ordflow.partition_of(12345) AS p_12345, ordflow.partition_of(-7) AS p_minus_7,
       ordflow.partition_of(-9223372036854775808) AS p_min,
       ordflow._order_routing_key(5, 7, 1) AS key_uid,
       ordflow._order_routing_key(NULL, 7, 1) AS key_no_uid,
       ordflow._order_routing_key(6, 7, 4) AS key_of_4,
       ordflow._order_routing_key(NULL, 7, 4) AS key_no_uid_of_4;
SELECT ordflow.place_order(3, 1, 'ONE', 1) IS NOT NULL AS placed;
SELECT count(*) AS placed FROM ordflow.place_orders('[{"amount": 1}, {"uid": 2, "amount": 2}]');
SELECT kind, routing_key, count(*) FROM ordflow.outbox GROUP BY 1, 2;
SELECT (SELECT count(*) FROM ordflow.outbox) = (SELECT count(*) FROM ordflow.orders) AS a_row_per_message;
SELECT pg_get_expr(d.adbin, d.adrelid) AS uid_default
  FROM pg_attrdef AS d
  JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
 WHERE d.adrelid = 'ordflow.users'::regclass AND a.attname = 'uid';
SELECT regress_util.err($$SELECT ordflow.export_partition(0)$$);
SELECT regress_util.err($$SELECT ordflow.drop_partition(0)$$);
SELECT regress_util.err($$SELECT ordflow.export_partition(1)$$);
SELECT regress_util.err($$SELECT ordflow.import_partition('{"partitions": 1, "partition": 0, "users": [], "orders": [], "events": [], "applied_user_events": []}')$$);
SELECT regress_util.err($$SELECT ordflow.import_partition('{"partitions": 4, "partition": 1, "users": [], "orders": [], "events": [], "applied_user_events": []}')$$);
SELECT regress_util.err($$SELECT ordflow.import_partition('[]')$$);
-- The outbox takes the consumer's 'forward' rows.
INSERT INTO ordflow.outbox (kind, routing_key, raw_body) VALUES ('forward', 'order.created.0', '\x7b7d');
SELECT regress_util.err($$INSERT INTO ordflow.outbox (kind, routing_key, raw_body) VALUES ('forwarded', 'x', '\x7b7d')$$);
SELECT ordflow.truncate();
