/*-------------------------------------------------------------------------
 *
 * amqp_topology.c
 *	  Declaring the contract's exchanges and queues, and turning broker
 *	  replies into readable errors.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <amqp.h>

#include "amqp_conn.h"
#include "ordflow.h"
#include "partitions.h"

void
of_amqp_reply_error(amqp_rpc_reply_t r, const char *what, char *buf, size_t len)
{
	switch (r.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			snprintf(buf, len, "%s: ok", what);
			break;
		case AMQP_RESPONSE_NONE:
			snprintf(buf, len, "%s: missing RPC reply", what);
			break;
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			snprintf(buf, len, "%s: %s", what, amqp_error_string2(r.library_error));
			break;
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = r.reply.decoded;

				snprintf(buf, len, "%s: broker closed the connection: %d %.*s", what,
						 m->reply_code, (int) m->reply_text.len,
						 (char *) m->reply_text.bytes);
			}
			else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = r.reply.decoded;

				snprintf(buf, len, "%s: broker closed the channel: %d %.*s", what,
						 m->reply_code, (int) m->reply_text.len,
						 (char *) m->reply_text.bytes);
			}
			else
				snprintf(buf, len, "%s: unexpected broker method 0x%08X", what, r.reply.id);
			break;
	}
}

/*
 * Names of ordflow's own topology, and the broker's: never a queue a reply
 * may go to.  The consumer checks reply_to with it, the relay again.
 */
bool
of_amqp_reserved_queue(const char *q)
{
	const char *own[] = {ordflow_exchange, ordflow_orders_queue, ordflow_user_events_queue};

	if (strncmp(q, "amq.", 4) == 0 || strncmp(q, "ordflow.", 8) == 0)
		return true;
	for (size_t i = 0; i < lengthof(own); i++)
	{
		size_t		n = strlen(own[i]);

		/* the name itself, or anything derived from it (.dead, .dlx, .<p>) */
		if (strncmp(q, own[i], n) == 0 && (q[n] == '\0' || q[n] == '.'))
			return true;
	}
	return false;
}

/* Did the broker refuse the call by closing its channel with this code? */
bool
of_amqp_channel_closed_with(amqp_rpc_reply_t r, int reply_code)
{
	return r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
		r.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
		((amqp_channel_close_t *) r.reply.decoded)->reply_code == reply_code;
}

/*
 * After such a refusal: confirm the close and open the channel again, so
 * the connection (and its other channel) goes on.
 */
bool
of_amqp_reopen_channel(OfAmqp *a, amqp_channel_t channel)
{
	amqp_channel_close_ok_t ok;

	if (amqp_send_method(a->conn, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK)
	{
		of_amqp_fail(a, "closing a refused channel: the connection failed");
		return false;
	}
	amqp_channel_open(a->conn, channel);
	return of_amqp_rpc_ok(a, "reopening a channel");
}

bool
of_amqp_rpc_ok(OfAmqp *a, const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(a->conn);

	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return true;
	of_amqp_reply_error(r, what, a->error, sizeof(a->error));
	of_amqp_set_error_class(a, what);
	return false;
}

static amqp_table_t
queue_arguments(amqp_table_entry_t *entries, char *dlx)
{
	amqp_table_t t;

	entries[0].key = amqp_cstring_bytes("x-dead-letter-exchange");
	entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
	entries[0].value.value.bytes = amqp_cstring_bytes(dlx);
	t.entries = entries;
	t.num_entries = 1;
	if (strcmp(ordflow_queue_type, "quorum") == 0)
	{
		entries[1].key = amqp_cstring_bytes("x-queue-type");
		entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
		entries[1].value.value.bytes = amqp_cstring_bytes("quorum");
		t.num_entries = 2;
	}
	return t;
}

/*
 * Declare <exchange>.dead with the configured queue type: a quorum queue
 * lives on every node, so it survives the loss of any one of them.  One
 * declared by an older version (classic, where quorum is configured now),
 * or by hand with other arguments, is refused with 406 PRECONDITION_FAILED;
 * it is used as it is, with a log line, rather than lock ordflow out.
 */
static bool
declare_dead_queue(OfAmqp *a, char *dead)
{
	amqp_connection_state_t c = a->conn;
	amqp_table_entry_t entry;
	amqp_table_t args = amqp_empty_table;
	amqp_rpc_reply_t r;

	if (strcmp(ordflow_queue_type, "quorum") == 0)
	{
		entry.key = amqp_cstring_bytes("x-queue-type");
		entry.value.kind = AMQP_FIELD_KIND_UTF8;
		entry.value.value.bytes = amqp_cstring_bytes("quorum");
		args.entries = &entry;
		args.num_entries = 1;
	}
	amqp_queue_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(dead), 0, 1, 0, 0, args);
	r = amqp_get_rpc_reply(c);
	if (of_amqp_channel_closed_with(r, AMQP_PRECONDITION_FAILED))
	{
		if (!of_amqp_reopen_channel(a, OF_AMQP_CHANNEL))
			return false;
		amqp_queue_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(dead), 1, 1, 0, 0,
						   amqp_empty_table);
		if (!of_amqp_rpc_ok(a, "declaring the dead-letter queue"))
			return false;
		ereport(LOG,
				(errmsg("ordflow: queue \"%s\" exists with arguments other than ordflow.queue_type = %s asks for; using it as it is",
						dead, ordflow_queue_type),
				 errhint("Delete the queue when it is empty to have ordflow declare it anew.")));
		return true;
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
	{
		of_amqp_reply_error(r, "declaring the dead-letter queue", a->error, sizeof(a->error));
		of_amqp_set_error_class(a, "declaring the dead-letter queue");
		return false;
	}
	return true;
}

