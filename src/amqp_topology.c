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
	amqp_queue_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(dead), 0, 1, 0, 0,
					   amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "declaring the dead-letter queue"))
		return false;
	amqp_queue_bind(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(dead), amqp_cstring_bytes(dlx),
					amqp_cstring_bytes("#"), amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "binding the dead-letter queue"))
		return false;

	args = queue_arguments(entries, dlx);
	amqp_queue_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_orders_queue),
					   0, 1, 0, 0, args);
	if (!of_amqp_rpc_ok(a, "declaring the orders queue"))
		return false;
	amqp_queue_bind(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_orders_queue),
					amqp_cstring_bytes(ordflow_exchange), amqp_cstring_bytes("order.#"),
					amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "binding the orders queue"))
		return false;
	amqp_queue_declare(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_user_events_queue),
					   0, 1, 0, 0, args);
	if (!of_amqp_rpc_ok(a, "declaring the user events queue"))
		return false;
	amqp_queue_bind(c, OF_AMQP_CHANNEL, amqp_cstring_bytes(ordflow_user_events_queue),
					amqp_cstring_bytes(ordflow_exchange), amqp_cstring_bytes("user.#"),
					amqp_empty_table);
	if (!of_amqp_rpc_ok(a, "binding the user events queue"))
		return false;
	pfree(dlx);
	pfree(dead);
	return true;
}
