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
#include "order_processing.h"
#include "ordflow.h"
#include "worker_common.h"

#define TAG_ORDERS		"ordflow-orders"
#define TAG_EVENTS		"ordflow-user-events"
/* A message's header and body follow its deliver frame at once. */
#define CONTENT_TIMEOUT_MS	10000

static bool
start_consuming(OfAmqp *a)
{
	amqp_basic_qos(a->conn, OF_AMQP_CHANNEL, 0, (uint16_t) ordflow_prefetch, 0);
	if (amqp_get_rpc_reply(a->conn).reply_type != AMQP_RESPONSE_NORMAL)
	{
		of_amqp_fail(a, "basic.qos was refused");
		return false;
	}
	amqp_basic_consume(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_orders_queue),
					   amqp_cstring_bytes(TAG_ORDERS), 0, 0, 0, amqp_empty_table);
	if (amqp_get_rpc_reply(a->conn).reply_type != AMQP_RESPONSE_NORMAL)
	{
		of_amqp_fail(a, "could not consume from queue \"%s\"", ordflow_orders_queue);
		return false;
	}
	amqp_basic_consume(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_user_events_queue),
					   amqp_cstring_bytes(TAG_EVENTS), 0, 0, 0, amqp_empty_table);
	if (amqp_get_rpc_reply(a->conn).reply_type != AMQP_RESPONSE_NORMAL)
	{
		of_amqp_fail(a, "could not consume from queue \"%s\"", ordflow_user_events_queue);
		return false;
	}
	return true;
}

static char *
bytes_dup(amqp_bytes_t b)
{
	char	   *s = palloc(b.len + 1);

	memcpy(s, b.bytes, b.len);
	s[b.len] = '\0';
	return s;
}

/* Wait for the next content frame of the message being read. */
static bool
content_frame(OfAmqp *a, amqp_frame_t *frame)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CONTENT_TIMEOUT_MS);

	for (;;)
	{
		long		remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		OfWait		w;

		if (remaining <= 0)
		{
			of_amqp_fail(a, "timed out reading a message's content");
			return false;
		}
		w = of_amqp_next_frame(a, frame, remaining);
		if (w == OF_WAIT_FRAME)
			return true;
		if (w == OF_WAIT_ERROR)
			return false;
		/* latch or timeout: keep reading; interrupts are handled after */
	}
}

/* Read the header and body that follow a basic.deliver into m. */
static bool
read_message(OfAmqp *a, amqp_basic_deliver_t *d, OfMessage *m)
{
	amqp_frame_t frame;
	uint64		size;
	size_t		got = 0;

	memset(m, 0, sizeof(*m));
	m->delivery_tag = d->delivery_tag;
	m->redelivered = d->redelivered;
	m->routing_key = bytes_dup(d->routing_key);
	if (d->consumer_tag.len == strlen(TAG_EVENTS) &&
		memcmp(d->consumer_tag.bytes, TAG_EVENTS, d->consumer_tag.len) == 0)
	{
		m->kind = OF_MSG_USER_EVENT;
		m->queue = pstrdup(ordflow_user_events_queue);
	}
	else
	{
		m->kind = OF_MSG_ORDER;
		m->queue = pstrdup(ordflow_orders_queue);
	}

	if (!content_frame(a, &frame))
		return false;
	if (frame.frame_type != AMQP_FRAME_HEADER)
	{
		of_amqp_fail(a, "protocol error: expected a content header");
		return false;
	}
	size = frame.payload.properties.body_size;
	{
		amqp_basic_properties_t *p = frame.payload.properties.decoded;

		if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
			m->reply_to = bytes_dup(p->reply_to);
		if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
			m->correlation_id = bytes_dup(p->correlation_id);
		if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
			m->message_id = bytes_dup(p->message_id);
		if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
		{
			for (int i = 0; i < p->headers.num_entries; i++)
			{
				amqp_table_entry_t *e = &p->headers.entries[i];

				if (e->key.len == 16 && memcmp(e->key.bytes, "x-ordflow-source", 16) == 0 &&
					e->value.kind == AMQP_FIELD_KIND_UTF8 &&
					e->value.value.bytes.len == 6 &&
					memcmp(e->value.value.bytes.bytes, "outbox", 6) == 0)
					m->from_outbox = true;
			}
		}
	}
	if (size >= MaxAllocHugeSize)
	{
		of_amqp_fail(a, "message of %llu bytes is too large", (unsigned long long) size);
		return false;
	}
	m->body = palloc_extended(size + 1, MCXT_ALLOC_HUGE);
	while (got < size)
	{
		if (!content_frame(a, &frame))
			return false;
		if (frame.frame_type != AMQP_FRAME_BODY ||
			got + frame.payload.body_fragment.len > size)
		{
			of_amqp_fail(a, "protocol error in a message body");
			return false;
		}
		memcpy(m->body + got, frame.payload.body_fragment.bytes, frame.payload.body_fragment.len);
		got += frame.payload.body_fragment.len;
	}
	m->body[size] = '\0';
	m->body_len = size;
	return true;
}

/*
 * Collect up to ordflow.batch_size messages: wait up to idle_ms for the
 * first, then at most ordflow.batch_wait_ms more for the rest.  Returns the
 * count; -1 if the connection broke (nothing of the batch is acked then, so
 * the broker redelivers it).
 */
static int
collect_batch(OfAmqp *a, OfMessage *msgs, int max, long idle_ms)
{
	int			n = 0;
	TimestampTz batch_deadline = 0;

	while (n < max)
	{
		amqp_frame_t frame;
		long		timeout;
		OfWait		w;

		if (n == 0)
			timeout = idle_ms;
		else
		{
			timeout = (long) ((batch_deadline - GetCurrentTimestamp()) / 1000);
			if (timeout < 0)
				timeout = 0;
		}
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
			if (!read_message(a, frame.payload.method.decoded, &msgs[n]))
				return -1;
			if (n == 0)
				batch_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ordflow_batch_wait_ms);
			n++;
		}
		/* anything else on the channel is of no interest */
	}
	return n;
}

