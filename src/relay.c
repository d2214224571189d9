/*-------------------------------------------------------------------------
 *
 * relay.c
 *	  The relay worker: drains ordflow.outbox to the broker.
 *
 * No transaction is ever open across a network wait.  A chunk of the outbox
 * is read in a short transaction (rows that break the publishing rules are
 * moved to the dead letters in that same transaction), the transaction
 * commits, the chunk is published with publisher confirms, and once every
 * confirm of the chunk has arrived its ids are deleted in a second short
 * transaction.  Up to RELAY_WINDOW chunks are in flight at once: the next
 * chunk is read and published while the broker still confirms the previous
 * one.  A read skips the id range of the chunks in flight, so no row is
 * published twice by the same relay, but nothing is ever locked: should two
 * relays run, a row may be published twice, never lost.
 *
 * A crash between a confirm and the delete publishes the rows again; the
 * consumers' idempotency by order_id absorbs the duplicate, as in 1.0.
 *
 * Refusals.  A nack, or a channel or connection close with a reply code
 * that blames what we sent (403, 404, 406, frame errors, ...), cannot be
 * tied to one message: the channel dies with everything unconfirmed.  The
 * relay then reconnects and publishes the suspect id range one row at a
 * time, waiting for each confirm; the row that is refused again is moved to
 * the dead letters with the broker's reason.  A broker that goes away (a
 * socket error, a shutdown, a timeout) refuses nothing: the rows wait and
 * are published after the reconnect.  So no row makes the relay loop.
 *
 * This file is the worker's main loop.  Reading, validating and deleting
 * outbox rows, and the dead letters, are in relay_outbox.c; the window of
 * chunks in flight (publishing, confirms, refusals) is in relay_broker.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "ordflow.h"
#include "relay.h"
#include "worker_common.h"

/* Fallback poll of the outbox when no commit woke us. */
#define RELAY_POLL_MS				1000

/* Read the next chunk into the window.  False when the outbox had nothing. */
static bool
read_next(Relay *r, MemoryContext loop_cxt)
{
	RelayChunk	c;
	bool		got;

	memset(&c, 0, sizeof(c));
	/* under the loop's context until it is kept, so an error frees it */
	c.cxt = AllocSetContextCreate(loop_cxt, "ordflow relay chunk", ALLOCSET_DEFAULT_SIZES);
	r->woken = false;
	r->last_read_at = GetCurrentTimestamp();
	got = of_relay_read_chunk(r, &c, r->suspect ? 1 : ordflow_relay_batch_size);
	r->more = got && c.full;
	if (got && c.n > 0)
	{
		MemoryContextSetParent(c.cxt, TopMemoryContext);
		r->window[r->nchunks++] = c;
		return true;
	}
	MemoryContextDelete(c.cxt);
	/* nothing left of the suspect range (published, or all dead-lettered) */
	if (r->suspect && (!got || c.hi >= r->suspect_hi))
		r->suspect = false;
	return got;
}

/* Is there reason to look at the outbox now? */
static bool
should_read(Relay *r)
{
	if (r->nchunks >= (r->suspect ? 1 : RELAY_WINDOW))
		return false;
	return r->woken || r->more || r->nchunks == 0 ||
		TimestampDifferenceExceeds(r->last_read_at, GetCurrentTimestamp(), RELAY_POLL_MS);
}

/*
 * One turn of the relay.  Returns how long to wait for the socket or the
 * latch before the next turn (0: go on at once).
 */
