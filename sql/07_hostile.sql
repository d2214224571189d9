--
-- 07_hostile: hostile arguments to every SQL function of the API, beyond
-- what 02..06 already try: NULL in every position, huge and non-finite
-- numbers, empty strings, 10 MB JSON, deep nesting, crafted keys.  Each is
-- either a clear ERROR with its SQLSTATE or, where the input is legal, a
-- harmless answer; and after each group the whole state is unchanged.
--
\set SHOW_CONTEXT never
-- 06 leaves the extension installed; be robust if that ever changes.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ordflow;
RESET client_min_messages;

-- Fingerprint of everything a call could change.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
	SELECT md5(concat_ws('/',
		(SELECT string_agg(format('%s|%s|%s|%s|%s|%s', uid, md5(name), md5(lname),
		                          credit_limit, credit_balance, updated_at), ';' ORDER BY uid)
		   FROM ordflow.users),
		(SELECT string_agg(format('%s|%s|%s|%s|%s|%s', order_id, uid, symbol, quantity, amount, status), ';' ORDER BY order_id)
		   FROM ordflow.orders),
		(SELECT count(*) FROM ordflow.order_events),
		(SELECT count(*) FROM ordflow.outbox),
		(SELECT count(*) FROM ordflow.dead_letters),
		(SELECT count(*) FROM ordflow.metrics_totals),
		(SELECT count(*) FROM ordflow.metrics_minute),
		(SELECT format('%s|%s|%s', running, rate, updated_at) FROM ordflow.generator_state),
		(SELECT format('%s|%s', last_value, is_called) FROM ordflow.order_id_seq)))
$$;

SELECT running FROM ordflow.generator_state;
SELECT ordflow.create_user('Ann', 'Lee', 100) > 0 AS ann,
       ordflow.create_user('Bob', 'O''Neil', 50, 20) > 0 AS bob;
SELECT ordflow.place_order(amount => 1) > 0 AS placed;
SELECT pg_temp.state() AS before \gset

