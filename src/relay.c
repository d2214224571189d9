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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "ordflow.h"
#include "spi_util.h"
#include "worker_common.h"

/* How long the broker may go without confirming anything we sent. */
#define RELAY_CONFIRM_TIMEOUT_MS	15000
/* Fallback poll of the outbox when no commit woke us. */
#define RELAY_POLL_MS				1000
/* Chunks in flight at once. */
#define RELAY_WINDOW				2
/* Publishes between two looks at the socket (confirms, connection.blocked). */
#define RELAY_BURST					32
/* Dead letters of one chunk logged one by one; the rest are counted. */
#define RELAY_DEAD_LOG				3
/* AMQP short strings (routing keys, property values) are at most this long. */
#define AMQP_SHORTSTR_MAX			255

typedef enum OutboxKind
{
	KIND_ORDER,
	KIND_REPLY,
	KIND_RETRY
} OutboxKind;

/* One outbox row, ready to publish (or to dead-letter). */
typedef struct RelayMsg
{
	int64		id;
	OutboxKind	kind;
	int64		order_id;		/* kind order */
	/* as stored, in the database encoding (for a dead letter); may be NULL */
	char	   *db_routing_key;
	char	   *db_message_id;
	char	   *db_correlation_id;
	char	   *db_reply_to;
	/* as published, UTF-8 */
	const char *exchange;
	char	   *routing_key;
	char	   *message_id;
	char	   *correlation_id;
	char	   *reply_to;
	char	   *body;			/* at most OF_DEAD_LETTER_KEEP bytes if error */
	size_t		len;
	int64		size;			/* the whole body's size */
	char	   *error;			/* why it may not be published, or NULL */
} RelayMsg;

typedef struct RelayChunk
{
	MemoryContext cxt;			/* msgs and everything they point to */
	RelayMsg   *msgs;
	int			n;
	int			published;		/* msgs[0 .. published) were sent */
	uint64		first_tag;		/* delivery tag of msgs[0] */
	int64		lo;				/* id range the read covered */
	int64		hi;
	bool		full;			/* the read may have left rows behind */
} RelayChunk;

typedef struct Relay
{
	OfAmqp		a;
	OfWorkerSlot *slot;
	RelayChunk	window[RELAY_WINDOW];
	int			nchunks;
	uint64		generation;		/* connection the window is published on */
	uint64		acked_seen;		/* a.acked_upto when progress_at was set */
	TimestampTz progress_at;	/* last publish or confirm */
	bool		suspect;		/* one row at a time, up to suspect_hi */
	int64		suspect_hi;
	bool		missing;		/* the extension is gone: exit */
	/* when to look at the outbox again */
	bool		woken;			/* the latch was set (a commit) since the last read */
	bool		more;			/* the last read left rows behind */
	TimestampTz last_read_at;
} Relay;

/* Column numbers of read_sql. */
enum
{
	COL_ID = 1, COL_KIND, COL_ORDER_ID, COL_ROUTING_KEY, COL_MESSAGE_ID,
	COL_CORRELATION_ID, COL_REPLY_TO, COL_SIZE, COL_PAYLOAD, COL_RAW_BODY
};

/*
 * The next rows in id order, outside the range in flight ($1..$2).  An
 * oversized body is read only as far as a dead letter keeps it, and its
 * size comes from the stored header, without detoasting the rest.
 */
static const char *read_sql =
"SELECT id, kind, order_id, routing_key, message_id, correlation_id, reply_to,"
"       coalesce(octet_length(payload), octet_length(raw_body))::int8,"
"       CASE WHEN octet_length(payload) <= $3 THEN payload"
"            ELSE substr(payload, 1, " CppAsString2(OF_DEAD_LETTER_KEEP) ") END,"
"       CASE WHEN octet_length(raw_body) <= $3 THEN raw_body"
"            ELSE substr(raw_body, 1, " CppAsString2(OF_DEAD_LETTER_KEEP) ") END"
"  FROM ordflow.outbox"
" WHERE id < $1 OR id > $2"
" ORDER BY id LIMIT $4";
static const Oid read_types[4] = {INT8OID, INT8OID, INT8OID, INT8OID};
static SPIPlanPtr read_plan = NULL;

static const char *delete_sql =
"DELETE FROM ordflow.outbox WHERE id = ANY ($1)";
static const Oid delete_types[1] = {INT8ARRAYOID};
static SPIPlanPtr delete_plan = NULL;

