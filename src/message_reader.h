/*-------------------------------------------------------------------------
 *
 * message_reader.h
 *	  Reading consumed messages off the broker connection into OfMessage:
 *	  bounded in size, metadata made safe to store.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_MESSAGE_READER_H
#define ORDFLOW_MESSAGE_READER_H

#include "amqp_conn.h"
#include "message_batch.h"

/* Consumer tags, one per queue a consumer reads. */
#define OF_TAG_ORDERS		"ordflow-orders"
#define OF_TAG_EVENTS		"ordflow-user-events"
#define OF_TAG_DEAD			"ordflow-dead"
/* ... and OF_TAG_PARTITION followed by the number for a partition queue */
#define OF_TAG_PARTITION	"ordflow-partition-"

extern bool of_read_message(OfAmqp *a, amqp_basic_deliver_t *d, OfMessage *m);
extern char *of_wire_text(const void *bytes, size_t len, bool *exact);

#endif							/* ORDFLOW_MESSAGE_READER_H */
