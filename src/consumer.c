/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  A consumer worker: takes orders and user events from the broker in
 *	  batches and processes each batch in one transaction.
 *
 * basic.qos bounds what the broker pushes; manual acks are sent only after
 * the batch committed, as one basic.ack(multiple).  A crash before the ack
 * leaves the messages unacked, the broker redelivers them, and processing
 * by order_id makes the second delivery a no-op.
 *
 * A batch that fails for a reason that is not one message's own (those are
 * dead-lettered inside the batch) is given back to the broker and, after a
 * backoff, its redelivered messages are processed one at a time; one that
 * fails again alone is dead-lettered, whatever the error.  Nothing is
 * retried for ever, and only a shutdown or a crash leaves a message
 * unacknowledged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "batch_tuning.h"
#include "message_batch.h"
#include "message_reader.h"
#include "ordflow.h"
#include "partition_claims.h"
#include "worker_common.h"

/* Backoff before a failed batch is tried again, message by message. */
#define RETRY_MIN_MS		500
#define RETRY_MAX_MS		10000

/* priority: x-priority of the subscription (batch_tuning.c) */
static bool
consume(OfAmqp *a, const char *queue, const char *tag, int priority)
{
	char	   *what = psprintf("consuming from queue \"%s\"", queue);
	amqp_table_entry_t prio;
	amqp_table_t args;

	prio.key = amqp_cstring_bytes("x-priority");
	prio.value.kind = AMQP_FIELD_KIND_I32;
	prio.value.value.i32 = priority;
	args.num_entries = 1;
	args.entries = &prio;
	amqp_basic_consume(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(queue),
					   amqp_cstring_bytes(tag), 0, 0, 0, args);
	return of_amqp_rpc_ok(a, what);
}

/* The partitions this consumer holds (ordflow.partitions > 1). */
static OfClaims claims;

static bool
start_consuming(OfAmqp *a, OfWorkerSlot *slot)
{
	int			priority = of_consumer_priority(slot->index);

	amqp_basic_qos(a->conn, OF_AMQP_CHANNEL, 0, (uint16_t) ordflow_prefetch, 0);
	return of_amqp_rpc_ok(a, "setting the prefetch (basic.qos)") &&
		consume(a, ordflow_orders_queue, OF_TAG_ORDERS, priority) &&
		consume(a, ordflow_user_events_queue, OF_TAG_EVENTS, priority) &&
		consume(a, psprintf("%s.dead", ordflow_exchange), OF_TAG_DEAD, priority) &&
		of_claims_start(a, &claims, slot);
}

/*
 * Collect up to max messages: wait up to idle_ms for the first, then at
 * most wait_ms more for the rest (batch_tuning.c), and stop early once the
 * bodies held reach ordflow.batch_max_bytes.  Returns the count; -1 if the
 * connection broke (nothing of the batch is acked then, so the broker
 * redelivers it).
 */
static int
collect_batch(OfAmqp *a, OfMessage *msgs, int max, long idle_ms, long wait_ms)
{
	int			n = 0;
	size_t		bytes = 0;
	TimestampTz batch_deadline = 0;

	while (n < max && bytes < (size_t) ordflow_batch_max_bytes)
	{
		amqp_frame_t frame;
		long		timeout;
		OfWait		w;

		if (n == 0)
			timeout = idle_ms;
		else
			timeout = Max(0, (long) ((batch_deadline - GetCurrentTimestamp()) / 1000));
		w = of_amqp_next_frame(a, &frame, timeout);
		if (w == OF_WAIT_ERROR)
			return -1;
		if (w == OF_WAIT_LATCH)
		{
			if (ProcDiePending || ConfigReloadPending)
				break;
			continue;
		}
		if (w == OF_WAIT_TIMEOUT)
			break;
		if (w == OF_WAIT_CONTROL)
			continue;
		if (frame.frame_type == AMQP_FRAME_METHOD &&
			frame.payload.method.id == AMQP_BASIC_DELIVER_METHOD)
		{
			if (!of_read_message(a, frame.payload.method.decoded, &msgs[n]))
				return -1;
			if (n == 0)
				batch_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
			bytes += msgs[n].body_len;
			n++;
		}
		/* anything else on the channel is of no interest */
	}
	return n;
}

