/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  The latency histogram shared by the consumers (which fill it) and
 *	  metrics() (which reads percentiles from it), and what a consumer's
 *	  pass over its orders adds to the metrics tables.
 *
 * 256 buckets: bucket 0 holds latencies under 0.01 ms; bucket i >= 1 covers
 * [0.01 * 2^((i-1)/8), 0.01 * 2^(i/8)) ms, so a percentile is known within
 * about 4.4% whatever the number of orders, and costs 256 additions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

#include "metrics.h"
#include "ordflow.h"
#include "spi_util.h"

PG_FUNCTION_INFO_V1(ordflow_latency_percentile);
PG_FUNCTION_INFO_V1(ordflow_latency_percentiles);

int
of_latency_bucket(double ms)
{
	int			i;

	if (!(ms >= 0.01))
		return 0;
	if (ms > 1e12)
		return OF_HIST_BUCKETS - 1;
	i = 1 + (int) floor(8.0 * log2(ms / 0.01));
	return Min(Max(i, 1), OF_HIST_BUCKETS - 1);
}

static void
check_percentile(float8 p)
{
	if (isnan(p) || p < 0 || p > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("percentile must be between 0 and 1, got %g", p)));
}

/*
 * The representative latency of the smallest bucket whose cumulative count
 * reaches ceil(p * total); false when the histogram is empty.
 */
static bool
percentile_of(const int64 *counts, int n, float8 p, float8 *result)
{
	int64		total = 0;
	int64		need;
	int64		cum = 0;
	int64		pp;

	for (int i = 0; i < n; i++)
		if (counts[i] > 0)
			total += counts[i];
	if (total <= 0)
		return false;

	/*
	 * ceil(p * total) in integers, so 0.99 * 100 is 99, not
	 * 99.00000000000001.  With p in billionths and total split at 1e9, no
	 * product exceeds 64 bits.
	 */
	pp = (int64) llround(p * 1e9);
	need = pp * (total / 1000000000) +
		((total % 1000000000) * pp + 999999999) / 1000000000;
	need = Max(need, 1);

	for (int i = 0; i < n; i++)
	{
		if (counts[i] > 0)
			cum += counts[i];
		if (cum >= need)
		{
			*result = i == 0 ? 0.005 : 0.01 * pow(2.0, (i - 0.5) / 8);
			return true;
		}
	}
	return false;
}

/* Sum the histograms of hists (one per row of a 1-D or 2-D array). */
static int64 *
sum_histograms(ArrayType *hists, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			width;
	int64	   *counts;

	if (ARR_NDIM(hists) > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("histograms must be a one- or two-dimensional array")));
	deconstruct_array(hists, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &nelems);
	width = ARR_NDIM(hists) == 2 ? ARR_DIMS(hists)[1] : nelems;
	counts = palloc0(sizeof(int64) * Max(width, 1));
	for (int i = 0; i < nelems; i++)
		if (!nulls[i])
			counts[i % width] += DatumGetInt64(elems[i]);
	*n = width;
	return counts;
}