static bool
bind(OfAmqp *a, const char *queue, const char *key, bool unbind)
{
	char	   *what = psprintf("%s queue \"%s\" %s \"%s\"", unbind ? "unbinding" : "binding",
							queue, unbind ? "from" : "to", key);
	bool		ok;

	if (unbind)
		amqp_queue_unbind(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(queue),
						  amqp_cstring_bytes(ordflow_exchange), amqp_cstring_bytes(key),
						  amqp_empty_table);
	else
		amqp_queue_bind(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(queue),
						amqp_cstring_bytes(ordflow_exchange), amqp_cstring_bytes(key),
						amqp_empty_table);
	ok = of_amqp_rpc_ok(a, what);
	pfree(what);
	return ok;
}

static bool
declare_queue(OfAmqp *a, const char *queue, amqp_table_t args)
{
	char	   *what = psprintf("declaring queue \"%s\"", queue);
	bool		ok;

	amqp_queue_declare(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
	ok = of_amqp_rpc_ok(a, what);
	pfree(what);
	return ok;
}

/*
 * The shared queues.  With one partition they take every order and user
 * event (order.#, user.#).  With more, only what names no partition
 * (order.created, user.<T>): the binding of the first kind, left by a run
 * with one partition, is removed, or the shared queue would get a copy of
 * every partition's messages.
 */
static bool
declare_shared_queues(OfAmqp *a, amqp_table_t args)
{
	bool		partitioned = ordflow_partitions > 1;

	return declare_queue(a, ordflow_orders_queue, args) &&
		bind(a, ordflow_orders_queue, partitioned ? "order.created" : "order.#", false) &&
		(!partitioned || bind(a, ordflow_orders_queue, "order.#", true)) &&
		declare_queue(a, ordflow_user_events_queue, args) &&
		bind(a, ordflow_user_events_queue, partitioned ? "user.*" : "user.#", false) &&
		(!partitioned || bind(a, ordflow_user_events_queue, "user.#", true));
}

/*
 * Every node declares the queue of every partition, held or not, so that
 * what is published for a partition nobody holds (yet) waits in its queue
 * rather than being dropped by the exchange.
 */
static bool
declare_partition_queues(OfAmqp *a, amqp_table_t args)
{
	if (ordflow_partitions <= 1)
		return true;
	for (int p = 0; p < ordflow_partitions; p++)
	{
		char	   *queue = psprintf("%s.%d", ordflow_orders_queue, p);
		char	   *orders = psprintf("order.created.%d", p);
		char	   *events = psprintf("user.*.%d", p);
		bool		ok;

		ok = declare_queue(a, queue, args) && bind(a, queue, orders, false) &&
			bind(a, queue, events, false);
		pfree(queue);
		pfree(orders);
		pfree(events);
		if (!ok)
			return false;
	}
	return true;
}

/* Declare the contract's topology; idempotent. */
bool
of_amqp_declare_topology(OfAmqp *a)
{
	amqp_connection_state_t c = a->conn;
	char	   *dlx = psprintf("%s.dlx", ordflow_exchange);
	char	   *dead = psprintf("%s.dead", ordflow_exchange);
	amqp_table_entry_t entries[2];
	amqp_table_t args;

	amqp_exchange_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_exchange),
						  amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "declaring the exchange"))
		return false;
	amqp_exchange_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(dlx),
						  amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "declaring the dead-letter exchange"))
		return false;
	if (!declare_dead_queue(a, dead))
		return false;
	amqp_queue_bind(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(dead), amqp_cstring_bytes(dlx),
					amqp_cstring_bytes("#"), amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "binding the dead-letter queue"))
		return false;

	args = queue_arguments(entries, dlx);
	if (!declare_shared_queues(a, args) || !declare_partition_queues(a, args))
		return false;
	pfree(dlx);
	pfree(dead);
	return true;
}
