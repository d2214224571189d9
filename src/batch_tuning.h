/*-------------------------------------------------------------------------
 *
 * batch_tuning.h
 *	  A consumer's batch size and batch wait, adapted to the rate and the
 *	  backlog it sees (ordflow.batch_size and ordflow.batch_wait_ms stay the
 *	  upper bounds), and how consumers share a queue
 *	  (ordflow.consumer_priorities).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_BATCH_TUNING_H
#define ORDFLOW_BATCH_TUNING_H

#include "datatype/timestamp.h"

typedef struct OfBatchTuning
{
	double		rate;			/* deliveries per second, moving average */
	TimestampTz since;			/* when the last collection ended */
	int			target;			/* messages to collect, 1 .. batch_size */
} OfBatchTuning;

extern bool ordflow_consumer_priorities;

extern void of_define_consumer_settings(void);
extern int	of_consumer_priority(int index);
extern void of_batch_tuning_init(OfBatchTuning *t);
extern int	of_batch_target(const OfBatchTuning *t);
extern long of_batch_wait_ms(const OfBatchTuning *t);
extern void of_batch_observe(OfBatchTuning *t, int n, bool filled);

#endif							/* ORDFLOW_BATCH_TUNING_H */