-- ---------------------------------------------------------------------------
-- NULL in every argument position.
SELECT regress_util.err($$SELECT ordflow.create_user(NULL, NULL, NULL, NULL)$$);
SELECT regress_util.err($$SELECT ordflow.create_user(NULL, 'x', 1, 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', NULL, 1, 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', NULL, 1)$$);
SELECT regress_util.err($$SELECT ordflow.update_users(NULL, NULL)$$);
SELECT regress_util.err($$SELECT ordflow.delete_users(NULL)$$);
SELECT regress_util.err($$SELECT ordflow.user_event(NULL)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(NULL, NULL, NULL, NULL)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(NULL, NULL, 'ABC', NULL)$$);
SELECT regress_util.err($$SELECT ordflow.truncate(NULL)$$);
SELECT regress_util.err($$SELECT ordflow._apply_generator_state(NULL, 1)$$);
-- STRICT functions answer NULL input with no rows / NULL, no error.
SELECT count(*) AS history_rows FROM ordflow.metrics_history(NULL);
SELECT ordflow._latency_percentile(NULL, NULL) IS NULL AS percentile_null;
-- JSON null where an object is expected.
SELECT regress_util.err($$SELECT ordflow.read_users('null')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('null', 'null')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', 'null')$$);
SELECT regress_util.err($$SELECT ordflow.delete_users('null')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('null')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": null}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "new_val": null}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": null, "lname": "x", "credit_limit": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": "x", "lname": "y", "credit_limit": null}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": {"uid": 1}, "new_val": null}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": null, "new_val": {"name": "x"}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "D", "condition": null}')$$);
-- A JSON null condition value means IS NULL: it matches nobody (no column is nullable).
SELECT count(*) AS matched FROM ordflow.read_users('{"uid": null}');
SELECT ordflow.update_users('{"name": null}', '{"name": "x"}') AS updated;
SELECT ordflow.delete_users('{"lname": null}') AS deleted;
SELECT pg_temp.state() = :'before' AS unchanged;
-- start(NULL) keeps the stored rate (rolled back: the generator stays off).
BEGIN;
SELECT ordflow.start(NULL) AS started;
SELECT running, rate = (SELECT rate FROM ordflow.generator_state) AS same_rate FROM ordflow.generator_state;
ROLLBACK;
SELECT pg_temp.state() = :'before' AS unchanged;

-- ---------------------------------------------------------------------------
-- Huge, tiny and non-finite numbers.
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 1e1000)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 1e16)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', -1e1000)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 1, 1e1000)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 'Infinity', 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', '-Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 'NaN', 'NaN')$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 1, 'Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1e1000)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1e16)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => -1e1000)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 'NaN', quantity => 1)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => '-Infinity', quantity => 1)$$);
-- Positive but written with more digits than a consumer reads (63 characters).
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1e-1000)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 1e-62)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => 5.000000000000000000000000000000000000000000000000000000000000000)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(uid => '9223372036854775808', amount => 1)$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => '2147483648')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => '-2147483648')$$);
SELECT regress_util.err($$SELECT ordflow.start('NaN')$$);
SELECT regress_util.err($$SELECT ordflow.start('Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.start('-Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.start(-1)$$);
SELECT regress_util.err($$SELECT ordflow.start(-0.0)$$);
SELECT regress_util.err($$SELECT ordflow.start(1e308)$$);
SELECT regress_util.err($$SELECT ordflow.start('1e309')$$);
SELECT regress_util.err($$SELECT ordflow._latency_percentile('{1}', 'NaN')$$);
SELECT regress_util.err($$SELECT ordflow._latency_percentile('{1}', '-Infinity')$$);
SELECT regress_util.err($$SELECT ordflow._latency_percentile('{1}', 1e308)$$);
SELECT regress_util.err($$SELECT * FROM ordflow.metrics_history('-100000000 years')$$);
SELECT regress_util.err($$SELECT * FROM ordflow.metrics_history('170000000 years')$$);
-- JSON numbers out of a column's range.
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": 1e1000}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": 9223372036854775808}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": 1e-1000}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": 1e1000}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_balance": -1e1000}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": -9223372036854775809}', '{"name": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": "x", "lname": "y", "credit_limit": 1e1000}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "D", "condition": {"uid": 1e20}}')$$);
-- Legal: a huge credit_limit condition just matches nobody.
SELECT count(*) AS matched FROM ordflow.read_users('{"credit_limit": 1e1000}');
SELECT pg_temp.state() = :'before' AS unchanged;

-- ---------------------------------------------------------------------------
-- Empty strings.
SELECT regress_util.err($$SELECT ordflow.read_users('')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('', '')$$);
SELECT regress_util.err($$SELECT ordflow.delete_users('')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": ""}')$$);
SELECT regress_util.err($$SELECT ordflow.start('')$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', '')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(amount => '')$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => 1, symbol => '')$$);
SELECT regress_util.err($$SELECT * FROM ordflow.metrics_history('')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"": ""}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"": ""}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": ""}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"created_at": ""}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": ""}')$$);
SELECT pg_temp.state() = :'before' AS unchanged;

-- ---------------------------------------------------------------------------
-- Crafted keys: quotes, semicolons, identifiers, escapes, look-alikes.
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid\"; DROP TABLE ordflow.users; --": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"name'' OR ''1''=''1": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"($1).uid": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"%I": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid ": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"\tuid": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"u\u0069d": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"n\u0430me": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid\u0000": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"name": "\u0000"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"name\"=name, credit_balance": 0}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_balance = 0 --": 0}')$$);
SELECT regress_util.err($$SELECT ordflow.delete_users('{"uid IS NOT NULL OR uid": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "R", "condition": {"uid;--": 1}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C\"; DROP TABLE ordflow.users; --"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": {"uid": 1}, "new_val": {"credit_balance\"=0,\"name": "x"}}')$$);
-- \u0069 decodes to "i": that key is plain uid, a legal condition.
SELECT count(*) AS matched FROM ordflow.read_users('{"u\u0069d": 1}');
-- Escaped-looking values are just values.
SELECT count(*) AS matched FROM ordflow.read_users('{"name": "\\u0000''; --"}');
SELECT ordflow.update_users('{"name": "x\"); DELETE FROM ordflow.users; --"}', '{"name": "y"}') AS updated;
SELECT pg_temp.state() = :'before' AS unchanged;

