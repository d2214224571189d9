/*-------------------------------------------------------------------------
 *
 * message_forward.c
 *	  Forwarding what outside producers publish without a partition.
 *
 * With ordflow.partitions > 1 a node processes only the messages of the
 * partitions it holds, taken from their queues ordflow.orders.<p>.  An
 * order published to order.created (no partition) lands in the shared
 * queue, which every node reads: whichever node takes it writes it to its
 * outbox, as received, with the routing key of its partition, in the
 * batch's transaction (as it does with one sent to the wrong partition).
 * The ack follows the commit, so a crash in between forwards it twice,
 * and the owner's processing by order_id makes the second copy a no-op:
 * processed exactly once.  User events that name a
 * uid go the same way.  So do the others (user.C, a condition without uid)
 * that carry a message_id, to the partition of the message_id's hash: every
 * copy of one meets the same record of applied message ids, which moves with
 * the partition.  Without a message_id they are applied where received.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "message_forward.h"
#include "partitions.h"
#include "spi_util.h"

static SPIPlanPtr forward_plan = NULL;
static const char *forward_sql =
"INSERT INTO ordflow.outbox (kind, routing_key, raw_body, message_id,"
"                            correlation_id, reply_to)"
" SELECT 'forward', * FROM unnest($1::pg_catalog.text[], $2::pg_catalog.bytea[],"
"        $3::pg_catalog.text[], $4::pg_catalog.text[], $5::pg_catalog.text[])";
static const Oid forward_types[5] = {TEXTARRAYOID, BYTEAARRAYOID, TEXTARRAYOID,
TEXTARRAYOID, TEXTARRAYOID};

/*
 * The partition of a user event: of the uid an R, U or D event's condition
 * names, else of the hash of its message_id ($2); NULL: none.
 */
static SPIPlanPtr event_uid_plan = NULL;
static const char *event_uid_sql =
"SELECT CASE WHEN pg_catalog.upper(e OPERATOR(pg_catalog.->>) 'type') OPERATOR(pg_catalog.<>) 'C'"
"             AND pg_catalog.jsonb_typeof(e OPERATOR(pg_catalog.->) 'condition') OPERATOR(pg_catalog.=) 'object'"
"             AND pg_catalog.jsonb_typeof(e OPERATOR(pg_catalog.->) 'condition'"
"                                         OPERATOR(pg_catalog.->) 'uid') OPERATOR(pg_catalog.=) 'number'"
"        THEN ordflow.partition_of((e OPERATOR(pg_catalog.->) 'condition'"
"                                   OPERATOR(pg_catalog.->>) 'uid')::pg_catalog.int8)"
"        ELSE ordflow.partition_of(pg_catalog.hashtext($2)) END"
"  FROM (SELECT $1::pg_catalog.jsonb AS e) AS s"
" WHERE pg_catalog.jsonb_typeof(e) OPERATOR(pg_catalog.=) 'object'";
static const Oid event_uid_types[2] = {TEXTOID, TEXTOID};

/*
 * A decoded order from a shared queue goes to its partition's queue; so
 * does one an outside producer published to the queue of another
 * partition than its uid's (it would be declined as "unknown user" here).
 */
void
of_forward_order(OfMessage *m)
{
	int			p;

	if (ordflow_partitions <= 1)
		return;
	p = of_partition_of(m->order.has_uid ? m->order.uid : m->order.order_id);
	if (p == m->partition)
		return;
	m->forward_key = psprintf("order.created.%d", p);
	m->outcome = OF_OUT_FORWARDED;
}

typedef struct EventPartition
{
	OfMessage  *m;
	int			partition;
} EventPartition;

static void
event_partition(void *arg)
{
	EventPartition *ep = arg;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;
	Datum		p;

	values[0] = CStringGetTextDatum(pg_any_to_server(ep->m->body, (int) ep->m->body_len, PG_UTF8));
	if (ep->m->message_id != NULL)
		values[1] = CStringGetTextDatum(ep->m->message_id);
	else
		nulls[1] = 'n';
	of_run_plan(&event_uid_plan, event_uid_sql, 2, event_uid_types, values, nulls,
				SPI_OK_SELECT);
	if (SPI_processed == 0)
		return;
	p = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		ep->partition = DatumGetInt32(p);
}

/*
 * A user event that names a uid goes to the queue of that uid's partition,
 * one with a message_id to that of its hash, from a shared queue or from
 * another partition's queue.  One that cannot be read (not JSON, a uid
 * that is no integer) is left to be applied here, which dead-letters it
 * with the reason.
 */
void
of_forward_user_event(OfMessage *m)
{
	EventPartition ep = {m, -1};
	ErrorData  *err;
	const char *type_end;

	if (ordflow_partitions <= 1)
		return;
	err = of_run_in_subxact(event_partition, &ep);
	if (err != NULL)
	{
		FreeErrorData(err);
		return;
	}
	if (ep.partition < 0 || ep.partition == m->partition)
		return;
	/* user.<T> of user.<T> or user.<T>.<p> */
	type_end = strchr(m->routing_key + strlen("user."), '.');
	m->forward_key = psprintf("%.*s.%d",
							  type_end ? (int) (type_end - m->routing_key) : (int) strlen(m->routing_key),
							  m->routing_key, ep.partition);
	m->outcome = OF_OUT_FORWARDED;
}

/* Write the forwarded messages to the outbox, in this transaction. */
void
of_store_forwards(OfMessage *msgs, int n, OfBatchStats *stats)
{
	ArrayBuildState *a[5];
	Oid			types[5] = {TEXTOID, BYTEAOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[5];
	int			count = 0;

	for (int k = 0; k < 5; k++)
		a[k] = of_array_new(types[k]);
	for (int i = 0; i < n; i++)
	{
		OfMessage  *m = &msgs[i];

		if (m->outcome != OF_OUT_FORWARDED)
			continue;
		of_array_add_text(a[0], m->forward_key);
		of_array_add(a[1], of_bytea_datum(m->body, m->body_len), false);
		of_array_add_text(a[2], m->message_id);
		of_array_add_text(a[3], m->correlation_id);
		of_array_add_text(a[4], m->reply_to);
		count++;
	}
	if (count == 0)
		return;
	stats->forwarded += count;
	for (int k = 0; k < 5; k++)
		values[k] = of_array_done(a[k]);
	of_run_plan(&forward_plan, forward_sql, 5, forward_types, values, NULL, SPI_OK_INSERT);
}