typedef struct BatchWork
{
	OfMessage  *msgs;
	int			n;
	int			worker_no;
	OfBatchStats stats;
	bool		extension_gone; /* DROP EXTENSION ordflow happened */
} BatchWork;

static void
process_batch_tx(void *arg)
{
	BatchWork  *w = arg;

	memset(&w->stats, 0, sizeof(w->stats));
	if (of_extension_exists())
		of_process_batch(w->msgs, w->n, w->worker_no, &w->stats);
	else
		w->extension_gone = true;
}

static void
store_dead_letter_tx(void *arg)
{
	BatchWork  *w = arg;

	memset(&w->stats, 0, sizeof(w->stats));
	if (of_extension_exists())
		of_store_dead_letters(w->msgs, w->n, &w->stats);
	else
		w->extension_gone = true;
}

/* After the commit: acknowledge, count, tell. */
static void
finish_batch(OfAmqp *a, OfWorkerSlot *slot, BatchWork *w)
{
	if (of_amqp_ack(a, w->msgs[w->n - 1].delivery_tag))
		of_slot_add_processed(slot, w->n);
	if (w->stats.replies > 0 || w->stats.forwarded > 0)
		of_wake_slot(OF_SLOT_RELAY);
	if (w->stats.generated > 0)
	{
		LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
		OfState->generated_processed += w->stats.generated;
		LWLockRelease(OfState->lock);
	}
	/* after a truncate() every batch has some: keep them out of the log */
	if (w->stats.stale > 0)
		elog(DEBUG1, "ordflow: dropped %d message(s) of orders removed by ordflow.truncate()",
			 w->stats.stale);
	if (w->stats.dead > 0)
		ereport(LOG,
				(errmsg("ordflow: %d message(s) moved to ordflow.dead_letters", w->stats.dead)));
}

typedef struct RetryState
{
	bool		singly;			/* process redelivered messages one at a time */
	int			backoff_ms;
} RetryState;

/*
 * The batch failed (the error is logged).  A redelivered message that
 * failed alone is dead-lettered; otherwise the batch goes back to the
 * broker to be retried message by message after a backoff.
 */
static void
batch_failed(OfAmqp *a, OfWorkerSlot *slot, BatchWork *w, ErrorData *err, RetryState *retry)
{
	OfMessage  *m = &w->msgs[0];

	if (w->n == 1 && m->redelivered && retry->singly)
	{
		m->outcome = OF_OUT_DEAD;
		m->error = psprintf("failed again when retried alone: %s", err->message);
		if (of_run_in_tx(slot, "ordflow consumer: storing a dead letter",
						 store_dead_letter_tx, w) == NULL && !w->extension_gone)
		{
			finish_batch(a, slot, w);
			return;
		}
	}
	of_amqp_requeue(a, w->msgs[w->n - 1].delivery_tag);
	retry->singly = true;
	retry->backoff_ms = of_backoff_next(retry->backoff_ms, RETRY_MIN_MS, RETRY_MAX_MS);
	of_slot_set_state(slot, "waiting to retry a failed batch");
	of_worker_wait(retry->backoff_ms);
}

