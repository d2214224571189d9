/*-------------------------------------------------------------------------
 *
 * message_batch.c
 *	  One consumer batch in one transaction: decode every order message,
 *	  hand the orders to order_processing.c, apply user events each in its
 *	  own subtransaction (ordflow.user_event() validates them), and store whatever could not be
 *	  processed in ordflow.dead_letters, with the raw body and the reason.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"

#include "order_processing.h"
#include "ordflow.h"
#include "spi_util.h"

typedef enum PlanId
{
	PLAN_DEAD_LETTERS,
	PLAN_USER_EVENT,
	NUM_PLANS
} PlanId;

static const char *plan_sql[NUM_PLANS] = {
	/* PLAN_DEAD_LETTERS ($4, body_text, is computed by the 1.1 view) */
	"INSERT INTO ordflow.dead_letters_raw"
	"       (queue, routing_key, body, body_size, error, redelivered, message_id, correlation_id)"
	" SELECT q, rk, b, pg_catalog.length(b), e, r, m, c"
	"   FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.bytea[],"
	"        $5::pg_catalog.text[], $6::pg_catalog.bool[], $7::pg_catalog.text[],"
	"        $8::pg_catalog.text[]) AS u(q, rk, b, e, r, m, c)",

	/*
	 * PLAN_USER_EVENT: NULL when the routing key names another type ($2)
	 * than the event's "type" string (which user_event() reads in any case);
	 * user_event() judges everything else.
	 */
	"SELECT CASE WHEN $2 IS NULL"
	"         OR pg_catalog.jsonb_typeof($1::pg_catalog.jsonb OPERATOR(pg_catalog.->) 'type')"
	"            IS DISTINCT FROM 'string'"
	"         OR pg_catalog.upper($1::pg_catalog.jsonb OPERATOR(pg_catalog.->>) 'type') = $2"
	"       THEN ordflow.user_event($1::pg_catalog.jsonb)::pg_catalog.text END"
};

static const int plan_nargs[NUM_PLANS] = {8, 2};
static const Oid plan_types[NUM_PLANS][8] = {
	{TEXTARRAYOID, TEXTARRAYOID, BYTEAARRAYOID, TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID},
	{TEXTOID, TEXTOID}
};

static SPIPlanPtr plans[NUM_PLANS];

static void
run_plan(PlanId id, Datum *values, const char *nulls, int expected)
{
	of_run_plan(&plans[id], plan_sql[id], plan_nargs[id], plan_types[id],
				values, nulls, expected);
}

/* ---- user events ---- */

static void
apply_user_event(void *arg)
{
	OfMessage  *m = arg;
	Datum		v[2];
	char		type[2] = {0, 0};
	bool		isnull;
	Datum		reply;

	/* user.D carrying a "C" event: trust neither */
	if (strlen(m->routing_key) == 6 && strncmp(m->routing_key, "user.", 5) == 0)
		type[0] = pg_toupper((unsigned char) m->routing_key[5]);
	v[0] = CStringGetTextDatum(m->body);
	v[1] = type[0] ? CStringGetTextDatum(type) : (Datum) 0;
	run_plan(PLAN_USER_EVENT, v, type[0] ? "  " : " n", SPI_OK_SELECT);
	reply = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("routing key %s does not match the event type", m->routing_key)));
	m->reply = TextDatumGetCString(reply);
	m->outcome = OF_OUT_APPLIED;
}

static char *
json_error_reply(const char *message, int sqlerrcode)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": ");
	escape_json(&buf, message);
	appendStringInfo(&buf, ", \"sqlstate\": \"%s\"}", unpack_sql_state(sqlerrcode));
	return buf.data;
}

static void
process_user_event(OfMessage *m, OfBatchStats *stats)
{
	ErrorData  *err;

	/* text would stop at a NUL, and nothing else checks the encoding */
	if (memchr(m->body, '\0', m->body_len) != NULL ||
		!pg_verify_mbstr(PG_UTF8, m->body, (int) m->body_len, true))
	{
		m->outcome = OF_OUT_DEAD;
		m->error = pstrdup("a user event body must be UTF-8 text without NUL bytes");
		m->reply = json_error_reply(m->error, ERRCODE_CHARACTER_NOT_IN_REPERTOIRE);
		return;
	}
	if (GetDatabaseEncoding() != PG_UTF8)
		m->body = pg_any_to_server(m->body, m->body_len, PG_UTF8);
	err = of_run_in_subxact(apply_user_event, m);
	if (err == NULL)
	{
		stats->events++;
		return;
	}
	m->outcome = OF_OUT_DEAD;
	m->error = pstrdup(err->message);
	m->reply = json_error_reply(err->message, err->sqlerrcode);
	FreeErrorData(err);
}

