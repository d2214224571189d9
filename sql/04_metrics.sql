--
-- 04_metrics: metrics() and metrics_history() from the per-worker rows, and
-- the histogram percentile.
--
\set SHOW_CONTEXT never
-- hist(bucket => count, ...) as a 256-element array (array index = bucket + 1).
CREATE FUNCTION pg_temp.hist(VARIADIC pairs bigint[]) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
	h bigint[] := array_fill(0::bigint, ARRAY[256]);
BEGIN
	FOR i IN 1 .. coalesce(array_length(pairs, 1), 0) BY 2 LOOP
		h[pairs[i] + 1] := h[pairs[i] + 1] + pairs[i + 1];
	END LOOP;
	RETURN h;
END $$;

-- Empty system: zeros and NULLs, no error.
SELECT * FROM ordflow.metrics();
SELECT * FROM ordflow.metrics_history();

-- _latency_percentile edge cases.
SELECT ordflow._latency_percentile(NULL, 0.5) AS null_hist,
       ordflow._latency_percentile('{}', 0.5) AS empty,
       ordflow._latency_percentile(array_fill(0::bigint, ARRAY[256]), 0.5) AS all_zero,
       ordflow._latency_percentile(pg_temp.hist(0, 3), NULL) AS null_p;
-- Bucket 0 stands for 0.005 ms; bucket i for 0.01 * 2^((i - 0.5) / 8) ms.
SELECT ordflow._latency_percentile(pg_temp.hist(0, 3), 0.5) AS b0,
       ordflow._latency_percentile(pg_temp.hist(1, 1), 0.5) = 0.01 * power(2::float8, 0.5 / 8) AS b1,
       ordflow._latency_percentile(pg_temp.hist(8, 1), 1) = 0.01 * power(2::float8, 7.5 / 8) AS b8,
       ordflow._latency_percentile(pg_temp.hist(255, 1), 0) = 0.01 * power(2::float8, 254.5 / 8) AS b255;
SELECT round(ordflow._latency_percentile(pg_temp.hist(81, 1), 0.5)::numeric, 6) AS about_10_7ms;
-- 99 fast + 1 slow: p99 is the fast bucket (ceil(0.99 * 100) = 99), p100 the slow one.
SELECT ordflow._latency_percentile(pg_temp.hist(10, 99, 200, 1), 0.99)
         = ordflow._latency_percentile(pg_temp.hist(10, 1), 0.5) AS p99_fast,
       ordflow._latency_percentile(pg_temp.hist(10, 99, 200, 1), 1)
         = ordflow._latency_percentile(pg_temp.hist(200, 1), 0.5) AS p100_slow;
-- 98 fast + 2 slow: p99 is slow.
SELECT ordflow._latency_percentile(pg_temp.hist(10, 98, 200, 2), 0.99)
         = ordflow._latency_percentile(pg_temp.hist(200, 1), 0.5) AS p99_slow;
-- Median of 1..4 spread over buckets 1..4 (2 of 4 reached at bucket 2).
SELECT ordflow._latency_percentile(pg_temp.hist(1, 1, 2, 1, 3, 1, 4, 1), 0.5)
         = ordflow._latency_percentile(pg_temp.hist(2, 1), 0.5) AS median;
-- p = 0 is the first non-empty bucket, not bucket 0.
SELECT ordflow._latency_percentile(pg_temp.hist(5, 1, 9, 1), 0)
         = ordflow._latency_percentile(pg_temp.hist(5, 1), 1) AS p0;
SELECT regress_util.err($$SELECT ordflow._latency_percentile('{1}', 1.01)$$);
SELECT regress_util.err($$SELECT ordflow._latency_percentile('{1}', -0.1)$$);
SELECT regress_util.err($$SELECT ordflow._latency_percentile('{1}', 'NaN')$$);

-- Synthetic per-worker totals, as two consumers would leave them.
INSERT INTO ordflow.metrics_totals
	(worker, processed, completed, declined, sum_price, latency_hist, last_processed_at)
VALUES (1, 10, 7, 3, 12.5, pg_temp.hist(10, 6, 20, 3), '2026-01-02 03:04:05+00'),
       (2, 5, 4, 1, 0.75, pg_temp.hist(20, 5, 255, 1), '2026-01-02 03:04:06+00');
-- avg = sum_price / completed, exactly as numeric avg() computes it.
SELECT orders_processed, orders_completed, orders_declined, avg_execution_price,
       avg_execution_price = (SELECT avg(x) FROM (VALUES (12.5 / 7), (0.75 / 4)) v(x)) AS not_avg_of_avgs,
       total_execution_amount,
       latency_p50_ms = 0.01 * power(2::float8, 19.5 / 8) AS p50_bucket20,
       latency_p99_ms = 0.01 * power(2::float8, 254.5 / 8) AS p99_bucket255,
       last_processed_at = '2026-01-02 03:04:06+00' AS last_at,
       orders_per_second
  FROM ordflow.metrics();
SELECT 13.25 / 11::numeric AS expected_avg;

