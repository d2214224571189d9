/*-------------------------------------------------------------------------
 *
 * message_forward.h
 *	  With ordflow.partitions > 1: messages taken from a shared queue are
 *	  forwarded, through the outbox, to the queue of their partition.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_MESSAGE_FORWARD_H
#define ORDFLOW_MESSAGE_FORWARD_H

#include "message_batch.h"

extern void of_forward_order(OfMessage *m);
extern void of_forward_user_event(OfMessage *m);
extern void of_store_forwards(OfMessage *msgs, int n, OfBatchStats *stats);

#endif							/* ORDFLOW_MESSAGE_FORWARD_H */