/* ---- dead letters ---- */

static void
store_dead_letters(OfMessage *msgs, int n, OfBatchStats *stats)
{
	ArrBuild	q,
				rk,
				body,
				btext,
				err,
				redel,
				mid,
				cid;
	Datum		values[8];
	int			count = 0;

	for (int i = 0; i < n; i++)
		if (msgs[i].outcome == OF_OUT_DEAD)
			count++;
	if (count == 0)
		return;
	arr_init(&q, count);
	arr_init(&rk, count);
	arr_init(&body, count);
	arr_init(&btext, count);
	arr_init(&err, count);
	arr_init(&redel, count);
	arr_init(&mid, count);
	arr_init(&cid, count);
	for (int i = 0; i < n; i++)
	{
		OfMessage  *m = &msgs[i];
		bytea	   *raw;
		bool		valid_text;

		if (m->outcome != OF_OUT_DEAD)
			continue;
		raw = palloc(VARHDRSZ + m->body_len);
		SET_VARSIZE(raw, VARHDRSZ + m->body_len);
		memcpy(VARDATA(raw), m->body, m->body_len);
		valid_text = GetDatabaseEncoding() == PG_UTF8 &&
			memchr(m->body, '\0', m->body_len) == NULL &&
			pg_verify_mbstr(PG_UTF8, m->body, (int) m->body_len, true);

		arr_add_text(&q, m->queue);
		arr_add_text(&rk, m->routing_key);
		arr_add(&body, PointerGetDatum(raw), false);
		arr_add(&btext, valid_text ? PointerGetDatum(cstring_to_text_with_len(m->body, m->body_len)) : 0,
				!valid_text);
		arr_add(&err, CStringGetTextDatum(m->error ? m->error : "unknown error"), false);
		arr_add(&redel, BoolGetDatum(m->redelivered), false);
		arr_add_text(&mid, m->message_id);
		arr_add_text(&cid, m->correlation_id);
		stats->dead++;
	}
	values[0] = arr_make(&q, TEXTOID);
	values[1] = arr_make(&rk, TEXTOID);
	values[2] = arr_make(&body, BYTEAOID);
	values[3] = arr_make(&btext, TEXTOID);
	values[4] = arr_make(&err, TEXTOID);
	values[5] = arr_make(&redel, BOOLOID);
	values[6] = arr_make(&mid, TEXTOID);
	values[7] = arr_make(&cid, TEXTOID);
	run_plan(PLAN_DEAD_LETTERS, values, NULL, SPI_OK_INSERT);
}

/*
 * Process n messages in the current transaction (SPI connected).  Every
 * message ends with an outcome; the caller commits and then acks them all.
 */
void
of_process_batch(OfMessage *msgs, int n, int worker_no, OfBatchStats *stats)
{
	OfMessage **orders = palloc(sizeof(OfMessage *) * n);
	int			norders = 0;
	char		err[OF_MSG_ERR_LEN];

	for (int i = 0; i < n; i++)
	{
		OfMessage  *m = &msgs[i];

		m->outcome = OF_OUT_PENDING;
		if (m->kind == OF_MSG_ORDER)
		{
			if (of_parse_order(m->body, m->body_len, &m->order, err, sizeof(err)))
				orders[norders++] = m;
			else
			{
				m->outcome = OF_OUT_DEAD;
				m->error = pstrdup(err);
			}
		}
		/* user events are validated by ordflow.user_event() */
	}

	of_process_order_messages(orders, norders, worker_no, stats);

	for (int i = 0; i < n; i++)
		if (msgs[i].kind == OF_MSG_USER_EVENT && msgs[i].outcome == OF_OUT_PENDING)
			process_user_event(&msgs[i], stats);

	store_dead_letters(msgs, n, stats);
}