static long
relay_step(Relay *r, MemoryContext loop_cxt)
{
	long		wait_ms;
	RelayChunk *c;
	long		remaining;

	if (r->nchunks > 0 && (!r->a.connected || r->a.nacked))
		of_relay_window_failed(r);
	if (!of_amqp_ensure_connected(&r->a, true, &wait_ms))
	{
		of_slot_set_connected(r->slot, false);
		of_slot_set_node(r->slot, "");
		of_slot_set_error(r->slot, r->a.error, r->a.error_class);
		of_slot_set_state(r->slot, "waiting to reconnect to the broker");
		of_worker_wait(wait_ms);
		r->woken = true;
		return 0;
	}
	if (r->a.generation != r->generation)
	{
		/*
		 * A new connection (the old one failed, or the settings changed):
		 * nothing of the old one's failure applies, and tags start over, so
		 * whatever is still in the window is sent again.
		 */
		r->generation = r->a.generation;
		r->a.close_code = 0;
		r->acked_seen = r->a.acked_upto;
		while (r->nchunks > 0)
			of_relay_drop_chunk(r, r->nchunks - 1);
		of_slot_set_connected(r->slot, true);
		of_slot_set_node(r->slot, r->a.node);
	}

	of_relay_poll_frames(r);
	if (!r->a.connected || r->a.nacked)
		return 0;
	of_relay_complete_chunks(r);

	if (r->a.blocked)
	{
		/*
		 * Publishing now would hang in the socket, and a resource alarm holds
		 * confirms back for as long as it lasts: that is not a dead broker.
		 * Nothing is read meanwhile, so no transaction waits for the alarm.
		 */
		of_slot_set_state(r->slot, "blocked by the broker (resource alarm)");
		r->progress_at = GetCurrentTimestamp();
		return RELAY_POLL_MS;
	}
	if ((c = of_relay_unpublished_chunk(r)) != NULL)
	{
		of_slot_set_state(r->slot, r->suspect ? "publishing suspect rows one at a time" : "publishing");
		of_relay_publish_some(r, c);
		return 0;
	}
	if (should_read(r) && read_next(r, loop_cxt))
		return 0;
	if (r->nchunks == 0)
	{
		of_slot_set_state(r->slot, "idle");
		return RELAY_POLL_MS;
	}

	remaining = RELAY_CONFIRM_TIMEOUT_MS -
		(long) ((GetCurrentTimestamp() - r->progress_at) / 1000);
	if (remaining <= 0)
	{
		of_amqp_fail(&r->a, "the broker confirmed nothing within %d s",
					 RELAY_CONFIRM_TIMEOUT_MS / 1000);
		return 0;
	}
	of_slot_set_state(r->slot, "waiting for confirms");
	return Min(remaining, RELAY_POLL_MS);
}

/* After an ERROR in a turn: forget the window (its rows are sent again). */
static void
relay_reset(Relay *r)
{
	while (r->nchunks > 0)
		of_relay_drop_chunk(r, r->nchunks - 1);
	if (r->a.connected && r->a.nacked)
		of_amqp_fail(&r->a, "the broker refused (nacked) a published message");
	r->a.nacked = false;
	r->woken = true;
}

void
ordflow_relay_main(Datum main_arg)
{
	static Relay r;
	MemoryContext loop_cxt;

	memset(&r, 0, sizeof(r));
	r.slot = of_worker_start(OF_SLOT_RELAY, OF_WORKER_RELAY, 0);
	r.a.fd = -1;
	r.woken = true;
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "ordflow relay loop",
									 ALLOCSET_DEFAULT_SIZES);

	while (true)
	{
		long		wait_ms;
		MemoryContext oldcxt;
		amqp_frame_t frame;

		of_worker_interrupts();
		MemoryContextReset(loop_cxt);
		/* frames decoded by librabbitmq live in its pools until released */
		if (r.a.conn)
			amqp_maybe_release_buffers(r.a.conn);
		oldcxt = MemoryContextSwitchTo(loop_cxt);
		PG_TRY();
		{
			wait_ms = relay_step(&r, loop_cxt);
		}
		PG_CATCH();
		{
			of_amqp_watchdog_disarm();
			(void) of_report_error(r.slot, loop_cxt);
			relay_reset(&r);
			wait_ms = -1;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(oldcxt);

		if (r.extension_gone)
		{
			of_amqp_disconnect(&r.a, true);
			proc_exit(0);
		}
		if (wait_ms < 0)
			of_worker_wait(1000);	/* after an error: no busy loop */
		else if (wait_ms > 0 && r.a.connected &&
				 of_amqp_next_frame(&r.a, &frame, wait_ms) == OF_WAIT_LATCH)
			r.woken = true;
	}
}