/* Moves one row; nothing when another relay already took it. */
static const char *dead_sql =
"WITH d AS (DELETE FROM ordflow.outbox WHERE id = $1 RETURNING id)"
" INSERT INTO ordflow.dead_letters_raw (queue, routing_key, body, body_size,"
"     error, redelivered, message_id, correlation_id, reply_to, origin)"
" SELECT NULL, $2, $3, $4, $5, false, $6, $7, $8, 'relay' FROM d";
static const Oid dead_types[8] = {INT8OID, TEXTOID, BYTEAOID, INT8OID, TEXTOID,
TEXTOID, TEXTOID, TEXTOID};
static SPIPlanPtr dead_plan = NULL;

/* ---- rows ---- */

/* A copy of s (len bytes, database encoding) in UTF-8; NULL if it is not valid. */
static char *
to_utf8(const char *s, size_t len, size_t *outlen)
{
	char	   *r;

	if (GetDatabaseEncoding() == PG_SQL_ASCII)
	{
		/* no conversion is defined: publish the bytes only if they are UTF-8 */
		if (!pg_verify_mbstr(PG_UTF8, s, (int) len, true))
			return NULL;
		r = palloc(len + 1);
		memcpy(r, s, len);
		r[len] = '\0';
		*outlen = len;
		return r;
	}
	r = pg_server_to_any(s, len, PG_UTF8);
	if (r == s)
	{
		r = palloc(len + 1);
		memcpy(r, s, len);
		r[len] = '\0';
		*outlen = len;
	}
	else
		*outlen = strlen(r);
	return r;
}

