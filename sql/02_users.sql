--
-- 02_users: user functions, their validation and their atomicity.
--
\set SHOW_CONTEXT never
-- A fingerprint of the whole users table, to show a failed call changed nothing.
CREATE FUNCTION pg_temp.users_state() RETURNS text LANGUAGE sql AS $$
	SELECT coalesce(string_agg(format('%s|%s|%s|%s|%s|%s', uid, name, lname,
	                                  credit_limit, credit_balance, updated_at),
	                           ';' ORDER BY uid), '<empty>')
	  FROM ordflow.users $$;
CREATE TEMP VIEW u AS
	SELECT uid, name, lname, credit_limit, credit_balance,
	       updated_at > created_at AS updated
	  FROM ordflow.users ORDER BY uid;

-- create_user: balance defaults to the limit; quotes are just data.
SELECT ordflow.create_user('Ann', 'Lee', 100);
SELECT ordflow.create_user('Bob', 'O''Neil', 50, 20);
SELECT ordflow.create_user('Robert''); DROP TABLE ordflow.users; --', 'x"y\z', 0);
SELECT ordflow.create_user('', '', 1e15, 0.5);
SELECT * FROM u;

-- create_user refusals
SELECT pg_temp.users_state() AS before \gset
SELECT regress_util.err($$SELECT ordflow.create_user(NULL, 'x', 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', NULL, 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', NULL)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', -1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 1e15 + 1)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 'NaN')$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 'Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 10, 11)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 10, -0.01)$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 10, 'NaN')$$);
SELECT regress_util.err($$SELECT ordflow.create_user('x', 'y', 10, '-Infinity')$$);
SELECT pg_temp.users_state() = :'before' AS unchanged;

-- read_users: AND-ed conditions, every column type, JSON null = IS NULL.
SELECT uid, name FROM ordflow.read_users();
SELECT uid, name FROM ordflow.read_users('{}');
SELECT uid, name FROM ordflow.read_users('{"uid": 2}');
SELECT uid, name FROM ordflow.read_users('{"uid": 2.0}');
SELECT uid, name FROM ordflow.read_users('{"lname": "O''Neil"}');
SELECT uid, name FROM ordflow.read_users('{"name": "Robert''); DROP TABLE ordflow.users; --"}');
SELECT uid, name FROM ordflow.read_users('{"lname": "x\"y\\z"}');
SELECT uid, name FROM ordflow.read_users('{"name": ""}');
SELECT uid, name FROM ordflow.read_users('{"credit_limit": 100, "credit_balance": 100}');
SELECT uid, name FROM ordflow.read_users('{"credit_limit": 100, "credit_balance": 99}');
SELECT uid, name FROM ordflow.read_users('{"credit_balance": 0.50}');
SELECT uid, name FROM ordflow.read_users('{"name": null}');
SELECT uid, name FROM ordflow.read_users('{"uid": 9223372036854775807}');
SELECT count(*) FROM ordflow.read_users(
	jsonb_build_object('created_at', (SELECT created_at FROM ordflow.users WHERE uid = 1)::text,
	                   'uid', 1));

