--
-- 06_privileges: control functions are not for PUBLIC, tables are not open
-- to roles without grants, and a hostile search_path changes nothing.
--
\set SHOW_CONTEXT never

CREATE ROLE ordflow_regress_nobody;
CREATE ROLE ordflow_regress_operator;
GRANT USAGE ON SCHEMA ordflow TO ordflow_regress_nobody, ordflow_regress_operator;
GRANT EXECUTE ON FUNCTION ordflow.start(double precision), ordflow.stop(),
	ordflow.truncate(boolean) TO ordflow_regress_operator;

SET ROLE ordflow_regress_nobody;
SELECT regress_util.err($$SELECT ordflow.start()$$);
SELECT regress_util.err($$SELECT ordflow.stop()$$);
SELECT regress_util.err($$SELECT ordflow.truncate()$$);
SELECT regress_util.err($$SELECT ordflow.truncate(true)$$);
SELECT regress_util.err($$SELECT ordflow._apply_generator_state(true, 1)$$);
SELECT regress_util.err($$SELECT ordflow._truncated()$$);
SELECT regress_util.err($$SELECT * FROM ordflow.users$$);
SELECT regress_util.err($$SELECT * FROM ordflow.orders$$);
SELECT regress_util.err($$DELETE FROM ordflow.outbox$$);
SELECT regress_util.err($$UPDATE ordflow.generator_state SET running = true$$);
SELECT regress_util.err($$SELECT * FROM ordflow.dead_letters$$);
-- The data functions run with the caller's rights, so without grants on the
-- tables they are refused too.
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('a', 'b', 1)$$);
SELECT regress_util.err($$SELECT * FROM ordflow.read_users()$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "R"}')$$);
SELECT regress_util.err($$SELECT * FROM ordflow.metrics()$$);
RESET ROLE;
SELECT running, rate FROM ordflow.generator_state;

-- EXECUTE on a control function is all an operator role needs.
SET ROLE ordflow_regress_operator;
BEGIN;
SELECT ordflow.start(2);
SELECT ordflow.stop();
ROLLBACK;
SELECT ordflow.truncate();
SELECT regress_util.err($$SELECT * FROM ordflow.generator_state$$);
RESET ROLE;

-- Hostile search_path: a schema placed first shadows operators, functions
-- and tables the API uses.  The API must not pick any of them up.
CREATE SCHEMA evil;
CREATE TABLE evil.log (what text);
CREATE FUNCTION evil.always(text, text) RETURNS boolean LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('operator = on text'); SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always);
CREATE FUNCTION evil.always(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('operator = on bigint'); SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.always);
CREATE FUNCTION evil.always(numeric, numeric) RETURNS boolean LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('operator >= on numeric'); SELECT true $$;
CREATE OPERATOR evil.>= (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.always);
CREATE OPERATOR evil.> (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.always);
CREATE OPERATOR evil.<= (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.always);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('now()'); SELECT '2000-01-01'::timestamptz $$;
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('jsonb_typeof()'); SELECT 'object'::text $$;
CREATE FUNCTION evil.array_to_string(anyarray, text) RETURNS text LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('array_to_string()'); SELECT 'true'::text $$;
CREATE FUNCTION evil.char_length(text) RETURNS int LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('char_length()'); SELECT 5 $$;
CREATE FUNCTION evil.upper(text) RETURNS text LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('upper()'); SELECT 'D'::text $$;
CREATE FUNCTION evil.to_char(timestamp, text) RETURNS text LANGUAGE sql AS $$
	INSERT INTO evil.log VALUES ('to_char()'); SELECT 'forged'::text $$;
CREATE TABLE evil.users (LIKE ordflow.users);
CREATE TABLE evil.orders (LIKE ordflow.orders);
CREATE TABLE evil.outbox (LIKE ordflow.outbox);
GRANT ALL ON SCHEMA evil TO PUBLIC;
GRANT ALL ON ALL TABLES IN SCHEMA evil TO PUBLIC;

-- The same in a temporary schema, which pg_temp puts first for relations.
CREATE TEMP TABLE users (LIKE ordflow.users);
CREATE TEMP TABLE generator_state (LIKE ordflow.generator_state);

SET search_path = evil, pg_catalog, public;
-- The shadowing works on unqualified names in the caller's own query ...
SELECT 'a' = 'b' AS shadowed;
SELECT count(*) > 0 AS logged FROM evil.log;
TRUNCATE evil.log;

-- ... but not inside the API.
SELECT ordflow.create_user('Eve', 'Mallory', 100, 40) AS eve \gset
SELECT ordflow.create_user('Vic', 'Tim', 10) AS vic \gset
SELECT name, credit_balance FROM ordflow.read_users(jsonb_build_object('uid', :eve::bigint));
SELECT count(*) AS only_one FROM ordflow.read_users('{"name": "Vic"}');
SELECT ordflow.update_users(jsonb_build_object('uid', :vic::bigint), '{"credit_balance": 5}') AS updated;
SELECT regress_util.err($$SELECT ordflow.update_users('{"name": "Eve"}', '{"credit_balance": 1000}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"nope": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => -1)$$);
SELECT ordflow.user_event('{"type": "U", "condition": {"name": "Nobody"}, "new_val": {"name": "x"}}');
SELECT ordflow.user_event('{"type": "R", "condition": {"name": "Vic"}}') -> 'users' -> 0 -> 'credit_balance' AS vic_balance;
SELECT ordflow.place_order(uid => :eve, amount => 2.5) AS oid \gset
SELECT orders_processed, avg_execution_price FROM ordflow.metrics();
SELECT ordflow.delete_users(jsonb_build_object('uid', :vic::bigint)) AS deleted;
BEGIN;
SELECT ordflow.start(1);
SELECT ordflow.stop();
ROLLBACK;
-- No evil object was called and no shadow table was written.
SELECT what AS evil_call FROM evil.log;
SELECT (SELECT pg_catalog.count(*) FROM evil.users) AS evil_users,
       (SELECT pg_catalog.count(*) FROM evil.orders) AS evil_orders,
       (SELECT pg_catalog.count(*) FROM evil.outbox) AS evil_outbox,
       (SELECT pg_catalog.count(*) FROM pg_temp.generator_state) AS temp_state;
RESET search_path;

-- Checked with a clean search_path (the caller's own joins would use evil.=).
SELECT o.uid = :eve AS uid_ok, o.amount, b.payload::jsonb ->> 'amount' AS payload_amount,
       (b.payload::jsonb ->> 'created_at')::timestamptz = o.created_at AS created_at_ok
  FROM ordflow.orders AS o JOIN ordflow.outbox AS b USING (order_id)
 WHERE o.order_id = :oid;
SELECT uid = :eve AS eve, name, credit_balance FROM ordflow.users ORDER BY uid;
SELECT count(*) AS temp_users FROM pg_temp.users;

-- clean up
SELECT ordflow.truncate(true);
DROP SCHEMA evil CASCADE;
REVOKE ALL ON SCHEMA ordflow FROM ordflow_regress_nobody, ordflow_regress_operator;
REVOKE ALL ON FUNCTION ordflow.start(double precision), ordflow.stop(),
	ordflow.truncate(boolean) FROM ordflow_regress_operator;
DROP ROLE ordflow_regress_nobody;
DROP ROLE ordflow_regress_operator;
