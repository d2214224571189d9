--
-- 03_orders: place_order writes the order, its initialised event and its
-- outbox message in the caller's transaction, and refuses bad input.
--
\set SHOW_CONTEXT never
CREATE FUNCTION pg_temp.counts() RETURNS text LANGUAGE sql AS $$
	SELECT format('orders=%s events=%s outbox=%s',
	              (SELECT count(*) FROM ordflow.orders),
	              (SELECT count(*) FROM ordflow.order_events),
	              (SELECT count(*) FROM ordflow.outbox)) $$;

SELECT pg_temp.counts();
SELECT last_value AS seq_before FROM ordflow.order_id_seq \gset

-- Valid orders: amount only, quantity only, both, with user and symbol,
-- named arguments, characters that need JSON escaping.
SELECT ordflow.place_order(amount => 10) - :seq_before AS id_offset;
SELECT ordflow.place_order(quantity => 3, symbol => 'AB3') - :seq_before AS id_offset;
SELECT ordflow.place_order(7, 12.345, 'XYZ', 4) - :seq_before AS id_offset;
SELECT ordflow.place_order(uid => 12, amount => 1e15) - :seq_before AS id_offset;
SELECT ordflow.place_order(NULL, 0.0001, E'q"\\\n\t\x01', 1) - :seq_before AS id_offset;
SELECT ordflow.place_order(symbol => 'ABCDEFGHIJKL', quantity => 2147483647) - :seq_before AS id_offset;
SELECT pg_temp.counts();

SELECT order_id - :seq_before AS id, uid, symbol, quantity, amount, status,
       execution_price, notes, processed_at, source
  FROM ordflow.orders ORDER BY order_id;
SELECT order_id - :seq_before AS id, uid, status, amount, notes
  FROM ordflow.order_events ORDER BY event_id;

-- The outbox payload is the order message: valid JSON, typed values, escaped
-- strings, created_at equal to the order's, in UTC with microseconds.
SELECT o.order_id - :seq_before AS id, o.routing_key,
       (o.payload::jsonb ->> 'order_id')::bigint = o.order_id AS id_ok,
       o.payload::jsonb - 'order_id' - 'created_at' AS message
  FROM ordflow.outbox AS o ORDER BY o.id;
SELECT bool_and((b.payload::jsonb ->> 'created_at')::timestamptz = a.created_at) AS same_time,
       bool_and(b.payload::jsonb ->> 'created_at'
                ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$') AS rfc3339_utc,
       bool_and(jsonb_typeof(b.payload::jsonb -> 'amount') IN ('number', 'null')) AS amount_typed,
       bool_and(json_typeof(b.payload::json) = 'object') AS is_object
  FROM ordflow.orders AS a JOIN ordflow.outbox AS b USING (order_id);
-- The symbol survives escaping byte for byte.
SELECT bool_and(b.payload::jsonb ->> 'symbol' IS NOT DISTINCT FROM a.symbol) AS symbol_roundtrip
  FROM ordflow.orders AS a JOIN ordflow.outbox AS b USING (order_id);

-- Refusals (22023), nothing written.
SELECT regress_util.err($$SELECT ordflow.place_order()$$);
SELECT regress_util.err($$SELECT ordflow.place_order(uid => 1)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(symbol => 'ABC')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 0)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => -3)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 'NaN')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 'Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => '-Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1e15 + 0.001)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1e400)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => 0)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => -1, amount => 5)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => 1, symbol => '')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => 1, symbol => 'ABCDEFGHIJKLM')$$);
SELECT pg_temp.counts();
\set VERBOSITY default
SELECT ordflow.place_order(amount => -1);
SELECT ordflow.place_order(quantity => 1, symbol => 'TOO-LONG-SYMBOL');

-- A rolled-back order leaves nothing behind (and so is never published).
BEGIN;
SELECT ordflow.place_order(amount => 5) > :seq_before AS placed;
SELECT pg_temp.counts();
ROLLBACK;
SELECT pg_temp.counts();
-- Same when only a savepoint is rolled back.
BEGIN;
SAVEPOINT s;
SELECT ordflow.place_order(quantity => 1) > :seq_before AS placed;
ROLLBACK TO SAVEPOINT s;
SELECT ordflow.place_order(quantity => 2) > :seq_before AS placed;
COMMIT;
SELECT pg_temp.counts();
SELECT quantity FROM ordflow.orders WHERE order_id > :seq_before + 6;

-- Every order has exactly one initialised event and one outbox row.
SELECT count(*) AS orders_without_both
  FROM ordflow.orders AS o
 WHERE (SELECT count(*) FROM ordflow.order_events AS e
         WHERE e.order_id = o.order_id AND e.status = 'initialised') <> 1
    OR (SELECT count(*) FROM ordflow.outbox AS b WHERE b.order_id = o.order_id) <> 1;
