/*-------------------------------------------------------------------------
 *
 * relay_outbox.c
 *	  The relay's side of the outbox: reading a chunk of rows in a short
 *	  transaction, checking each row against the publishing rules (kind,
 *	  routing key, reply queue, AMQP short strings, size), converting its
 *	  properties and body to UTF-8, moving the rows that break a rule or
 *	  that the broker refused to the dead letters, and deleting the rows of
 *	  a confirmed chunk.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "ordflow.h"
#include "relay.h"
#include "spi_util.h"
#include "worker_common.h"

/* Dead letters of one chunk logged one by one; the rest are counted. */
#define RELAY_DEAD_LOG				3
/* AMQP short strings (routing keys, property values) are at most this long. */
#define AMQP_SHORTSTR_MAX			255

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

/* A partition number: one or more digits and nothing else. */
static bool
all_digits(const char *p)
{
	if (*p == '\0')
		return false;
	for (; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

/* order.created or order.created.<partition> */
static bool
order_routing_key(const char *rk)
{
	if (strcmp(rk, "order.created") == 0)
		return true;
	return has_prefix(rk, "order.created.") &&
		all_digits(rk + strlen("order.created."));
}

/*
 * What a consumer may forward: order.created.<partition> or
 * user.<T>.<partition> (<T> as the consumer reads it: 1 to 16 characters
 * without a dot).  Never order.created or user.<T>: those lead back to the
 * shared queues, and the message would go round for ever.
 */
static bool
forward_routing_key(const char *rk)
{
	size_t		len;

	if (has_prefix(rk, "order.created."))
		return all_digits(rk + strlen("order.created."));
	if (!has_prefix(rk, "user."))
		return false;
	rk += strlen("user.");
	len = strcspn(rk, ".");
	return len >= 1 && len <= 16 && rk[len] == '.' && all_digits(rk + len + 1);
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
		else if (of_amqp_reserved_queue(q))
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
	else if (strcmp(kind, "forward") == 0)
	{
		m->kind = KIND_FORWARD;
		m->exchange = ordflow_exchange;
		if (!forward_routing_key(m->routing_key))
			m->error = psprintf("a forwarded message's routing key must be order.created.<partition> or user.<type>.<partition>, not \"%s\"",
								m->routing_key);
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

	v[0] = Int64GetDatum(m->id);
	v[1] = text_or_null(m->db_routing_key, nulls, 1);
	v[2] = of_bytea_datum(m->body, m->len);
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
bool
of_relay_read_chunk(Relay *r, RelayChunk *c, int limit)
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
		r->extension_gone = true;
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
void
of_relay_delete_chunk(RelayChunk *c)
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

/*
 * Move a message the broker refused (it was sent whole) to the dead
 * letters, in a transaction of its own.
 */
void
of_relay_dead_letter_refused(RelayMsg *m, const char *error)
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