/* A text column as a C string in the database encoding, or NULL. */
static char *
text_col(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * A property or routing key as published: UTF-8, at most 255 bytes.
 * Sets *error when it cannot be sent.
 */
static char *
shortstr(const char *v, const char *what, char **error)
{
	size_t		len;
	char	   *r;

	if (v == NULL)
		return NULL;
	r = to_utf8(v, strlen(v), &len);
	if (r == NULL)
		*error = psprintf("%s is not valid UTF-8", what);
	else if (len > AMQP_SHORTSTR_MAX)
		*error = psprintf("%s is longer than %d bytes", what, AMQP_SHORTSTR_MAX);
	return r;
}

static bool
has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Names of ordflow's own topology, and the broker's: never a reply queue. */
static bool
reserved_queue(const char *q)
{
	const char *own[] = {ordflow_exchange, ordflow_orders_queue, ordflow_user_events_queue};

	if (has_prefix(q, "amq.") || has_prefix(q, "ordflow."))
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

/* order.created or order.created.<partition> */
static bool
order_routing_key(const char *rk)
{
	const char *p;

	if (strcmp(rk, "order.created") == 0)
		return true;
	if (!has_prefix(rk, "order.created."))
		return false;
	p = rk + strlen("order.created.");
	if (*p == '\0')
		return false;
	for (; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

/* Where a row goes; sets m->error if it may not go anywhere. */
static void
route_row(RelayMsg *m, const char *kind)
{
	if (strcmp(kind, "order") == 0)
	{
		m->kind = KIND_ORDER;
		m->exchange = ordflow_exchange;
		if (!order_routing_key(m->routing_key))
			m->error = psprintf("an order's routing key must be order.created or order.created.<partition>, not \"%s\"",
								m->routing_key);
		else
			m->message_id = psprintf(INT64_FORMAT, m->order_id);
	}
	else if (strcmp(kind, "reply") == 0)
	{
		char	   *q = m->reply_to ? m->reply_to : m->routing_key;

		m->kind = KIND_REPLY;
		m->exchange = "";
		if (q[0] == '\0')
			m->error = pstrdup("a reply needs a reply_to queue");
		else if (reserved_queue(q))
			m->error = psprintf("a reply may not go to \"%s\": the name is reserved for the broker or ordflow's own topology",
								q);
		m->routing_key = q;
		/* a reply is not a request: nobody is to answer it */
		m->reply_to = NULL;
	}
	else if (strcmp(kind, "retry") == 0)
	{
		m->kind = KIND_RETRY;
		m->exchange = ordflow_exchange;
	}
	else
		m->error = psprintf("unknown outbox kind \"%s\"", kind);
}

/* The body as published: text converted to UTF-8, bytea as stored. */
static void
row_body(RelayMsg *m, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, COL_RAW_BODY, &isnull);
	bool		whole = m->size <= ordflow_max_message_size;

	if (!isnull)
	{
		bytea	   *b = DatumGetByteaPP(d);

		m->len = VARSIZE_ANY_EXHDR(b);
		m->body = palloc(m->len + 1);
		memcpy(m->body, VARDATA_ANY(b), m->len);
	}
	else
	{
		text	   *t = DatumGetTextPP(SPI_getbinval(tup, desc, COL_PAYLOAD, &isnull));

		m->body = isnull ? NULL : to_utf8(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), &m->len);
		if (m->body == NULL)
		{
			m->error = pstrdup("the payload is not valid UTF-8");
			m->body = pstrdup("");
			m->len = 0;
			return;
		}
		if (whole)
			m->size = m->len;	/* UTF-8 may be longer than the stored text */
	}
	if (!whole || m->size > ordflow_max_message_size)
		m->error = psprintf("message of " INT64_FORMAT " bytes is larger than ordflow.max_message_size (%d bytes)",
							m->size, ordflow_max_message_size);
	if (m->error)
		m->len = Min(m->len, OF_DEAD_LETTER_KEEP);
}

typedef struct DecodeArg
{
	HeapTuple	tup;
	TupleDesc	desc;
	RelayMsg   *m;
} DecodeArg;

/* Fill *m from an outbox row; m->error says why it may not be published. */
static void
decode_row(void *arg)
{
	DecodeArg  *da = arg;
	RelayMsg   *m = da->m;
	HeapTuple	tup = da->tup;
	TupleDesc	desc = da->desc;
	bool		isnull;
	char	   *kind = text_col(tup, desc, COL_KIND);
	Datum		d;

	d = SPI_getbinval(tup, desc, COL_ORDER_ID, &isnull);
	m->order_id = isnull ? 0 : DatumGetInt64(d);
	m->size = DatumGetInt64(SPI_getbinval(tup, desc, COL_SIZE, &isnull));
	m->db_routing_key = text_col(tup, desc, COL_ROUTING_KEY);
	m->db_message_id = text_col(tup, desc, COL_MESSAGE_ID);
	m->db_correlation_id = text_col(tup, desc, COL_CORRELATION_ID);
	m->db_reply_to = text_col(tup, desc, COL_REPLY_TO);

	m->routing_key = shortstr(m->db_routing_key ? m->db_routing_key : "", "the routing key", &m->error);
	m->message_id = shortstr(m->db_message_id, "message_id", &m->error);
	m->correlation_id = shortstr(m->db_correlation_id, "correlation_id", &m->error);
	m->reply_to = shortstr(m->db_reply_to, "reply_to", &m->error);
	row_body(m, tup, desc);
	if (m->error == NULL)
		route_row(m, kind);
}

/*
 * Decode row i of SPI_tuptable into *m.  Conversions from an encoding that
 * can hold characters UTF-8 lacks may fail: those run in a subtransaction,
 * so such a row becomes a dead letter instead of failing the chunk.
 */
static void
read_row(int i, RelayMsg *m)
{
	DecodeArg	da;
	bool		isnull;
	int			enc = GetDatabaseEncoding();

	memset(m, 0, sizeof(*m));
	da.tup = SPI_tuptable->vals[i];
	da.desc = SPI_tuptable->tupdesc;
	da.m = m;
	m->id = DatumGetInt64(SPI_getbinval(da.tup, da.desc, COL_ID, &isnull));
	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		decode_row(&da);
	else
	{
		ErrorData  *e = of_run_in_subxact(decode_row, &da);

		if (e != NULL)
		{
			m->error = pstrdup(e->message);
			if (m->body == NULL)
				m->body = pstrdup("");
			m->len = Min(m->len, OF_DEAD_LETTER_KEEP);
			FreeErrorData(e);
		}
	}
	if (m->db_routing_key == NULL)
		m->db_routing_key = text_col(da.tup, da.desc, COL_ROUTING_KEY);
}

/* ---- transactions ---- */

static Datum
text_or_null(const char *s, char *nulls, int i)
{
	nulls[i] = s ? ' ' : 'n';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/*
 * Move one row to the dead letters (in the caller's transaction), and say
 * so in the log unless quiet.
 */
static void
dead_letter(RelayMsg *m, const char *error, bool quiet)
{
	Datum		v[8];
	char		nulls[9] = "        ";
	bytea	   *body = palloc(VARHDRSZ + m->len);

	SET_VARSIZE(body, VARHDRSZ + m->len);
	if (m->len > 0)
		memcpy(VARDATA(body), m->body, m->len);
	v[0] = Int64GetDatum(m->id);
	v[1] = text_or_null(m->db_routing_key, nulls, 1);
	v[2] = PointerGetDatum(body);
	v[3] = Int64GetDatum(m->size);
	v[4] = CStringGetTextDatum(error);
	v[5] = text_or_null(m->db_message_id, nulls, 5);
	v[6] = text_or_null(m->db_correlation_id, nulls, 6);
	v[7] = text_or_null(m->db_reply_to, nulls, 7);
	of_run_plan(&dead_plan, dead_sql, 8, dead_types, v, nulls, SPI_OK_INSERT);
	if (SPI_processed > 0 && !quiet)
		ereport(LOG,
				(errmsg("ordflow relay: outbox row " INT64_FORMAT " moved to the dead letters: %s",
						m->id, error)));
}

/*
 * Read the next chunk (at most limit rows, at most batch_max_bytes of
 * bodies) into *c, in a transaction of its own.  Rows that may not be
 * published are moved to the dead letters in that transaction.  Returns
 * false when there was nothing to read.
 */
static bool
read_chunk(Relay *r, RelayChunk *c, int limit)
{
	Datum		args[4];
	int64		bytes = 0;
	uint64		n;
	int			taken = 0;
	int			ndead = 0;
	RelayMsg   *dead;
	MemoryContext oldcxt;
	MemoryContext caller = CurrentMemoryContext;

	/* Skip the id range in flight (empty range 1..0 when nothing is). */
	int64		lo = 1;
	int64		hi = 0;

	for (int i = 0; i < r->nchunks; i++)
	{
		lo = i == 0 ? r->window[i].lo : Min(lo, r->window[i].lo);
		hi = Max(hi, r->window[i].hi);
	}
	args[0] = Int64GetDatum(lo);
	args[1] = Int64GetDatum(hi);
	args[2] = Int64GetDatum((int64) ordflow_max_message_size);
	args[3] = Int64GetDatum((int64) limit);

	of_begin_tx("ordflow relay: reading the outbox");
	if (!of_extension_exists())
	{
		r->missing = true;
		of_commit_tx();
		MemoryContextSwitchTo(caller);
		return false;
	}
	of_run_plan(&read_plan, read_sql, 4, read_types, args, NULL, SPI_OK_SELECT);
	n = SPI_processed;
	if (n == 0)
	{
		of_commit_tx();
		MemoryContextSwitchTo(caller);
		return false;
	}

	oldcxt = MemoryContextSwitchTo(c->cxt);
	c->msgs = palloc(sizeof(RelayMsg) * n);
	dead = palloc(sizeof(RelayMsg) * n);
	c->n = 0;
	c->published = 0;
	c->full = n >= (uint64) limit;
	for (uint64 i = 0; i < n; i++)
	{
		RelayMsg	m;

		read_row((int) i, &m);
		/* bound the memory a chunk holds; the rest waits for the next one */
		if (m.error == NULL && taken > 0 && bytes + (int64) m.len > ordflow_batch_max_bytes)
		{
			c->full = true;
			break;
		}
		if (i == 0)
			c->lo = m.id;
		c->hi = m.id;
		if (m.error)
			dead[ndead++] = m;
		else
		{
			c->msgs[c->n++] = m;
			bytes += m.len;
			taken++;
		}
	}
	MemoryContextSwitchTo(oldcxt);

	/* SPI_tuptable is no longer needed: now the dead letters */
	for (int i = 0; i < ndead; i++)
		dead_letter(&dead[i], dead[i].error, i >= RELAY_DEAD_LOG);
	if (ndead > RELAY_DEAD_LOG)
		ereport(LOG,
				(errmsg("ordflow relay: %d more outbox rows moved to the dead letters",
						ndead - RELAY_DEAD_LOG),
				 errhint("See ordflow.dead_letters (origin 'relay') for the reasons.")));
	of_commit_tx();
	/* a commit leaves TopMemoryContext current */
	MemoryContextSwitchTo(caller);
	return true;
}

/* Delete the rows of a confirmed chunk, in a transaction of its own. */
static void
delete_chunk(RelayChunk *c)
{
	Datum	   *ids;
	Datum		arg;
	MemoryContext oldcxt;
	MemoryContext caller = CurrentMemoryContext;

	of_begin_tx("ordflow relay: deleting published rows");
	oldcxt = MemoryContextSwitchTo(c->cxt);
	ids = palloc(sizeof(Datum) * c->n);
	for (int i = 0; i < c->n; i++)
		ids[i] = Int64GetDatum(c->msgs[i].id);
	arg = PointerGetDatum(construct_array(ids, c->n, INT8OID, sizeof(int64),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	MemoryContextSwitchTo(oldcxt);
	of_run_plan(&delete_plan, delete_sql, 1, delete_types, &arg, NULL, SPI_OK_DELETE);
	of_commit_tx();
	MemoryContextSwitchTo(caller);
}

static void
dead_letter_refused(RelayMsg *m, const char *error)
{
	MemoryContext caller = CurrentMemoryContext;

	/* keep what a dead letter keeps of a large message, and its size */
	m->size = m->len;
	m->len = Min(m->len, OF_DEAD_LETTER_KEEP);
	of_begin_tx("ordflow relay: moving a refused message to the dead letters");
	dead_letter(m, error, false);
	of_commit_tx();
	MemoryContextSwitchTo(caller);
}

/* ---- publishing ---- */

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
 * was (one of our own orders is then recognised by its order_id).
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
		amqp_cstring_bytes(m->kind == KIND_RETRY ? "retry" : "outbox");
	p->headers[1].key = amqp_cstring_bytes("x-ordflow-node");
	p->headers[1].value.kind = AMQP_FIELD_KIND_I32;
	p->headers[1].value.value.i32 = ordflow_node_id;
	p->headers[2].key = amqp_cstring_bytes("x-ordflow-origin");
	p->headers[2].value.kind = AMQP_FIELD_KIND_UTF8;
	p->headers[2].value.value.bytes = amqp_cstring_bytes((char *) of_message_origin());
	props->headers.num_entries = m->kind == KIND_RETRY ? 1 : 3;
	props->headers.entries = p->headers;
}

/* The first chunk of the window with messages not yet sent, or NULL. */
static RelayChunk *
unpublished_chunk(Relay *r)
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
static void
publish_some(Relay *r, RelayChunk *c)
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
static void
poll_frames(Relay *r)
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

static void
drop_chunk(Relay *r, int i)
{
	MemoryContextDelete(r->window[i].cxt);
	for (int j = i; j < r->nchunks - 1; j++)
		r->window[j] = r->window[j + 1];
	r->nchunks--;
}

/* Delete the rows of the chunks at the head of the window the broker confirmed. */
static void
complete_chunks(Relay *r)
{
	while (r->nchunks > 0)
	{
		RelayChunk *c = &r->window[0];
		int64		hi = c->hi;

		if (c->published < c->n || r->a.acked_upto < c->first_tag + c->n - 1)
			return;
		delete_chunk(c);
		of_slot_add_processed(r->slot, c->n);
		drop_chunk(r, 0);
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
static void
window_failed(Relay *r)
{
	bool		refused = r->a.nacked || of_amqp_close_is_refusal(r->a.close_code);
	char		reason[OF_AMQP_ERRLEN];

	if (r->a.nacked)
		strlcpy(reason, "the broker refused (nacked) the message", sizeof(reason));
	else
		strlcpy(reason, r->a.error, sizeof(reason));

	/* chunks confirmed before the failure are done: neither resent nor suspect */
	complete_chunks(r);

	if (refused && r->suspect && r->nchunks == 1 &&
		r->window[0].n == 1 && r->window[0].published == 1)
	{
		RelayMsg   *m = &r->window[0].msgs[0];

		dead_letter_refused(m, reason);
		if (m->id >= r->suspect_hi)
			r->suspect = false;
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
		drop_chunk(r, r->nchunks - 1);
	/* a nack leaves the channel open; start over on a new one all the same */
	if (r->a.connected)
		of_amqp_fail(&r->a, "the broker refused (nacked) a published message");
	r->a.nacked = false;
	r->a.close_code = 0;
}

/* ---- the loop ---- */

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
	got = read_chunk(r, &c, r->suspect ? 1 : ordflow_relay_batch_size);
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
		window_failed(r);
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
			drop_chunk(r, r->nchunks - 1);
		of_slot_set_connected(r->slot, true);
		of_slot_set_node(r->slot, r->a.node);
	}

	poll_frames(r);
	if (!r->a.connected || r->a.nacked)
		return 0;
	complete_chunks(r);

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
	if ((c = unpublished_chunk(r)) != NULL)
	{
		of_slot_set_state(r->slot, r->suspect ? "publishing suspect rows one at a time" : "publishing");
		publish_some(r, c);
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
		drop_chunk(r, r->nchunks - 1);
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

		if (r.missing)
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
