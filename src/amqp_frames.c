/*-------------------------------------------------------------------------
 *
 * amqp_frames.c
 *	  Frames on the broker connection of an ordflow worker: waiting for
 *	  them on the latch and the socket together, the control frames every
 *	  worker handles the same way (publisher confirms, connection.blocked,
 *	  closes), publishing, acks and requeues.
 *
 * Every wait happens in WaitLatchOrSocket(), after the library's own
 * buffers were drained with a zero-timeout read.  A call that may block on
 * the socket is bracketed by the watchdog of amqp_conn.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <amqp.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "amqp_conn.h"
#include "worker_common.h"

/*
 * Record a publisher confirm.  Confirms may arrive out of order (one queue
 * confirms before another), so a single ack above the contiguous prefix is
 * kept aside until the prefix reaches it: acked_upto never claims a message
 * the broker has not confirmed.
 */
static void
confirm(OfAmqp *a, uint64 tag, bool multiple)
{
	bool		moved;

	if (multiple)
		a->acked_upto = Max(a->acked_upto, tag);
	else if (tag == a->acked_upto + 1)
		a->acked_upto = tag;
	else if (tag > a->acked_upto)
	{
		if (a->n_early_acks == a->max_early_acks)
		{
			a->max_early_acks = Max(64, a->max_early_acks * 2);
			a->early_acks = a->early_acks ?
				repalloc(a->early_acks, sizeof(uint64) * a->max_early_acks) :
				MemoryContextAlloc(TopMemoryContext, sizeof(uint64) * a->max_early_acks);
		}
		a->early_acks[a->n_early_acks++] = tag;
		return;
	}

	/* Absorb the early acks the prefix has reached. */
	do
	{
		moved = false;
		for (int i = 0; i < a->n_early_acks; i++)
		{
			if (a->early_acks[i] <= a->acked_upto + 1)
			{
				a->acked_upto = Max(a->acked_upto, a->early_acks[i]);
				a->early_acks[i--] = a->early_acks[--a->n_early_acks];
				moved = true;
			}
		}
	} while (moved);
}

/*
 * Handle a frame every worker cares about the same way.  Returns true when
 * the frame was consumed here.
 */
