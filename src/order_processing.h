/*-------------------------------------------------------------------------
 *
 * order_processing.h
 *	  Processing a batch of consumed messages inside one transaction.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_ORDER_PROCESSING_H
#define ORDFLOW_ORDER_PROCESSING_H

#include "order_message.h"

typedef enum OfMsgKind
{
	OF_MSG_ORDER,
	OF_MSG_USER_EVENT
} OfMsgKind;

typedef enum OfOutcome
{
	OF_OUT_PENDING = 0,
	OF_OUT_COMPLETED,
	OF_OUT_DECLINED,
	OF_OUT_DUPLICATE,			/* same order_id, same content: no-op */
	OF_OUT_STALE,				/* our own order, removed by truncate() */
	OF_OUT_APPLIED,				/* user event applied */
	OF_OUT_DEAD					/* stored in ordflow.dead_letters */
} OfOutcome;

typedef struct OfMessage
{
	uint64		delivery_tag;
	bool		redelivered;
	OfMsgKind	kind;
	char	   *queue;
	char	   *routing_key;
	char	   *body;			/* NUL-terminated copy of the raw body */
	size_t		body_len;
	char	   *reply_to;
	char	   *correlation_id;
	char	   *message_id;
	bool		from_outbox;	/* published by our relay */

	OfOrderMsg	order;

	OfOutcome	outcome;
	char	   *error;			/* why it was dead-lettered */
	char	   *reply;			/* JSON reply to a user event */
} OfMessage;

/* Batch figures, for status() and logs. */
typedef struct OfBatchStats
{
	int			completed;
	int			declined;
	int			generated;		/* processed orders the generator made */
	int			duplicates;
	int			stale;
	int			dead;
	int			events;
} OfBatchStats;

extern void of_process_batch(OfMessage *msgs, int n, int worker_no, OfBatchStats *stats);
extern void of_process_order_messages(OfMessage **orders, int n, int worker_no,
									  OfBatchStats *stats);

#endif							/* ORDFLOW_ORDER_PROCESSING_H */