/* _latency_percentile(hist bigint[], p float8) */
Datum
ordflow_latency_percentile(PG_FUNCTION_ARGS)
{
	float8		p = PG_GETARG_FLOAT8(1);
	int			n;
	int64	   *counts;
	float8		result;

	check_percentile(p);
	if (ARR_NDIM(PG_GETARG_ARRAYTYPE_P(0)) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the histogram must be a one-dimensional array")));
	counts = sum_histograms(PG_GETARG_ARRAYTYPE_P(0), &n);
	if (!percentile_of(counts, n, p, &result))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(result);
}

/*
 * _latency_percentiles(hists bigint[], ps float8[]) returns float8[]: the
 * per-worker histograms (rows of a 2-D array) summed once, then every
 * percentile asked for; what metrics() needs in one call.
 */
Datum
ordflow_latency_percentiles(PG_FUNCTION_ARGS)
{
	ArrayType  *ps = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *pelems;
	bool	   *pnulls;
	int			np;
	int			n;
	int64	   *counts = sum_histograms(PG_GETARG_ARRAYTYPE_P(0), &n);
	Datum	   *out;
	bool	   *outnulls;
	int			dims[1];
	int			lbs[1] = {1};

	deconstruct_array(ps, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &pelems, &pnulls, &np);
	out = palloc(sizeof(Datum) * Max(np, 1));
	outnulls = palloc(sizeof(bool) * Max(np, 1));
	for (int i = 0; i < np; i++)
	{
		float8		r;

		outnulls[i] = true;
		out[i] = (Datum) 0;
		if (pnulls[i])
			continue;
		check_percentile(DatumGetFloat8(pelems[i]));
		if (percentile_of(counts, n, DatumGetFloat8(pelems[i]), &r))
		{
			out[i] = Float8GetDatum(r);
			outnulls[i] = false;
		}
	}
	dims[0] = np;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(out, outnulls, 1, dims, lbs, FLOAT8OID,
											 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* ---- a consumer's pass ---- */

void
of_metrics_reset(OfPassMetrics *pm)
{
	pm->completed = 0;
	pm->declined = 0;
	pm->sum_price = DirectFunctionCall1(int4_numeric, Int32GetDatum(0));
	memset(pm->hist, 0, sizeof(pm->hist));
}

void
of_metrics_count(OfPassMetrics *pm, bool completed, Datum price, double latency_ms)
{
	if (completed)
	{
		pm->completed++;
		pm->sum_price = DirectFunctionCall2(numeric_add, pm->sum_price, price);
	}
	else
		pm->declined++;
	pm->hist[of_latency_bucket(latency_ms)]++;
}

/* Per-worker rows, so consumers never queue on one row. */
static SPIPlanPtr record_plan = NULL;
static const char *record_sql =
"WITH t AS ("
"  INSERT INTO ordflow.metrics_totals AS t"
"         (worker, processed, completed, declined, sum_price, latency_hist, last_processed_at)"
"  VALUES ($1, $2, $3, $4, $5, $6, $7)"
"  ON CONFLICT (worker) DO UPDATE SET"
"    processed = t.processed + excluded.processed,"
"    completed = t.completed + excluded.completed,"
"    declined = t.declined + excluded.declined,"
"    sum_price = t.sum_price + excluded.sum_price,"
"    latency_hist = ARRAY(SELECT COALESCE(h.a, 0) + COALESCE(h.b, 0)"
"                           FROM unnest(t.latency_hist, excluded.latency_hist)"
"                                WITH ORDINALITY AS h(a, b, i) ORDER BY h.i),"
"    last_processed_at = GREATEST(t.last_processed_at, excluded.last_processed_at))"
" INSERT INTO ordflow.metrics_minute AS m"
"        (minute, worker, processed, completed, declined, sum_price, latency_hist,"
"         first_at, last_at)"
" VALUES (pg_catalog.date_trunc('minute', $7), $1, $2, $3, $4, $5, $6, $7, $7)"
" ON CONFLICT (minute, worker) DO UPDATE SET"
"    first_at = LEAST(m.first_at, excluded.first_at),"
"    last_at = GREATEST(m.last_at, excluded.last_at),"
"    processed = m.processed + excluded.processed,"
"    completed = m.completed + excluded.completed,"
"    declined = m.declined + excluded.declined,"
"    sum_price = m.sum_price + excluded.sum_price,"
"    latency_hist = ARRAY(SELECT COALESCE(h.a, 0) + COALESCE(h.b, 0)"
"                           FROM unnest(m.latency_hist, excluded.latency_hist)"
"                                WITH ORDINALITY AS h(a, b, i) ORDER BY h.i)";
static const Oid record_types[7] = {INT4OID, INT8OID, INT8OID, INT8OID, NUMERICOID,
INT8ARRAYOID, TIMESTAMPTZOID};

/* In the pass's transaction: this consumer's rows only. */
void
of_metrics_record(const OfPassMetrics *pm, int worker_no, TimestampTz processed_at)
{
	Datum		hist[OF_HIST_BUCKETS];
	Datum		values[7];

	for (int i = 0; i < OF_HIST_BUCKETS; i++)
		hist[i] = Int64GetDatum(pm->hist[i]);
	values[0] = Int32GetDatum(worker_no);
	values[1] = Int64GetDatum(pm->completed + pm->declined);
	values[2] = Int64GetDatum(pm->completed);
	values[3] = Int64GetDatum(pm->declined);
	values[4] = pm->sum_price;
	values[5] = PointerGetDatum(construct_array(hist, OF_HIST_BUCKETS, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[6] = TimestampTzGetDatum(processed_at);
	of_run_plan(&record_plan, record_sql, 7, record_types, values, NULL, SPI_OK_INSERT);
}
