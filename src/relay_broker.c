/*-------------------------------------------------------------------------
 *
 * relay_broker.c
 *	  The relay's side of the broker: the window of chunks in flight,
 *	  publishing them in bursts with their properties and origin headers,
 *	  reading confirms, and what a failed connection or a refusal does to
 *	  the window (see relay.c for why a refusal makes the range suspect).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "ordflow.h"
#include "relay.h"
#include "worker_common.h"

/* Publishes between two looks at the socket (confirms, connection.blocked). */
#define RELAY_BURST					32

typedef struct RelayProps
{
	amqp_basic_properties_t props;
	amqp_table_entry_t headers[3];
} RelayProps;

/*
 * Every message: JSON, persistent, app_id ordflow, and the headers that
 * tell a consumer where it comes from: x-ordflow-source "outbox" (what 1.0
 * consumers look for), x-ordflow-node and x-ordflow-origin.
 *
 * A re-driven dead letter (kind retry) is the exception: it may be an
 * outside order that never got a row here, and a consumer takes a message
 * with our node and origin and no row for our own order that truncate()
 * removed, and drops it.  So it is marked x-ordflow-source "retry" and
 * carries no node or origin: it is processed like the outside message it
 * was (one of our own orders is then recognised by its order_id).  A
 * forwarded message (kind forward: an order or user event a consumer took
 * from a shared queue and hands on to its partition) is published the same
 * way, as it was received, marked x-ordflow-source "forward".
 */
static void
set_properties(RelayProps *p, RelayMsg *m)
{
	amqp_basic_properties_t *props = &p->props;

	memset(p, 0, sizeof(*p));
	props->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
		AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_APP_ID_FLAG;
	props->content_type = amqp_cstring_bytes("application/json");
	props->delivery_mode = 2;	/* persistent */
	props->app_id = amqp_cstring_bytes("ordflow");
	if (m->message_id)
	{
		props->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		props->message_id = amqp_cstring_bytes(m->message_id);
	}
	if (m->correlation_id)
	{
		props->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
		props->correlation_id = amqp_cstring_bytes(m->correlation_id);
	}
	if (m->reply_to)
	{
		props->_flags |= AMQP_BASIC_REPLY_TO_FLAG;
		props->reply_to = amqp_cstring_bytes(m->reply_to);
	}
	p->headers[0].key = amqp_cstring_bytes("x-ordflow-source");
	p->headers[0].value.kind = AMQP_FIELD_KIND_UTF8;
	p->headers[0].value.value.bytes =
		amqp_cstring_bytes(m->kind == KIND_RETRY ? "retry" :
						   m->kind == KIND_FORWARD ? "forward" : "outbox");
	p->headers[1].key = amqp_cstring_bytes("x-ordflow-node");
	p->headers[1].value.kind = AMQP_FIELD_KIND_I32;
	p->headers[1].value.value.i32 = ordflow_node_id;
	p->headers[2].key = amqp_cstring_bytes("x-ordflow-origin");
	p->headers[2].value.kind = AMQP_FIELD_KIND_UTF8;
	p->headers[2].value.value.bytes = amqp_cstring_bytes((char *) of_message_origin());
	props->headers.num_entries = (m->kind == KIND_RETRY || m->kind == KIND_FORWARD) ? 1 : 3;
	props->headers.entries = p->headers;
}

/* The first chunk of the window with messages not yet sent, or NULL. */
RelayChunk *
of_relay_unpublished_chunk(Relay *r)
{
	for (int i = 0; i < r->nchunks; i++)
		if (r->window[i].published < r->window[i].n)
			return &r->window[i];
	return NULL;
}

/*
 * Send up to RELAY_BURST messages of c, then come back: the caller looks
 * at the socket in between, so a connection.blocked is seen before the
 * socket's buffers fill, and confirms keep flowing.  Tags are consecutive:
 * only one chunk is ever being sent.
 */
void
of_relay_publish_some(Relay *r, RelayChunk *c)
{
	int			end = Min(c->n, c->published + RELAY_BURST);
	RelayProps	p;

	if (c->published == 0)
		c->first_tag = r->a.next_tag;
	/* A publish can block forever on a broker that stopped reading. */
	of_amqp_watchdog_arm(RELAY_CONFIRM_TIMEOUT_MS);
	while (c->published < end && r->a.connected)
	{
		RelayMsg   *m = &c->msgs[c->published];

		set_properties(&p, m);
		if (!of_amqp_publish(&r->a, m->exchange, m->routing_key, m->body, m->len, &p.props))
		{
			/*
			 * It may have gone out in part, and the broker may have closed
			 * on it: count it as sent, and look for the broker's reason.
			 */
			c->published++;
			of_amqp_read_close(&r->a, 500);
			break;
		}
		c->published++;
	}
	of_amqp_watchdog_disarm();
	r->progress_at = GetCurrentTimestamp();
}