/* Connected and subscribed on this connection?  Waits when not. */
static bool
ensure_consuming(OfAmqp *a, OfWorkerSlot *slot, uint64 *consuming_on)
{
	long		wait_ms;

	if (!of_amqp_ensure_connected(a, false, &wait_ms))
	{
		of_slot_set_connected(slot, false);
		of_slot_set_node(slot, "");
		of_slot_set_partitions(slot, "");
		of_slot_set_error(slot, a->error, a->error_class);
		of_slot_set_state(slot, "waiting to reconnect to the broker");
		of_worker_wait(wait_ms);
		return false;
	}
	/*
	 * Every new connection, including one after a reload, subscribes again;
	 * an established one tries now and then for partitions it could not
	 * claim.
	 */
	if (*consuming_on == a->generation ? !of_claims_retry(a, &claims, slot)
		: !start_consuming(a, slot))
	{
		/* e.g. an exclusive consumer elsewhere: do not hammer the broker */
		ereport(LOG, (errmsg("ordflow: %s", a->error)));
		of_slot_set_error(slot, a->error, a->error_class);
		of_slot_set_partitions(slot, "");
		of_amqp_disconnect(a, false);
		of_worker_wait(1000);
		return false;
	}
	*consuming_on = a->generation;
	of_slot_set_connected(slot, true);
	of_slot_set_node(slot, a->node);
	return true;
}

static bool
any_redelivered(OfMessage *msgs, int n)
{
	for (int i = 0; i < n; i++)
		if (msgs[i].redelivered)
			return true;
	return false;
}

void
ordflow_consumer_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	OfWorkerSlot *slot;
	OfAmqp		a;
	uint64		consuming_on = 0;	/* connection generation we subscribed on */
	MemoryContext batch_cxt;
	OfMessage  *msgs = NULL;
	int			msgs_cap = 0;
	RetryState	retry = {false, 0};
	OfBatchTuning tuning;

	slot = of_worker_start(slotno, OF_WORKER_CONSUMER, slotno - OF_SLOT_CONSUMER0);
	memset(&a, 0, sizeof(a));
	a.fd = -1;
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "ordflow consumer batch",
									  ALLOCSET_DEFAULT_SIZES);
	of_batch_tuning_init(&tuning);

	while (true)
	{
		BatchWork	w;
		ErrorData  *err;
		long		idle_ms;

		of_worker_interrupts();
		MemoryContextReset(batch_cxt);
		MemoryContextSwitchTo(batch_cxt);
		if (a.conn)
			amqp_maybe_release_buffers(a.conn);
		if (!ensure_consuming(&a, slot, &consuming_on))
			continue;

		if (msgs_cap != ordflow_batch_size)
		{
			if (msgs)
				pfree(msgs);
			msgs_cap = ordflow_batch_size;
			msgs = MemoryContextAlloc(TopMemoryContext, sizeof(OfMessage) * msgs_cap);
		}

		of_slot_set_state(slot, "waiting for messages");
		idle_ms = ordflow_heartbeat > 0 ? Min(1000L, ordflow_heartbeat * 500L) : 1000L;
		memset(&w, 0, sizeof(w));
		w.msgs = msgs;
		w.worker_no = slot->index;
		w.n = collect_batch(&a, msgs, retry.singly ? 1 : of_batch_target(&tuning), idle_ms,
							of_batch_wait_ms(&tuning));
		if (w.n >= 0 && !retry.singly)
			of_batch_observe(&tuning, w.n, w.n >= of_batch_target(&tuning));
		if (w.n <= 0)
			continue;			/* -1: reconnect; unacked messages come back */

		of_slot_set_state(slot, "processing");
		err = of_run_in_tx(slot, "ordflow consumer: processing a batch", process_batch_tx, &w);
		if (w.extension_gone)
		{
			/* Give the messages back untouched and leave quietly. */
			of_amqp_requeue(&a, msgs[w.n - 1].delivery_tag);
			of_amqp_disconnect(&a, true);
			proc_exit(0);
		}
		if (err != NULL)
		{
			batch_failed(&a, slot, &w, err, &retry);
			continue;
		}
		finish_batch(&a, slot, &w);
		if (!any_redelivered(msgs, w.n))
			retry = (RetryState) {false, 0};
	}
}