static void
send_replies(OfAmqp *a, OfMessage *msgs, int n)
{
	for (int i = 0; i < n && a->connected; i++)
	{
		amqp_basic_properties_t props;

		if (msgs[i].reply == NULL || msgs[i].reply_to == NULL || msgs[i].reply_to[0] == '\0')
			continue;
		if (a->blocked)
		{
			ereport(LOG, (errmsg("ordflow: broker is blocked, reply to \"%s\" dropped", msgs[i].reply_to)));
			continue;
		}
		memset(&props, 0, sizeof(props));
		props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
		props.content_type = amqp_cstring_bytes("application/json");
		if (msgs[i].correlation_id)
		{
			props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
			props.correlation_id = amqp_cstring_bytes(msgs[i].correlation_id);
		}
		of_amqp_watchdog_arm(10000);
		of_amqp_publish(a, "", msgs[i].reply_to, msgs[i].reply, strlen(msgs[i].reply), &props);
		of_amqp_watchdog_disarm();
	}
}

/* One transaction for the batch; false if it failed (already logged). */
static bool
process_batch(OfWorkerSlot *slot, MemoryContext cxt, OfMessage *msgs, int n,
			  int index, OfBatchStats *stats, bool *missing)
{
	volatile bool ok = true;

	PG_TRY();
	{
		of_begin_tx("ordflow consumer: processing a batch");
		if (of_extension_exists())
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

			of_process_batch(msgs, n, index, stats);
			MemoryContextSwitchTo(oldcxt);
		}
		else
			*missing = true;
		of_commit_tx();
	}
	PG_CATCH();
	{
		of_report_error(slot, "consumer");
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

void
ordflow_consumer_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	int			index = slotno - OF_SLOT_CONSUMER0;
	OfWorkerSlot *slot;
	OfAmqp		a;
	uint64		consuming_on = 0;	/* connection generation we subscribed on */
	MemoryContext batch_cxt;
	OfMessage  *msgs = NULL;
	int			msgs_cap = 0;

	slot = of_worker_start(slotno, OF_WORKER_CONSUMER, index);

	memset(&a, 0, sizeof(a));
	a.fd = -1;
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "ordflow consumer batch",
									  ALLOCSET_DEFAULT_SIZES);

	while (true)
	{
		long		wait_ms;
		long		idle_ms;
		int			n;
		bool		failed = false;
		bool		missing = false;
		OfBatchStats stats;
		MemoryContext oldcxt;

		of_worker_interrupts();
		MemoryContextReset(batch_cxt);
		if (a.conn)
			amqp_maybe_release_buffers(a.conn);

		if (!of_amqp_ensure_connected(&a, false, &wait_ms))
		{
			of_slot_set_connected(slot, false);
			of_slot_set_error(slot, a.error, a.error_class);
			of_slot_set_state(slot, "waiting to reconnect to the broker");
			of_worker_wait(wait_ms);
			continue;
		}
		/* Every new connection, including one after a reload, subscribes again. */
		if (consuming_on != a.generation)
		{
			if (!start_consuming(&a))
			{
				/* e.g. an exclusive consumer elsewhere: do not hammer the broker */
				of_slot_set_error(slot, a.error, a.error_class);
				of_worker_wait(1000);
				continue;
			}
			consuming_on = a.generation;
		}
		of_slot_set_connected(slot, true);

		if (msgs_cap != ordflow_batch_size)
		{
			if (msgs)
				pfree(msgs);
			msgs_cap = ordflow_batch_size;
			msgs = MemoryContextAlloc(TopMemoryContext, sizeof(OfMessage) * msgs_cap);
		}

		of_slot_set_state(slot, "waiting for messages");
		idle_ms = ordflow_heartbeat > 0 ? Min(1000L, ordflow_heartbeat * 500L) : 1000L;
		oldcxt = MemoryContextSwitchTo(batch_cxt);
		n = collect_batch(&a, msgs, msgs_cap, idle_ms);
		MemoryContextSwitchTo(oldcxt);
		if (n < 0)
			continue;			/* reconnect; unacked messages come back */
		if (n == 0)
			continue;

		of_slot_set_state(slot, "processing");
		memset(&stats, 0, sizeof(stats));
		failed = !process_batch(slot, batch_cxt, msgs, n, index, &stats, &missing);

		if (missing || failed)
		{
			/* Give the messages back to the broker untouched. */
			of_amqp_requeue(&a, msgs[n - 1].delivery_tag);
			if (missing)
			{
				of_amqp_disconnect(&a, true);
				proc_exit(0);
			}
			of_worker_wait(500);
			continue;
		}

		send_replies(&a, msgs, n);
		if (of_amqp_ack(&a, msgs[n - 1].delivery_tag))
			of_slot_add_processed(slot, n);
		if (stats.generated > 0)
		{
			SpinLockAcquire(&OfState->mutex);
			OfState->generated_processed += stats.generated;
			SpinLockRelease(&OfState->mutex);
		}
		/* after a truncate() every batch has some: keep them out of the log */
		if (stats.stale > 0)
			elog(DEBUG1, "ordflow: dropped %d message(s) of orders removed by ordflow.truncate()",
				 stats.stale);
		if (stats.dead > 0)
			ereport(LOG,
					(errmsg("ordflow: %d message(s) moved to ordflow.dead_letters", stats.dead)));
	}
}