-- ---------------------------------------------------------------------------
-- Size: 10 MB objects, a 10 MB key, a 10 MB string, a 10 MB symbol.
SELECT jsonb_object_agg('k' || i, i) AS big FROM generate_series(1, 600000) AS i \gset
SELECT length(:'big') > 10000000 AS ten_mb;
SELECT regress_util.err(format('SELECT ordflow.read_users(%L)', :'big'));
SELECT regress_util.err(format('SELECT ordflow.update_users(%L, %L)', '{"uid": 1}', :'big'));
SELECT regress_util.err(format('SELECT ordflow.update_users(%L, %L)', :'big', '{"name": "x"}'));
SELECT regress_util.err(format('SELECT ordflow.delete_users(%L)', :'big'));
SELECT regress_util.err(format('SELECT ordflow.user_event(%L::jsonb || %L)', :'big', '{"type": "R"}'));
SELECT regress_util.err(format('SELECT ordflow.user_event(jsonb_build_object(%L, %L::jsonb))', 'type', :'big'));
SELECT regress_util.err(format('SELECT ordflow.user_event(jsonb_build_object(%L, %L, %L, %L::jsonb))',
                          'type', 'U', 'condition', :'big'));
\unset big
SELECT regress_util.err($$SELECT ordflow.read_users(jsonb_build_object(repeat('k', 10000000), 1))$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', jsonb_build_object(repeat('k', 10000000), 1))$$);
SELECT regress_util.err($$SELECT ordflow.user_event(jsonb_build_object('type', repeat('C', 10000000)))$$);
SELECT regress_util.err($$SELECT ordflow.read_users(jsonb_build_object('uid', repeat('1', 10000000)))$$);
SELECT regress_util.err($$SELECT ordflow.read_users(jsonb_build_object('credit_limit', repeat('9', 10000000)::numeric))$$);
SELECT regress_util.err($$SELECT ordflow.place_order(quantity => 1, symbol => repeat('S', 10000000))$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', repeat('9', 100000)::numeric)$$);
-- Legal though large: a 10 MB name is data (rolled back).
BEGIN;
SELECT count(*) AS matched FROM ordflow.read_users(jsonb_build_object('name', repeat('x', 10000000)));
SELECT ordflow.update_users('{"name": "Ann"}', jsonb_build_object('name', repeat('x', 10000000))) AS updated;
SELECT length(name) FROM ordflow.users WHERE lname = 'Lee';
ROLLBACK;
SELECT pg_temp.state() = :'before' AS unchanged;

-- ---------------------------------------------------------------------------
-- Deep nesting.  jsonb itself accepts 1000 levels; far deeper input is
-- refused by PostgreSQL's parser with a clean "stack depth" error.
SELECT regress_util.err(format($$SELECT ordflow.read_users('{"name": %s1%s}')$$, repeat('[', 1000), repeat(']', 1000)));
SELECT regress_util.err(format($$SELECT ordflow.read_users('{"uid": %s}')$$, repeat('{"a":', 1000) || '1' || repeat('}', 1000)));
SELECT regress_util.err(format($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": %s1%s}')$$, repeat('[', 1000), repeat(']', 1000)));
SELECT regress_util.err(format($$SELECT ordflow.user_event('{"type": "R", "condition": {"lname": %s1%s}}')$$, repeat('[', 1000), repeat(']', 1000)));
SELECT regress_util.err(format($$SELECT ordflow.user_event('{"type": "C", "x": %s1%s}')$$, repeat('[', 1000), repeat(']', 1000)));
SELECT regress_util.err(format($$SELECT ordflow.read_users('{"name": %s1%s}')$$, repeat($q$[$q$, 100000), repeat($q$]$q$, 100000)));
SELECT regress_util.err(format($$SELECT ordflow.user_event('%s1%s')$$, repeat($q${"type": "R", "condition": $q$, 100000), repeat($q$}$q$, 100000)));
SELECT pg_temp.state() = :'before' AS unchanged;

-- Every worker-facing state is as it was, and the generator never ran.
SELECT running FROM ordflow.generator_state;
SELECT count(*) AS orders, count(*) FILTER (WHERE status = 'initialised') AS initialised
  FROM ordflow.orders;

-- The longest amount a consumer reads (63 characters) is still accepted.
SELECT ordflow.place_order(amount => 999999999999999.12345678901234567890123456789012345678901234567)
       > 0 AS placed_63_characters;

-- clean up
SELECT ordflow.truncate(true);
