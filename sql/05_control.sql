--
-- 05_control: status(), start()/stop() return values and persisted state,
-- truncate().  Nothing here commits a running generator, so no worker makes
-- orders behind the test's back.
--
\set SHOW_CONTEXT never

-- status() answers without error; its rows depend on worker timing.
SELECT count(*) >= 0 AS status_ok FROM ordflow.status();
SELECT pg_typeof(worker) AS worker, pg_typeof(pid) AS pid, pg_typeof(state) AS state,
       pg_typeof(connected) AS connected, pg_typeof(since) AS since,
       pg_typeof(processed) AS processed, pg_typeof(last_error) AS last_error
  FROM ordflow.status() LIMIT 0;

SELECT running, rate FROM ordflow.generator_state;
-- stop() when stopped: false.
SELECT ordflow.stop();

BEGIN;
SELECT ordflow.start(5);           -- was stopped: true
SELECT running, rate FROM ordflow.generator_state;
SELECT ordflow.start(7.5);         -- already running: false, rate changed
SELECT running, rate FROM ordflow.generator_state;
SELECT ordflow.start();            -- keeps the stored rate
SELECT running, rate FROM ordflow.generator_state;
SELECT ordflow.stop();             -- was running: true
SELECT ordflow.stop();             -- already stopped: false
SELECT running, rate FROM ordflow.generator_state;
ROLLBACK;
SELECT running, rate FROM ordflow.generator_state;

-- Started and stopped in one committed transaction: the rate persists, the
-- generator stays stopped, start() can be called again after stop().
BEGIN;
SELECT ordflow.start(3);
SELECT ordflow.stop();
SELECT ordflow.start(4);
SELECT ordflow.stop();
COMMIT;
SELECT running, rate FROM ordflow.generator_state;
SELECT count(*) FROM ordflow.generator_state;

-- Invalid rates: 22023 and nothing changes.
SELECT regress_util.err($$SELECT ordflow.start(0)$$);
SELECT regress_util.err($$SELECT ordflow.start(-1)$$);
SELECT regress_util.err($$SELECT ordflow.start('NaN')$$);
SELECT regress_util.err($$SELECT ordflow.start('Infinity')$$);
SELECT regress_util.err($$SELECT ordflow.start(1000000.5)$$);
SELECT running, rate FROM ordflow.generator_state;
BEGIN;
SELECT ordflow.start(1000000) AS max_rate_ok;
ROLLBACK;

-- truncate(): empties the pipeline tables, keeps users unless asked.
SELECT ordflow.create_user('Keep', 'Me', 10) AS first_uid \gset
SELECT ordflow.place_order(amount => 1) AS first_id \gset
INSERT INTO ordflow.dead_letters_raw (body, body_size, error) VALUES ('\x00ff', 2, 'test');
INSERT INTO ordflow.metrics_totals (worker, processed, latency_hist) VALUES (1, 1, '{1}');
INSERT INTO ordflow.metrics_minute (minute, worker, processed, latency_hist)
	VALUES ('2026-01-01', 1, 1, '{1}');
CREATE TEMP VIEW sizes AS
	SELECT (SELECT count(*) FROM ordflow.orders) AS orders,
	       (SELECT count(*) FROM ordflow.order_events) AS events,
	       (SELECT count(*) FROM ordflow.outbox) AS outbox,
	       (SELECT count(*) FROM ordflow.dead_letters) AS dead,
	       (SELECT count(*) FROM ordflow.metrics_totals) AS totals,
	       (SELECT count(*) FROM ordflow.metrics_minute) AS minutes,
	       (SELECT count(*) FROM ordflow.users) > 0 AS has_users;
SELECT * FROM sizes;
SELECT regress_util.err($$SELECT ordflow.truncate(NULL)$$);
SELECT * FROM sizes;
-- Rolled back: nothing lost.
BEGIN;
SELECT ordflow.truncate();
ROLLBACK;
SELECT * FROM sizes;
SELECT ordflow.truncate();
SELECT * FROM sizes;
SELECT * FROM ordflow.metrics();
-- Ids are not reused after a truncate (messages with old ids may still be in
-- the broker).
SELECT ordflow.place_order(amount => 1) > :first_id AS id_not_reused;
SELECT ordflow.truncate(include_users => true);
SELECT * FROM sizes;
SELECT ordflow.create_user('New', 'One', 1) > :first_uid AS uid_not_reused;
SELECT ordflow.truncate(true);
-- The generator state is not part of truncate.
SELECT running, rate FROM ordflow.generator_state;