-- avg matches avg(execution_price) over completed orders exactly, also for
-- prices that do not divide evenly.
CREATE TEMP TABLE prices (p numeric);
INSERT INTO prices VALUES (1.1), (2.00000001), (3.333333333333), (1e15), (0.000001), (7);
UPDATE ordflow.metrics_totals
   SET completed = (SELECT count(*) FROM prices), declined = 0,
       processed = (SELECT count(*) FROM prices),
       sum_price = (SELECT sum(p) FROM prices)
 WHERE worker = 1;
UPDATE ordflow.metrics_totals SET completed = 0, declined = 0, processed = 0, sum_price = 0
 WHERE worker = 2;
SELECT avg_execution_price, avg_execution_price = (SELECT avg(p) FROM prices) AS exact
  FROM ordflow.metrics();

-- Throughput from the current and previous minute only (one transaction, so
-- now() cannot cross a minute boundary between the insert and the check).
BEGIN;
INSERT INTO ordflow.metrics_minute
	(minute, worker, processed, completed, declined, sum_price, latency_hist)
VALUES (date_trunc('minute', now()) - interval '1 minute', 1, 60, 60, 0, 60, pg_temp.hist(3, 60)),
       (date_trunc('minute', now()), 2, 30, 30, 0, 30, pg_temp.hist(3, 30)),
       (date_trunc('minute', now()) - interval '10 minutes', 1, 1000000, 0, 1000000, 0, pg_temp.hist(3, 1));
SELECT orders_per_second
         = 90 / extract(epoch FROM now() - (date_trunc('minute', now()) - interval '1 minute'))::float8
         AS ops_two_minutes
  FROM ordflow.metrics();
COMMIT;

-- A pipeline that has run at 100 orders/s for 25 s reports 100/s: the rate
-- is measured from the first order processed, not from the start of the
-- minute before it.
BEGIN;
DELETE FROM ordflow.metrics_minute;
INSERT INTO ordflow.metrics_minute
	(minute, worker, processed, completed, declined, sum_price, latency_hist, first_at, last_at)
VALUES (date_trunc('minute', now() - interval '25 seconds'), 1, 2500, 2500, 0, 2500,
        pg_temp.hist(3, 2500), now() - interval '25 seconds', now());
SELECT orders_per_second FROM ordflow.metrics();
COMMIT;

-- metrics_history: per minute, summed across workers, ordered, windowed.
BEGIN;
DELETE FROM ordflow.metrics_minute;
INSERT INTO ordflow.metrics_minute
	(minute, worker, processed, completed, declined, sum_price, latency_hist)
SELECT date_trunc('minute', now()) - m * interval '1 minute', w,
       10 * w + m, 5 * w, 10 * w + m - 5 * w, 3.5 * w, pg_temp.hist(m, w)
  FROM generate_series(0, 90, 30) AS m, generate_series(1, 2) AS w;
SELECT round(extract(epoch FROM date_trunc('minute', now()) - minute) / 60) AS minutes_ago,
       processed, completed, declined, avg_execution_price,
       latency_p99_ms = 0.01 * power(2::float8, (extract(epoch FROM date_trunc('minute', now()) - minute) / 60 - 0.5) / 8)
         OR (minute = date_trunc('minute', now()) AND latency_p99_ms = 0.005) AS p99_ok
  FROM ordflow.metrics_history();
SELECT count(*) FROM ordflow.metrics_history('2 hours');
SELECT count(*) FROM ordflow.metrics_history('0');
SELECT count(*) FROM ordflow.metrics_history(NULL);
COMMIT;

-- metrics() reads a fixed set of rows: its plan does not touch orders.
SELECT count(*) AS plans_touching_orders
  FROM regexp_matches(pg_get_functiondef('ordflow.metrics()'::regprocedure),
                      'ordflow\.(orders|order_events)\M', 'g');

DELETE FROM ordflow.metrics_minute;
DELETE FROM ordflow.metrics_totals;
SELECT * FROM ordflow.metrics();

-- _latency_percentiles: several workers' histograms (rows of a 2-D array)
-- summed once, several percentiles; equal to _latency_percentile of the sum.
SELECT ordflow._latency_percentiles(ARRAY[pg_temp.hist(10, 99, 200, 1), pg_temp.hist(5, 1, 200, 1)],
                                    '{0.5,0.99,1}')
         = ARRAY[ordflow._latency_percentile(pg_temp.hist(5, 1, 10, 99, 200, 2), 0.5),
                 ordflow._latency_percentile(pg_temp.hist(5, 1, 10, 99, 200, 2), 0.99),
                 ordflow._latency_percentile(pg_temp.hist(5, 1, 10, 99, 200, 2), 1)] AS same_as_summed,
       ordflow._latency_percentiles(ARRAY[pg_temp.hist(10, 1)], '{0.5, NULL}') AS with_null_p,
       ordflow._latency_percentiles(array_fill(0::bigint, ARRAY[2, 256]), '{0.5}') AS empty;
SELECT regress_util.err($$SELECT ordflow._latency_percentiles(ARRAY[pg_temp.hist(10, 1)], '{1.5}')$$);
