/*-------------------------------------------------------------------------
 *
 * relay.c
 *	  The relay worker: drains ordflow.outbox to the exchange.
 *
 * One transaction per batch: DELETE ... RETURNING a chunk of the outbox,
 * publish every row (persistent, JSON, publisher confirms), wait until the
 * broker confirmed them all, and only then commit.  A nack, a lost
 * connection or a crash rolls the delete back, so the rows are published
 * again later: the broker may see an order twice, never zero times, and the
 * consumers' idempotency by order_id absorbs the duplicate.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "ordflow.h"
#include "spi_util.h"
#include "worker_common.h"

/* How long the broker may take to confirm a batch before we give up on it. */
#define RELAY_CONFIRM_TIMEOUT_MS	15000
/* Fallback poll of the outbox when no commit woke us. */
#define RELAY_POLL_MS				1000

static const char *take_batch_sql =
"DELETE FROM ordflow.outbox WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY("
"  SELECT id FROM ordflow.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))"
" RETURNING order_id, routing_key, payload, kind, correlation_id";

static const Oid take_batch_type = INT8OID;
static SPIPlanPtr take_plan = NULL;

static void
set_properties(amqp_basic_properties_t *props, amqp_table_entry_t *header,
			   char *message_id)
{
	static char origin[64];

	memset(props, 0, sizeof(*props));
	props->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
		AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_APP_ID_FLAG;
	props->content_type = amqp_cstring_bytes("application/json");
	props->delivery_mode = 2;	/* persistent */
	props->app_id = amqp_cstring_bytes("ordflow");
	props->message_id = amqp_cstring_bytes(message_id);
	/* Lets a consumer tell our own orders (which exist in the table) from
	 * an outside producer's. */
	header[0].key = amqp_cstring_bytes("x-ordflow-source");
	header[0].value.kind = AMQP_FIELD_KIND_UTF8;
	header[0].value.value.bytes = amqp_cstring_bytes("outbox");
	header[1].key = amqp_cstring_bytes("x-ordflow-node");
	header[1].value.kind = AMQP_FIELD_KIND_I32;
	header[1].value.value.i32 = ordflow_node_id;
	strlcpy(origin, of_message_origin(), sizeof(origin));
	header[2].key = amqp_cstring_bytes("x-ordflow-origin");
	header[2].value.kind = AMQP_FIELD_KIND_UTF8;
	header[2].value.value.bytes = amqp_cstring_bytes(origin);
	props->headers.num_entries = 3;
	props->headers.entries = header;
}

/*
 * Publish one batch.  Returns the number of rows published and committed,
 * 0 when the outbox was empty, -1 when the batch was rolled back.
 */