/* Read every frame that is already there (confirms, blocked, close). */
void
of_relay_poll_frames(Relay *r)
{
	amqp_frame_t frame;
	OfWait		w;

	do
		w = of_amqp_next_frame(&r->a, &frame, 0);
	while (w == OF_WAIT_CONTROL || w == OF_WAIT_FRAME);
	if (w == OF_WAIT_LATCH)
		CHECK_FOR_INTERRUPTS();
	if (r->a.acked_upto != r->acked_seen)
	{
		r->acked_seen = r->a.acked_upto;
		r->progress_at = GetCurrentTimestamp();
	}
}

void
of_relay_drop_chunk(Relay *r, int i)
{
	MemoryContextDelete(r->window[i].cxt);
	for (int j = i; j < r->nchunks - 1; j++)
		r->window[j] = r->window[j + 1];
	r->nchunks--;
}

/* Delete the rows of the chunks at the head of the window the broker confirmed. */
void
of_relay_complete_chunks(Relay *r)
{
	while (r->nchunks > 0)
	{
		RelayChunk *c = &r->window[0];
		int64		hi = c->hi;

		if (c->published < c->n || r->a.acked_upto < c->first_tag + c->n - 1)
			return;
		of_relay_delete_chunk(c);
		of_slot_add_processed(r->slot, c->n);
		of_relay_drop_chunk(r, 0);
		if (r->suspect && hi >= r->suspect_hi)
		{
			r->suspect = false;
			ereport(LOG, (errmsg("ordflow relay: every suspect row is published or dead-lettered, publishing in chunks again")));
		}
	}
}

/*
 * The connection failed, or the broker nacked.  Nothing in flight was
 * deleted, so it is all published again after the reconnect.  When the
 * broker refused something, the id range in flight becomes suspect and is
 * sent one row at a time; when that one row is refused, it is the culprit.
 */
void
of_relay_window_failed(Relay *r)
{
	bool		refused = r->a.nacked || of_amqp_close_is_refusal(r->a.close_code);
	char		reason[OF_AMQP_ERRLEN];

	if (r->a.nacked)
		strlcpy(reason, "the broker refused (nacked) the message", sizeof(reason));
	else
		strlcpy(reason, r->a.error, sizeof(reason));

	/* chunks confirmed before the failure are done: neither resent nor suspect */
	of_relay_complete_chunks(r);

	if (refused && r->suspect && r->nchunks == 1 &&
		r->window[0].n == 1 && r->window[0].published == 1)
	{
		RelayMsg   *m = &r->window[0].msgs[0];
		TimestampTz now = GetCurrentTimestamp();

		/*
		 * A quorum queue nacks while it elects a new leader: the row is the
		 * culprit only when the refusal repeats for a while.
		 */
		if (m->id != r->refused_id)
		{
			r->refused_id = m->id;
			r->refusals = 0;
			r->first_refusal = now;
		}
		if (++r->refusals >= RELAY_REFUSALS &&
			TimestampDifferenceExceeds(r->first_refusal, now, RELAY_REFUSAL_MS))
		{
			of_relay_dead_letter_refused(m, reason);
			r->refused_id = 0;
			if (m->id >= r->suspect_hi)
				r->suspect = false;
		}
	}
	else if (refused && r->nchunks > 0)
	{
		int64		hi = r->window[0].hi;

		for (int i = 1; i < r->nchunks; i++)
			hi = Max(hi, r->window[i].hi);
		if (!r->suspect)
		{
			ereport(LOG,
					(errmsg("ordflow relay: the broker refused a message: %s", reason),
					 errdetail("The rows that were in flight are published again one at a time; the one refused again is moved to the dead letters.")));
			r->suspect_hi = hi;
		}
		else
			r->suspect_hi = Max(r->suspect_hi, hi);
		r->suspect = true;
	}
	while (r->nchunks > 0)
		of_relay_drop_chunk(r, r->nchunks - 1);
	/* a nack leaves the channel open; start over on a new one all the same */
	if (r->a.connected)
		of_amqp_fail(&r->a, "the broker refused (nacked) a published message");
	r->a.nacked = false;
	r->a.close_code = 0;
}
