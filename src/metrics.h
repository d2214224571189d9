/*-------------------------------------------------------------------------
 *
 * metrics.h
 *	  The latency histogram the consumers fill and metrics() reads.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_METRICS_H
#define ORDFLOW_METRICS_H

#define OF_HIST_BUCKETS 256
extern int	of_latency_bucket(double ms);


#endif							/* ORDFLOW_METRICS_H */
