/*-------------------------------------------------------------------------
 *
 * order_processing.h
 *	  Processing the order messages of a batch, set-wise, inside the
 *	  caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_ORDER_PROCESSING_H
#define ORDFLOW_ORDER_PROCESSING_H

#include "message_batch.h"

extern void of_settle_orders(OfMessage **orders, int n, int worker_no,
									  OfBatchStats *stats);

#endif							/* ORDFLOW_ORDER_PROCESSING_H */
