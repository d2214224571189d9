--
-- 10_dead_letters: retry_dead_letters() republishes stored dead letters
-- through the outbox (as 'retry' rows, body and properties as received) and
-- deletes them, in the caller's transaction; purge_dead_letters() deletes
-- by age.  Neither is for PUBLIC.  No broker here: the relay stays
-- disconnected, so the outbox rows these calls write stay visible.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ordflow;
RESET client_min_messages;
-- err(sql): "SQLSTATE: message (detail)"; dead-letter ids are shown
-- relative to :first_id (identities are never restarted).
CREATE FUNCTION pg_temp.err(q text, base bigint DEFAULT 0) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	msg text;
	det text;
	id  text;
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
	id := substring(msg FROM 'dead letter (\d+)');
	IF id IS NOT NULL THEN
		msg := replace(msg, 'letter ' || id, 'letter first+' || (id::bigint - base));
	END IF;
	RETURN SQLSTATE || ': ' || msg || coalesce(' (' || nullif(det, '') || ')', '');
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text, bigint) TO PUBLIC;
-- (explicit deletes: no identity restarts, ids are taken relative)
CREATE FUNCTION pg_temp.empty() RETURNS void LANGUAGE sql AS $$
	DELETE FROM ordflow.outbox;
	DELETE FROM ordflow.dead_letters_raw;
$$;
SELECT pg_temp.empty();

-- Attributes: SECURITY DEFINER, pinned search_path, truthful volatility.
SELECT p.oid::regprocedure AS function, p.prosecdef, p.provolatile,
       p.proparallel, p.proisstrict, p.proconfig,
       pg_get_function_arguments(p.oid) AS arguments,
       p.prorettype::regtype AS returns
  FROM pg_proc AS p
 WHERE p.pronamespace = 'ordflow'::regnamespace
   AND p.proname IN ('retry_dead_letters', 'purge_dead_letters')
 ORDER BY 1::text;

-- Not executable by PUBLIC, nor by a role without a grant.
CREATE ROLE ordflow_regress_dl_nobody;
CREATE ROLE ordflow_regress_dl_operator;
GRANT USAGE ON SCHEMA ordflow TO ordflow_regress_dl_nobody, ordflow_regress_dl_operator;
GRANT EXECUTE ON FUNCTION ordflow.retry_dead_letters(bigint[]),
	ordflow.purge_dead_letters(interval) TO ordflow_regress_dl_operator;
SELECT has_function_privilege('public', 'ordflow.retry_dead_letters(bigint[])', 'EXECUTE') AS public_retry,
       has_function_privilege('public', 'ordflow.purge_dead_letters(interval)', 'EXECUTE') AS public_purge;
SET ROLE ordflow_regress_dl_nobody;
SELECT pg_temp.err($$SELECT ordflow.retry_dead_letters()$$);
SELECT pg_temp.err($$SELECT ordflow.purge_dead_letters()$$);
SELECT pg_temp.err($$SELECT * FROM ordflow.dead_letters$$);
RESET ROLE;

-- Dead letters as the workers store them: an order, a user event with its
-- properties, one truncated (64 kB kept of 2 MB), one without routing key,
-- and an old one.
INSERT INTO ordflow.dead_letters_raw
	(received_at, queue, routing_key, body, body_size, error, redelivered,
	 message_id, correlation_id, reply_to, origin)
VALUES
	(now() - interval '1 hour', 'ordflow.orders', 'order.created',
	 convert_to('{"order_id": 900001, "uid": 77, "symbol": "DLQ", "quantity": 1}', 'UTF8'),
	 63, 'user 77 does not exist', false, NULL, NULL, NULL, 'consumer'),
	(now() - interval '2 hours', 'ordflow.users', 'user.C',
	 convert_to('{"type": "C", "name": "late", "lname": "event", "credit_limit": 5}', 'UTF8'),
	 66, 'user events over the broker are disabled', true, 'msg-1', 'corr-1',
	 'amq.gen-reply', 'consumer'),
	(now() - interval '3 hours', 'ordflow.orders', 'order.created',
	 decode(repeat('41', 65536), 'hex'), 2097152, 'message too large', false,
	 NULL, NULL, NULL, 'consumer'),
	(now() - interval '4 hours', 'ordflow.dead', NULL,
	 '\x00ff'::bytea, 2, 'rejected', false, NULL, NULL, NULL, 'broker'),
	(now() - interval '10 days', 'ordflow.orders', 'order.created.3',
	 convert_to('{"order_id": 900002, "amount": 1}', 'UTF8'),
	 33, 'user NULL', false, 'msg-old', NULL, NULL, 'consumer'),
	(now() - interval '5 hours', NULL, 'user.D',
	 convert_to('{"type": "D", "condition": {"lname": "x"}}', 'UTF8'),
	 42, 'outbox row of unknown kind', NULL, NULL, NULL, NULL, 'relay');
-- (body sizes must match what was stored unless truncated)
SELECT id - min(id) OVER () AS n, routing_key, body_size, length(body) AS stored,
       body_text IS NOT NULL AS has_text, origin
  FROM ordflow.dead_letters ORDER BY id;
