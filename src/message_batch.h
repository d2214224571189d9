/*-------------------------------------------------------------------------
 *
 * message_batch.h
 *	  The messages of one consumer batch and what became of each.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_MESSAGE_BATCH_H
#define ORDFLOW_MESSAGE_BATCH_H

#include "datatype/timestamp.h"

#include "order_message.h"

typedef enum OfMsgKind
{
	OF_MSG_ORDER,				/* from the orders queue */
	OF_MSG_USER_EVENT,			/* from the user events queue */
	OF_MSG_BROKER_DEAD			/* dead-lettered by the broker into <exchange>.dead */
} OfMsgKind;

typedef enum OfOutcome
{
	OF_OUT_PENDING = 0,
	OF_OUT_COMPLETED,
	OF_OUT_DECLINED,
	OF_OUT_DUPLICATE,			/* same order_id, same content; or a user event
								 * whose message_id was applied before */
	OF_OUT_STALE,				/* our own order, removed by truncate() */
	OF_OUT_APPLIED,				/* user event applied */
	OF_OUT_FORWARDED,			/* queued in the outbox for its partition */
	OF_OUT_DEAD					/* stored in ordflow.dead_letters */
} OfOutcome;

/*
 * Text fields come from the wire: they hold valid text in the database
 * encoding, any other byte escaped as \xNN (consumer.c does that on
 * reading).  The body is the raw bytes; for a message larger than
 * ordflow.max_message_size only its first OF_DEAD_LETTER_KEEP bytes.
 */
typedef struct OfMessage
{
	uint64		delivery_tag;
	bool		redelivered;
	OfMsgKind	kind;
	const char *queue;
	int			partition;		/* of the partition queue it came from; -1:
								 * a shared queue */
	char	   *routing_key;
	char	   *reply_to;
	bool		reply_to_exact;	/* reply_to needed no escaping */
	char	   *correlation_id;
	char	   *message_id;
	bool		own;			/* x-ordflow-node and -origin are ours */
	char	   *death_reason;	/* OF_MSG_BROKER_DEAD: x-first-death-reason */
	char	   *death_queue;	/* ... and x-first-death-queue */

	char	   *body;			/* NUL-terminated */
	size_t		body_len;		/* bytes held in body */
	uint64		body_size;		/* size of the message */

	OfOrderMsg	order;
	TimestampTz created_at;		/* order.created_at, when it has one */

	OfOutcome	outcome;
	char	   *error;			/* why it was dead-lettered */
	char	   *reply;			/* JSON reply to a user event, for the outbox */
	char	   *forward_key;	/* OF_OUT_FORWARDED: routing key to publish to */
} OfMessage;

/* Batch figures, for status() and logs. */
typedef struct OfBatchStats
{
	int			generated;		/* processed orders the generator made */
	int			stale;
	int			dead;
	int			replies;		/* written to the outbox */
	int			forwarded;		/* written to the outbox for their partition */
} OfBatchStats;

extern void of_process_batch(OfMessage *msgs, int n, int worker_no, OfBatchStats *stats);
extern void of_store_dead_letters(OfMessage *msgs, int n, OfBatchStats *stats);
extern char *of_json_error(const char *message, int sqlerrcode);

#endif							/* ORDFLOW_MESSAGE_BATCH_H */