-- read_users refusals: unknown keys, injection-looking keys, wrong JSON types,
-- not an object, NULL.
SELECT regress_util.err($$SELECT ordflow.read_users('{"password": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid; DROP TABLE ordflow.users; --": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid = uid OR true --": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"\"uid\"": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"UID": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": "1"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": "1 OR 1=1"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": 1.5}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": 1e30}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": true}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"uid": [1, 2]}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"name": 5}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"name": {"a": 1}}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"credit_limit": "100"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"created_at": "yesterday-ish"}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('{"updated_at": 12}')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('[{"uid": 1}]')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('"uid"')$$);
SELECT regress_util.err($$SELECT ordflow.read_users('null')$$);
SELECT regress_util.err($$SELECT ordflow.read_users(NULL)$$);
-- The table survived the injection attempts.
SELECT count(*) FROM ordflow.users;

-- update_users
SELECT pg_temp.users_state() AS before \gset
SELECT ordflow.update_users('{"uid": 1}', '{"credit_balance": 60.25}');
SELECT ordflow.update_users('{"lname": "O''Neil"}', '{"name": "Bobby''; --", "credit_limit": 70, "credit_balance": 70}');
SELECT ordflow.update_users('{"uid": 12345}', '{"name": "nobody"}');
SELECT * FROM u;
-- Only the changed rows have a new updated_at.
SELECT pg_temp.users_state() AS before \gset
-- Several rows at once, conditions AND-ed.
SELECT ordflow.update_users('{"credit_limit": 70, "uid": 2}', '{"lname": "O''Neil-Smith"}');
SELECT ordflow.update_users('{"credit_limit": 70, "uid": 1}', '{"lname": "nope"}');
SELECT uid, lname FROM u;
SELECT pg_temp.users_state() AS before \gset

-- update_users refusals; each leaves the table as it was.
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"uid": 7}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"uid": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"created_at": "2020-01-01"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"updated_at": "2020-01-01"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"name = ''x'', credit_balance": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"password": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '[]')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', NULL)$$);
SELECT regress_util.err($$SELECT ordflow.update_users(NULL, '{"name": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"bogus": 1}', '{"name": "x"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"name": null}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"lname": null}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": null}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_balance": null}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"name": 42}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": "100"}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_balance": -1}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_balance": 100.01}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": -5}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": 1e16}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": 1e400}')$$);
SELECT regress_util.err($$SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": 60}')$$);
-- An empty condition is refused, as delete_users refuses it (1.1).
SELECT regress_util.err($$SELECT ordflow.update_users('{}', '{"credit_limit": 0.6}')$$);
SELECT pg_temp.users_state() = :'before' AS unchanged;
-- Limit and balance may move together.
SELECT ordflow.update_users('{"uid": 1}', '{"credit_limit": 10, "credit_balance": 10}');
SELECT uid, credit_limit, credit_balance FROM u WHERE uid = 1;

-- delete_users
SELECT pg_temp.users_state() AS before \gset
SELECT regress_util.err($$SELECT ordflow.delete_users('{}')$$);
SELECT regress_util.err($$SELECT ordflow.delete_users(NULL)$$);
SELECT regress_util.err($$SELECT ordflow.delete_users('{"uid": "2"}')$$);
SELECT regress_util.err($$SELECT ordflow.delete_users('{"1=1 OR uid": 2}')$$);
SELECT regress_util.err($$SELECT ordflow.delete_users('[]')$$);
SELECT pg_temp.users_state() = :'before' AS unchanged;
-- The refusal for {} carries a hint.
\set VERBOSITY default
SELECT ordflow.delete_users('{}');
SELECT ordflow.delete_users('{"uid": 12345}');
SELECT ordflow.delete_users('{"name": "Robert''); DROP TABLE ordflow.users; --"}');
SELECT uid, name FROM u;

-- user_event: the seed's C/R/U/D events.
SELECT ordflow.user_event('{"type": "C", "name": "Cy", "lname": "Zed", "credit_limit": 5}');
SELECT ordflow.user_event('{"type": "C", "new_val": {"name": "Di", "lname": "Zed", "credit_limit": 7, "credit_balance": 1.5}}');
SELECT ordflow.user_event('{"type": "c", "name": "Ed", "lname": "Zed", "credit_limit": 0, "credit_balance": null}');
SELECT uid, name, lname, credit_limit, credit_balance FROM u WHERE lname = 'Zed';
-- R returns rows as JSON (timestamps removed here: they are not stable).
SELECT jsonb_pretty(jsonb_set(e, '{users}',
	(SELECT jsonb_agg(x - 'created_at' - 'updated_at') FROM jsonb_array_elements(e -> 'users') AS x)))
  FROM ordflow.user_event('{"type": "R", "condition": {"lname": "Zed", "credit_limit": 7}}') AS e;
SELECT ordflow.user_event('{"type": "R", "condition": {"uid": 424242}}');
SELECT jsonb_array_length(ordflow.user_event('{"type": "R"}') -> 'users') AS all_users;
-- The R result carries every column.
SELECT (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(e -> 'users' -> 0) AS k)
  FROM ordflow.user_event('{"type": "R", "condition": {"uid": 1}}') AS e;
SELECT ordflow.user_event('{"type": "U", "condition": {"lname": "Zed"}, "new_val": {"credit_balance": 0}}');
SELECT ordflow.user_event('{"type": "D", "condition": {"name": "Cy", "lname": "Zed"}}');
SELECT uid, name, credit_balance FROM u WHERE lname = 'Zed';

-- Bad events change nothing.
SELECT pg_temp.users_state() AS before \gset
SELECT regress_util.err($$SELECT ordflow.user_event(NULL)$$);
SELECT regress_util.err($$SELECT ordflow.user_event('[]')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": 1}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "X"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": "a", "lname": "b"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": "a", "lname": "b", "credit_limit": "10"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": "a", "lname": "b", "credit_limit": 10, "credit_balance": 11}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "uid": 1, "name": "a", "lname": "b", "credit_limit": 10}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "name": "a", "lname": "b", "credit_limit": 10, "admin": true}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "new_val": {"name": "a", "lname": "b", "credit_limit": 10}, "name": "c"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "new_val": "a"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "C", "new_val": {"uid": 9, "name": "a", "lname": "b", "credit_limit": 10}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "R", "condition": {"nope": 1}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "R", "condition": null}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "R", "where": {"uid": 1}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "new_val": {"name": "a"}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": {"uid": 1}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": {"uid": 1}, "new_val": {"uid": 2}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "U", "condition": {"uid": 1}, "new_val": {"credit_balance": 1000}}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "D"}')$$);
SELECT regress_util.err($$SELECT ordflow.user_event('{"type": "D", "condition": {}}')$$);
SELECT pg_temp.users_state() = :'before' AS unchanged;

-- read_users is STABLE: usable in a query, sees the calling snapshot.
SELECT count(*) FROM ordflow.users AS x
 WHERE x.uid IN (SELECT uid FROM ordflow.read_users('{"lname": "Zed"}'));

-- Everything happens in the caller's transaction.
BEGIN;
SELECT ordflow.create_user('Tx', 'Rollback', 1) IS NOT NULL AS created;
SELECT ordflow.update_users('{"lname": "Rollback"}', '{"credit_balance": 0}') > 0 AS updated;
ROLLBACK;
SELECT pg_temp.users_state() = :'before' AS unchanged;