SELECT min(id) AS first_id FROM ordflow.dead_letters_raw \gset

-- Naming a truncated dead letter, or one without routing key, is refused
-- and changes nothing.
SELECT pg_temp.err(format('SELECT ordflow.retry_dead_letters(ARRAY[%s, %s])', :first_id, :first_id + 2), :first_id);
SELECT pg_temp.err(format('SELECT ordflow.retry_dead_letters(ARRAY[%s])', :first_id + 3), :first_id);
SELECT count(*) AS dead_letters, (SELECT count(*) FROM ordflow.outbox) AS outbox
  FROM ordflow.dead_letters;

-- One by id: it moves to the outbox as a 'retry' row with its body and
-- routing key, and leaves the dead letters.
SELECT ordflow.retry_dead_letters(ARRAY[:first_id, :first_id, 123456789]) AS retried;
SELECT kind, order_id, routing_key, payload IS NULL AS no_payload,
       convert_from(raw_body, 'UTF8') AS body, message_id, correlation_id, reply_to
  FROM ordflow.outbox ORDER BY id;
SELECT count(*) AS left_with_that_id FROM ordflow.dead_letters WHERE id = :first_id;

-- The caller's transaction: a rollback keeps everything where it was.
BEGIN;
SELECT ordflow.retry_dead_letters() AS retried_then_rolled_back;
SELECT count(*) AS outbox_in_tx FROM ordflow.outbox;
ROLLBACK;
SELECT count(*) AS dead_letters, (SELECT count(*) FROM ordflow.outbox) AS outbox
  FROM ordflow.dead_letters;

-- An empty list, unknown ids and NULL elements republish nothing.
SELECT ordflow.retry_dead_letters('{}') AS empty_list,
       ordflow.retry_dead_letters(ARRAY[NULL, -1]::bigint[]) AS unknown_ids;

-- All (ids NULL): the truncated one, the one without routing key and the
-- one the relay refused are skipped with a NOTICE and stay; the others go
-- in the order received.  An operator role with EXECUTE needs no privilege
-- on the tables.
SET ROLE ordflow_regress_dl_operator;
SELECT ordflow.retry_dead_letters() AS retried_all;
RESET ROLE;
SELECT kind, routing_key, md5(raw_body) = md5(convert_to(
           CASE WHEN message_id = 'msg-1'
                THEN '{"type": "C", "name": "late", "lname": "event", "credit_limit": 5}'
                WHEN message_id = 'msg-old' THEN '{"order_id": 900002, "amount": 1}'
                ELSE '{"order_id": 900001, "uid": 77, "symbol": "DLQ", "quantity": 1}' END,
           'UTF8')) AS body_unchanged,
       message_id, correlation_id, reply_to
  FROM ordflow.outbox ORDER BY id;
SELECT id - :first_id AS n, routing_key, error FROM ordflow.dead_letters ORDER BY id;
SELECT ordflow.retry_dead_letters() AS retried_again;

SELECT ordflow.retry_dead_letters(ARRAY[:first_id]) AS already_retried;
-- what the relay refused goes out only when named
SELECT ordflow.retry_dead_letters(ARRAY[:first_id + 5]) AS relay_refused_named;
SELECT kind, routing_key, convert_from(raw_body, 'UTF8') AS body
  FROM ordflow.outbox ORDER BY id DESC LIMIT 1;

-- purge: NULL and negative intervals are refused; by age; '0' deletes all.
-- (every age stays below ordflow.dead_letter_retention, 30 days, so the
-- workers' own retention never races with this)
SELECT pg_temp.err($$SELECT ordflow.purge_dead_letters(NULL)$$);
SELECT pg_temp.err($$SELECT ordflow.purge_dead_letters('-1 day')$$);
INSERT INTO ordflow.dead_letters_raw (received_at, body, body_size, error)
VALUES (now() - interval '20 days', 'a', 1, 'old'),
       (now() - interval '6 days', 'b', 1, 'week'),
       (clock_timestamp() + interval '1 second', 'c', 1, 'just now');
SELECT count(*) AS dead_letters FROM ordflow.dead_letters;
SELECT ordflow.purge_dead_letters('15 days') AS purged_15_days;
SELECT ordflow.purge_dead_letters('3 hours 30 minutes') AS purged_3h30;
SELECT error FROM ordflow.dead_letters ORDER BY id;
SET ROLE ordflow_regress_dl_operator;
SELECT ordflow.purge_dead_letters() AS operator_purged_all;
RESET ROLE;
SELECT count(*) AS dead_letters FROM ordflow.dead_letters;

-- clean up
SELECT pg_temp.empty();
REVOKE ALL ON FUNCTION ordflow.retry_dead_letters(bigint[]),
	ordflow.purge_dead_letters(interval) FROM ordflow_regress_dl_operator;
REVOKE ALL ON SCHEMA ordflow FROM ordflow_regress_dl_nobody, ordflow_regress_dl_operator;
DROP ROLE ordflow_regress_dl_nobody;
DROP ROLE ordflow_regress_dl_operator;
