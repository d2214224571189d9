/*-------------------------------------------------------------------------
 *
 * metrics.h
 *	  The latency histogram the consumers fill and metrics() reads, and
 *	  the rows a consumer's pass adds to.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_METRICS_H
#define ORDFLOW_METRICS_H

#include "datatype/timestamp.h"

#define OF_HIST_BUCKETS 256
extern int	of_latency_bucket(double ms);

/* What one pass of a consumer over its orders adds to its metrics rows. */
typedef struct OfPassMetrics
{
	int64		completed;
	int64		declined;
	Datum		sum_price;		/* numeric, of the completed ones */
	int64		hist[OF_HIST_BUCKETS];	/* latencies */
} OfPassMetrics;

extern void of_metrics_reset(OfPassMetrics *pm);
extern void of_metrics_count(OfPassMetrics *pm, bool completed, Datum price,
							 double latency_ms);
extern void of_metrics_record(const OfPassMetrics *pm, int worker_no,
							  TimestampTz processed_at);


#endif							/* ORDFLOW_METRICS_H */