static int
publish_batch(OfAmqp *a, OfWorkerSlot *slot, bool *missing)
{
	Datum		arg = Int64GetDatum(ordflow_relay_batch_size);
	uint64		n;
	uint64		last_tag;
	TimestampTz deadline;
	amqp_basic_properties_t props;
	amqp_table_entry_t header[3];

	of_begin_tx("ordflow relay: publishing the outbox");
	if (!of_extension_exists())
	{
		*missing = true;
		of_commit_tx();
		return 0;
	}
	of_run_plan(&take_plan, take_batch_sql, 1, &take_batch_type, &arg, NULL,
				SPI_OK_DELETE_RETURNING);
	n = SPI_processed;
	if (n == 0)
	{
		of_commit_tx();
		return 0;
	}

	/* A publish can block forever on a broker that stopped reading. */
	of_amqp_watchdog_arm(RELAY_CONFIRM_TIMEOUT_MS);
	for (uint64 i = 0; i < n && a->connected; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		order_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *routing_key = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		text	   *payload = DatumGetTextPP(SPI_getbinval(tup, desc, 3, &isnull));
		char		message_id[24];

		bool		reply;

		snprintf(message_id, sizeof(message_id), INT64_FORMAT, order_id);
		set_properties(&props, header, message_id);
		/* interim: replies to the default exchange (the relay rewrite does all kinds) */
		reply = strcmp(TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull)), "reply") == 0;
		if (reply)
		{
			Datum		c = SPI_getbinval(tup, desc, 5, &isnull);

			if (!isnull)
			{
				props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
				props.correlation_id = amqp_cstring_bytes(TextDatumGetCString(c));
			}
			props._flags &= ~AMQP_BASIC_MESSAGE_ID_FLAG;
		}
		of_amqp_publish(a, reply ? "" : ordflow_exchange, routing_key,
						VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &props);
		pfree(routing_key);
	}
	of_amqp_watchdog_disarm();

	/* Wait for the confirms of everything we sent. */
	last_tag = a->next_tag - 1;
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RELAY_CONFIRM_TIMEOUT_MS);
	while (a->connected && !a->nacked && a->acked_upto < last_tag)
	{
		amqp_frame_t frame;
		long		remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		OfWait		w;

		if (a->blocked)
		{
			/*
			 * A resource alarm holds confirms back for as long as it lasts;
			 * that is not a broken connection.  Wait for connection.unblocked
			 * (SIGTERM still gets us out at once).
			 */
			of_slot_set_state(slot, "blocked by the broker (resource alarm)");
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RELAY_CONFIRM_TIMEOUT_MS);
			remaining = RELAY_CONFIRM_TIMEOUT_MS;
		}
		else if (remaining <= 0)
		{
			of_amqp_fail(a, "the broker did not confirm %llu messages within %d s",
						 (unsigned long long) n, RELAY_CONFIRM_TIMEOUT_MS / 1000);
			break;
		}
		else
			of_slot_set_state(slot, "waiting for confirms");
		w = of_amqp_next_frame(a, &frame, remaining);
		if (w == OF_WAIT_LATCH)
			CHECK_FOR_INTERRUPTS();
	}

	if (!a->connected || a->nacked)
	{
		if (a->nacked)
			of_amqp_fail(a, "the broker refused (nacked) a published message");
		AbortCurrentTransaction();
		of_slot_set_error(slot, a->error, a->error_class);
		return -1;
	}
	of_commit_tx();
	of_slot_add_processed(slot, n);
	return (int) n;
}

void
ordflow_relay_main(Datum main_arg)
{
	OfWorkerSlot *slot;
	OfAmqp		a;
	MemoryContext loop_cxt;

	slot = of_worker_start(OF_SLOT_RELAY, OF_WORKER_RELAY, 0);
	memset(&a, 0, sizeof(a));
	a.fd = -1;
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "ordflow relay loop",
									 ALLOCSET_DEFAULT_SIZES);

	while (true)
	{
		long		wait_ms;
		int			n = 0;
		bool		missing = false;
		MemoryContext oldcxt;
		amqp_frame_t frame;

		of_worker_interrupts();
		MemoryContextReset(loop_cxt);
		/* frames decoded by librabbitmq live in its pools until released */
		if (a.conn)
			amqp_maybe_release_buffers(a.conn);
		oldcxt = MemoryContextSwitchTo(loop_cxt);

		if (!of_amqp_ensure_connected(&a, true, &wait_ms))
		{
			of_slot_set_connected(slot, false);
			of_slot_set_node(slot, "");
			of_slot_set_error(slot, a.error, a.error_class);
			of_slot_set_state(slot, "waiting to reconnect to the broker");
			MemoryContextSwitchTo(oldcxt);
			of_worker_wait(wait_ms);
			continue;
		}
		of_slot_set_connected(slot, true);
		of_slot_set_node(slot, a.node);

		if (a.blocked)
		{
			/* Publishing now would hang in the socket; wait for unblocked. */
			of_slot_set_state(slot, "blocked by the broker (resource alarm)");
			MemoryContextSwitchTo(oldcxt);
			(void) of_amqp_next_frame(&a, &frame, RELAY_POLL_MS);
			continue;
		}

		of_slot_set_state(slot, "publishing");
		PG_TRY();
		{
			n = publish_batch(&a, slot, &missing);
		}
		PG_CATCH();
		{
			of_amqp_watchdog_disarm();
			(void) of_report_error(slot, loop_cxt);
			n = -1;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(oldcxt);

		if (missing)
		{
			of_amqp_disconnect(&a, true);
			proc_exit(0);
		}
		/*
		 * After a batch, look again at once: more may wait, and a commit's
		 * wake-up may have been consumed while we waited for confirms.
		 */
		if (n > 0)
			continue;
		if (n < 0)
		{
			of_worker_wait(100);
			continue;
		}

		of_slot_set_state(slot, "idle");
		/* Wakes on a commit's latch, on broker frames, or for the poll. */
		(void) of_amqp_next_frame(&a, &frame, RELAY_POLL_MS);
	}
}