static bool
handle_common_frame(OfAmqp *a, amqp_frame_t *f)
{
	if (f->frame_type != AMQP_FRAME_METHOD)
		return false;
	switch (f->payload.method.id)
	{
		case AMQP_CONNECTION_BLOCKED_METHOD:
			if (!a->blocked)
				ereport(LOG, (errmsg("ordflow: the broker blocked publishing (resource alarm)")));
			a->blocked = true;
			return true;
		case AMQP_CONNECTION_UNBLOCKED_METHOD:
			if (a->blocked)
				ereport(LOG, (errmsg("ordflow: the broker unblocked publishing")));
			a->blocked = false;
			return true;
		case AMQP_BASIC_ACK_METHOD:
			{
				amqp_basic_ack_t *m = f->payload.method.decoded;

				confirm(a, m->delivery_tag, m->multiple);
				return true;
			}
		case AMQP_BASIC_NACK_METHOD:
			a->nacked = true;
			return true;
		case AMQP_CONNECTION_CLOSE_METHOD:
			{
				amqp_connection_close_t *m = f->payload.method.decoded;
				amqp_connection_close_ok_t ok;

				of_amqp_fail(a, "broker closed the connection: %d %.*s", m->reply_code,
							 (int) m->reply_text.len, (char *) m->reply_text.bytes);
				a->close_code = m->reply_code;
				of_amqp_watchdog_arm(2000);
				amqp_send_method(a->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
				of_amqp_watchdog_disarm();
				return true;
			}
		case AMQP_CHANNEL_CLOSE_METHOD:
			{
				amqp_channel_close_t *m = f->payload.method.decoded;
				amqp_channel_close_ok_t ok;

				of_amqp_fail(a, "broker closed the channel: %d %.*s", m->reply_code,
							 (int) m->reply_text.len, (char *) m->reply_text.bytes);
				a->close_code = m->reply_code;
				of_amqp_watchdog_arm(2000);
				amqp_send_method(a->conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
				of_amqp_watchdog_disarm();
				return true;
			}
		case AMQP_BASIC_CANCEL_METHOD:
			of_amqp_fail(a, "the broker cancelled the consumer (queue deleted?)");
			return true;
		default:
			return false;
	}
}

/*
 * Next frame for the caller, waiting at most timeout_ms on the socket and
 * the latch together.  Control frames (blocked, confirms, close) are
 * handled here and reported as OF_WAIT_CONTROL.
 */
OfWait
of_amqp_next_frame(OfAmqp *a, amqp_frame_t *frame, long timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	struct timeval zero = {0, 0};

	for (;;)
	{
		int			status;
		long		remaining;
		int			rc;

		if (!a->connected)
			return OF_WAIT_ERROR;

		/* Drain what the library (or TLS) holds before sleeping. */
		status = amqp_simple_wait_frame_noblock(a->conn, frame, &zero);
		if (status == AMQP_STATUS_OK)
		{
			/* Control frames change our state: let the caller look again. */
			if (handle_common_frame(a, frame))
				return a->connected ? OF_WAIT_CONTROL : OF_WAIT_ERROR;
			return OF_WAIT_FRAME;
		}
		if (status != AMQP_STATUS_TIMEOUT)
		{
			of_amqp_fail(a, "reading from the broker: %s", amqp_error_string2(status));
			return OF_WAIT_ERROR;
		}

		remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (remaining <= 0)
			return OF_WAIT_TIMEOUT;
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   a->fd, of_idle_wait_ms(remaining), PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			return OF_WAIT_LATCH;
		}
	}
}

/*
 * After a failed write: the broker may have closed the channel or the
 * connection on purpose (a refused publish) just before, and its close may
 * still wait in the socket.  Read what is there, for at most timeout_ms, so
 * that close_code tells a refusal from an outage.
 */
void
of_amqp_read_close(OfAmqp *a, long timeout_ms)
{
	struct timeval tv;
	amqp_frame_t frame;

	if (a->conn == NULL)
		return;
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	/* bounded: a broker that keeps talking must not keep us here */
	for (int i = 0; i < 1000 && a->close_code == 0; i++)
	{
		if (amqp_simple_wait_frame_noblock(a->conn, &frame, &tv) != AMQP_STATUS_OK)
			break;
		if (frame.frame_type == AMQP_FRAME_METHOD &&
			(frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
			 frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD))
			(void) handle_common_frame(a, &frame);
	}
}

bool
of_amqp_publish(OfAmqp *a, const char *exchange, const char *routing_key,
				const char *body, size_t len, amqp_basic_properties_t *props)
{
	amqp_bytes_t b;
	int			status;

	b.bytes = (void *) body;
	b.len = len;
	status = amqp_basic_publish(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(exchange),
								amqp_cstring_bytes(routing_key), 0, 0, props, b);
	if (status != AMQP_STATUS_OK)
	{
		of_amqp_fail(a, "publishing: %s", amqp_error_string2(status));
		return false;
	}
	if (a->confirms)
		a->next_tag++;
	return true;
}

/*
 * Does a close with this reply code mean the broker refused what we sent
 * (access refused, no such exchange, message too large, frame error, ...)?
 * A shutdown (320 connection-forced), a normal close and the broker's own
 * internal errors say nothing about the message: those are outages, and
 * whatever was in flight is sent again after the reconnect.
 */
bool
of_amqp_close_is_refusal(int reply_code)
{
	switch (reply_code)
	{
		case 0:
		case AMQP_REPLY_SUCCESS:	/* 200 */
		case AMQP_CONNECTION_FORCED:	/* 320 */
		case AMQP_INTERNAL_ERROR:	/* 541 */
			return false;
		default:
			return true;
	}
}

bool
of_amqp_ack(OfAmqp *a, uint64 delivery_tag)
{
	int			status;

	of_amqp_watchdog_arm(OF_RPC_TIMEOUT_MS);
	status = amqp_basic_ack(a->conn, OF_AMQP_CHANNEL, delivery_tag, 1);
	of_amqp_watchdog_disarm();
	if (status != AMQP_STATUS_OK)
	{
		of_amqp_fail(a, "acknowledging: %s", amqp_error_string2(status));
		return false;
	}
	return true;
}

bool
of_amqp_requeue(OfAmqp *a, uint64 delivery_tag)
{
	int			status;

	of_amqp_watchdog_arm(OF_RPC_TIMEOUT_MS);
	status = amqp_basic_nack(a->conn, OF_AMQP_CHANNEL, delivery_tag, 1, 1);
	of_amqp_watchdog_disarm();
	if (status != AMQP_STATUS_OK)
	{
		of_amqp_fail(a, "requeueing: %s", amqp_error_string2(status));
		return false;
	}
	return true;
}
