--
-- 08_trust: the trust boundaries of 1.1 on the SQL side.  A role that may
-- place orders writes no table itself; update_users refuses an empty
-- condition; dead letters keep one copy of their body; status() shows
-- host names, ports and paths only to roles that may read settings.
--
\set SHOW_CONTEXT never

CREATE ROLE ordflow_regress_placer;
CREATE ROLE ordflow_regress_stranger;
GRANT USAGE ON SCHEMA ordflow TO ordflow_regress_placer, ordflow_regress_stranger;
GRANT EXECUTE ON FUNCTION ordflow.place_order(bigint, numeric, text, int) TO ordflow_regress_placer;

-- EXECUTE is all a placing role needs, and all it gets.
SET ROLE ordflow_regress_placer;
SELECT ordflow.place_order(amount => 5, symbol => 'TRU') > 0 AS placed;
SELECT regress_util.err($$INSERT INTO ordflow.outbox (order_id, routing_key, payload) VALUES (1, 'user.D', '{"type":"D","condition":{}}')$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (amount) VALUES (1)$$);
SELECT regress_util.err($$INSERT INTO ordflow.order_events (order_id, status) VALUES (1, 'completed')$$);
SELECT regress_util.err($$UPDATE ordflow.outbox SET routing_key = 'user.D'$$);
SELECT regress_util.err($$SELECT count(*) FROM ordflow.dead_letters$$);
RESET ROLE;

-- Without the grant, placing is refused.
SET ROLE ordflow_regress_stranger;
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 5)$$);
RESET ROLE;

-- The order the placer made is queued like any other.
SELECT o.symbol, o.source, b.kind, b.routing_key
  FROM ordflow.orders AS o JOIN ordflow.outbox AS b USING (order_id)
 WHERE o.symbol = 'TRU';

-- update_users refuses an empty condition, as delete_users does.
SELECT ordflow.create_user('Trust', 'Test', 10) > 0 AS created;
SELECT regress_util.err($$SELECT ordflow.update_users('{}', '{"credit_balance": 0}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": {}, "new_val": {"credit_balance": 0}}')$$);
SELECT credit_balance FROM ordflow.users WHERE lname = 'Test';

-- Dead letters: one copy of the body; body_text is computed, NULL when the
-- body is not text.
INSERT INTO ordflow.dead_letters_raw (queue, routing_key, body, body_size, error)
VALUES ('q', 'order.created', convert_to('{"order_id": "x"}', 'UTF8'), 17, 'test'),
       ('q', 'order.created', '\xff00fe'::bytea, 3, 'test binary');
SELECT error, body_text, body_size, origin FROM ordflow.dead_letters ORDER BY id;
SELECT count(*) AS text_columns
  FROM pg_attribute
 WHERE attrelid = 'ordflow.dead_letters_raw'::regclass AND attname = 'body_text';
DELETE FROM ordflow.dead_letters WHERE error = 'test binary';
SELECT count(*) FROM ordflow.dead_letters_raw;

-- status(): the workers cannot reach the broker here (port 1), so
-- last_error names the host and port; a role without pg_read_all_settings
-- sees only the class of the error, and no node.
SELECT pg_sleep(0.1) FROM generate_series(1, 300)
 WHERE NOT EXISTS (SELECT FROM ordflow.status() WHERE worker = 'relay' AND last_error IS NOT NULL)
 LIMIT 1 \g /dev/null
SELECT last_error LIKE '%127.0.0.1:1%' AS superuser_sees_host
  FROM ordflow.status() WHERE worker = 'relay';
GRANT EXECUTE ON FUNCTION ordflow.status() TO ordflow_regress_stranger;
SET ROLE ordflow_regress_stranger;
SELECT last_error, node FROM ordflow.status() WHERE worker = 'relay';
RESET ROLE;
GRANT pg_read_all_settings TO ordflow_regress_stranger;
SET ROLE ordflow_regress_stranger;
SELECT last_error LIKE '%127.0.0.1:1%' AS reader_sees_host
  FROM ordflow.status() WHERE worker = 'relay';
RESET ROLE;

-- clean up
SELECT ordflow.truncate(true);
DROP OWNED BY ordflow_regress_placer, ordflow_regress_stranger;
DROP ROLE ordflow_regress_placer, ordflow_regress_stranger;
