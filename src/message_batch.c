/*-------------------------------------------------------------------------
 *
 * message_batch.c
 *	  One consumer batch in one transaction: decode the orders, hand them to
 *	  order_processing.c, apply user events each in its own subtransaction
 *	  with the rights of ordflow.user_events_role, queue their replies in
 *	  the outbox, and store whatever could not be processed in
 *	  ordflow.dead_letters_raw with the raw body and the reason.
 *
 * Everything a message keeps past an SPI call (errors, replies) is
 * allocated in the caller's context, the batch context, which outlives the
 * commit; the SPI helpers put it back after every statement.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "message_batch.h"
#include "message_forward.h"
#include "order_processing.h"
#include "ordflow.h"
#include "spi_util.h"

/* created_at may be ahead of our clock by this much (clock skew). */
#define OF_MAX_FUTURE_USECS		(5 * 60 * USECS_PER_SEC)

typedef enum PlanId
{
	PLAN_DEAD_LETTERS,
	PLAN_USER_EVENT,
	PLAN_REMEMBER_EVENT,
	PLAN_REPLIES,
	PLAN_SUPERUSER_MEMBER,
	NUM_PLANS
} PlanId;

static const char *plan_sql[NUM_PLANS] = {
	/* PLAN_DEAD_LETTERS */
	"INSERT INTO ordflow.dead_letters_raw"
	"       (queue, routing_key, body, body_size, error, redelivered, message_id,"
	"        correlation_id, reply_to, origin)"
	" SELECT * FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.bytea[],"
	"        $4::pg_catalog.int8[], $5::pg_catalog.text[], $6::pg_catalog.bool[],"
	"        $7::pg_catalog.text[], $8::pg_catalog.text[], $9::pg_catalog.text[],"
	"        $10::pg_catalog.text[])",

	/*
	 * PLAN_USER_EVENT: the body is validated once, by the cast and by
	 * user_event() itself.  $2 is the type the routing key names (user.<T>);
	 * an event of another type is not applied.
	 */
	"SELECT CASE WHEN e OPERATOR(pg_catalog.->>) 'type' IS NULL"
	"         OR pg_catalog.upper(e OPERATOR(pg_catalog.->>) 'type') OPERATOR(pg_catalog.=) $2"
	"       THEN ordflow.user_event(e)::pg_catalog.text END"
	"  FROM (SELECT $1::pg_catalog.jsonb AS e) AS s",

	/*
	 * PLAN_REMEMBER_EVENT: nothing returned means applied before.  $2: the
	 * partition whose queue delivered it, with which the record moves.
	 */
	"INSERT INTO ordflow.applied_user_events (message_id, partition) VALUES ($1, $2)"
	" ON CONFLICT (message_id) DO NOTHING RETURNING 1",

	/* PLAN_REPLIES */
	"INSERT INTO ordflow.outbox (kind, routing_key, payload, correlation_id)"
	" SELECT 'reply', * FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[],"
	"        $3::pg_catalog.text[])",

	/* PLAN_SUPERUSER_MEMBER: may the role become a superuser? */
	"SELECT EXISTS (SELECT FROM pg_catalog.pg_authid AS a WHERE a.rolsuper"
	"   AND pg_catalog.pg_has_role($1, a.oid, 'MEMBER'))"
};

static const int plan_nargs[NUM_PLANS] = {10, 2, 2, 3, 1};
static const Oid plan_types[NUM_PLANS][10] = {
	{TEXTARRAYOID, TEXTARRAYOID, BYTEAARRAYOID, INT8ARRAYOID, TEXTARRAYOID, BOOLARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
	{TEXTOID, TEXTOID},
	{TEXTOID, INT4OID},
	{TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
	{OIDOID}
};

static SPIPlanPtr plans[NUM_PLANS];

static void
run_plan(PlanId id, Datum *values, const char *nulls, int expected)
{
	of_run_plan(&plans[id], plan_sql[id], plan_nargs[id], plan_types[id],
				values, nulls, expected);
}

char *
of_json_error(const char *message, int sqlerrcode)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": ");
	escape_json(&buf, message);
	appendStringInfo(&buf, ", \"sqlstate\": \"%s\"}", unpack_sql_state(sqlerrcode));
	return buf.data;
}

static void
dead_letter(OfMessage *m, const char *error, int sqlerrcode)
{
	m->outcome = OF_OUT_DEAD;
	m->error = pstrdup(error);
	if (m->kind == OF_MSG_USER_EVENT)
		m->reply = of_json_error(error, sqlerrcode);
}

/* ---- orders ---- */

/*
 * Decode an order.  PostgreSQL's JSON parser raises an ERROR on input
 * nested beyond the stack limit, the timestamp input on dates out of its
 * range; neither touches shared state, so such an error is caught here
 * and dead-letters the message alone.
 */
static void
decode_order(OfMessage *m)
{
	MemoryContext cxt = CurrentMemoryContext;
	char		err[OF_MSG_ERR_LEN];
	volatile bool ok = false;

	PG_TRY();
	{
		ok = of_parse_order(m->body, m->body_len, &m->order, err, sizeof(err));
		if (ok && m->order.has_created_at)
			m->created_at = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
																	CStringGetDatum(m->order.created_at),
																	ObjectIdGetDatum(InvalidOid),
																	Int32GetDatum(-1)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		strlcpy(err, edata->message, sizeof(err));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	if (!ok)
	{
		dead_letter(m, err, ERRCODE_INVALID_PARAMETER_VALUE);
		return;
	}
	/* A date ahead would pin retention and latency figures for years. */
	if (m->order.has_created_at &&
		m->created_at > GetCurrentTimestamp() + OF_MAX_FUTURE_USECS)
		dead_letter(m, "created_at is more than 5 minutes in the future",
					ERRCODE_INVALID_PARAMETER_VALUE);
}

/* ---- user events ---- */

typedef enum EventRights
{
	EVENTS_DISABLED,			/* ordflow.user_events_role is empty */
	EVENTS_REFUSED,				/* the role is unusable: see refusal */
	EVENTS_ALLOWED
} EventRights;

/*
 * The role user events are applied as, checked on every batch that has
 * events (roles change without a reload).  A refusal is logged when it
 * changes, not for every event.
 */
static EventRights
user_events_rights(Oid *role, char **refusal)
{
	static char *logged = NULL;
	Datum		arg;
	bool		isnull;

	*refusal = NULL;
	if (ordflow_user_events_role[0] == '\0')
		return EVENTS_DISABLED;
	*role = get_role_oid(ordflow_user_events_role, true);
	if (!OidIsValid(*role))
		*refusal = psprintf("ordflow.user_events_role \"%s\" does not exist",
							ordflow_user_events_role);
	else
	{
		arg = ObjectIdGetDatum(*role);
		run_plan(PLAN_SUPERUSER_MEMBER, &arg, NULL, SPI_OK_SELECT);
		if (superuser_arg(*role) ||
			DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									   &isnull)))
			*refusal = psprintf("ordflow.user_events_role \"%s\" must not be a superuser"
								" or able to become one", ordflow_user_events_role);
	}
	if (*refusal == NULL)
		return EVENTS_ALLOWED;
	if (logged == NULL || strcmp(logged, *refusal) != 0)
	{
		ereport(LOG,
				(errmsg("ordflow: user events over the broker refused: %s", *refusal),
				 errhint("Set ordflow.user_events_role to a role with just the privileges on ordflow.users that events may use.")));
		if (logged)
			pfree(logged);
		logged = MemoryContextStrdup(TopMemoryContext, *refusal);
	}
	return EVENTS_REFUSED;
}

typedef struct EventWork
{
	OfMessage  *m;
	Oid			role;
	const char *type;			/* named by the routing key */
} EventWork;

/* Inside the event's subtransaction: an ERROR rolls back all of it. */
static void
apply_user_event(void *arg)
{
	EventWork  *w = arg;
	OfMessage  *m = w->m;
	Datum		values[2];
	Datum		result;
	bool		isnull;
	Oid			save_userid;
	int			save_sec;

	/* UTF-8 on the wire; raises for invalid bytes or unrepresentable characters */
	values[0] = CStringGetTextDatum(pg_any_to_server(m->body, (int) m->body_len, PG_UTF8));
	values[1] = CStringGetTextDatum(w->type);

	if (m->message_id != NULL)
	{
		Datum		remember[2];

		remember[0] = CStringGetTextDatum(m->message_id);
		remember[1] = Int32GetDatum(m->partition);
		run_plan(PLAN_REMEMBER_EVENT, remember, m->partition >= 0 ? NULL : " n",
				 SPI_OK_INSERT_RETURNING);
		if (SPI_processed == 0)
		{
			m->outcome = OF_OUT_DUPLICATE;
			return;
		}
	}

	/* As the role the operator chose; a failed event's abort restores us. */
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(w->role, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	run_plan(PLAN_USER_EVENT, values, NULL, SPI_OK_SELECT);
	SetUserIdAndSecContext(save_userid, save_sec);

	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("routing key %s does not match the event's type", m->routing_key)));
	m->reply = TextDatumGetCString(result);
	m->outcome = OF_OUT_APPLIED;
}

/* "user.<T>" or "user.<T>.<partition>": <T> upper-cased, or NULL. */
static char *
routing_key_type(const char *key)
{
	const char *t;
	size_t		len;

	if (strncmp(key, "user.", 5) != 0)
		return NULL;
	t = key + 5;
	len = strcspn(t, ".");
	if (len == 0 || len > 16)
		return NULL;
	return asc_toupper(t, len);
}

static void
process_user_event(OfMessage *m, Oid role)
{
	EventWork	w;
	ErrorData  *err;

	w.m = m;
	w.role = role;
	w.type = routing_key_type(m->routing_key);
	if (w.type == NULL)
	{
		dead_letter(m, "a user event's routing key must be user.<type>",
					ERRCODE_INVALID_PARAMETER_VALUE);
		return;
	}
	err = of_run_in_subxact(apply_user_event, &w);
	if (err == NULL)
		return;
	dead_letter(m, err->message, err->sqlerrcode);
	FreeErrorData(err);
}

static void
process_user_events(OfMessage **events, int n)
{
	Oid			role = InvalidOid;
	char	   *refusal;
	EventRights rights;

	if (n == 0)
		return;
	rights = user_events_rights(&role, &refusal);
	for (int i = 0; i < n; i++)
	{
		if (rights == EVENTS_DISABLED)
			dead_letter(events[i], "user events over the broker are disabled",
						ERRCODE_INSUFFICIENT_PRIVILEGE);
		else if (rights == EVENTS_REFUSED)
			dead_letter(events[i], refusal, ERRCODE_INSUFFICIENT_PRIVILEGE);
		else
			process_user_event(events[i], role);
	}
}

/*
 * May a reply go to this queue?  Only to a queue named by reply_to, through
 * the default exchange, and never into ordflow's own topology.
 */
static bool
reply_target_allowed(const OfMessage *m)
{
	const char *q = m->reply_to;

	return q != NULL && m->reply_to_exact && q[0] != '\0' && strlen(q) <= 255 &&
		!of_amqp_reserved_queue(q);
}

/* Queue the replies in the outbox, in this transaction. */
static void
store_replies(OfMessage *msgs, int n, OfBatchStats *stats)
{
	ArrayBuildState *keys = of_array_new(TEXTOID);
	ArrayBuildState *bodies = of_array_new(TEXTOID);
	ArrayBuildState *corr = of_array_new(TEXTOID);
	Datum		values[3];

	for (int i = 0; i < n; i++)
	{
		OfMessage  *m = &msgs[i];

		if (m->reply == NULL || m->reply_to == NULL)
			continue;
		if (!reply_target_allowed(m))
		{
			ereport(LOG,
					(errmsg("ordflow: reply to queue \"%s\" refused", m->reply_to),
					 errdetail("Replies go only to a queue named by reply_to that is not one of ordflow's own.")));
			continue;
		}
		if (strlen(m->reply) > (size_t) ordflow_max_message_size)
			m->reply = of_json_error(psprintf("reply of %zu bytes exceeds ordflow.max_message_size (%d bytes)",
											  strlen(m->reply), ordflow_max_message_size),
									 ERRCODE_PROGRAM_LIMIT_EXCEEDED);
		of_array_add_text(keys, m->reply_to);
		of_array_add_text(bodies, m->reply);
		of_array_add_text(corr, m->correlation_id);
		stats->replies++;
	}
	if (stats->replies == 0)
		return;
	values[0] = of_array_done(keys);
	values[1] = of_array_done(bodies);
	values[2] = of_array_done(corr);
	run_plan(PLAN_REPLIES, values, NULL, SPI_OK_INSERT);
}

/* ---- dead letters ---- */

void
of_store_dead_letters(OfMessage *msgs, int n, OfBatchStats *stats)
{
	ArrayBuildState *a[10];
	Oid			types[10] = {TEXTOID, TEXTOID, BYTEAOID, INT8OID, TEXTOID, BOOLOID,
	TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[10];
	int			count = 0;

	for (int k = 0; k < 10; k++)
		a[k] = of_array_new(types[k]);
	for (int i = 0; i < n; i++)
	{
		OfMessage  *m = &msgs[i];

		if (m->outcome != OF_OUT_DEAD)
			continue;
		of_array_add_text(a[0], m->kind == OF_MSG_BROKER_DEAD && m->death_queue ?
						  m->death_queue : m->queue);
		of_array_add_text(a[1], m->routing_key);
		of_array_add(a[2], of_bytea_datum(m->body, m->body_len), false);
		of_array_add(a[3], Int64GetDatum((int64) m->body_size), false);
		of_array_add_text(a[4], m->error ? m->error : "unknown error");
		of_array_add(a[5], BoolGetDatum(m->redelivered), false);
		of_array_add_text(a[6], m->message_id);
		of_array_add_text(a[7], m->correlation_id);
		of_array_add_text(a[8], m->reply_to);
		of_array_add_text(a[9], m->kind == OF_MSG_BROKER_DEAD ? "broker" : "consumer");
		count++;
	}
	if (count == 0)
		return;
	for (int k = 0; k < 10; k++)
		values[k] = of_array_done(a[k]);
	run_plan(PLAN_DEAD_LETTERS, values, NULL, SPI_OK_INSERT);
	stats->dead += count;
}

/*
 * Process n messages in the current transaction (SPI connected).  Every
 * message ends with an outcome; the caller commits and then acks them all.
 */
void
of_process_batch(OfMessage *msgs, int n, int worker_no, OfBatchStats *stats)
{
	OfMessage **orders = palloc(sizeof(OfMessage *) * n);
	OfMessage **events = palloc(sizeof(OfMessage *) * n);
	int			norders = 0;
	int			nevents = 0;

	for (int i = 0; i < n; i++)
	{
		OfMessage  *m = &msgs[i];

		m->outcome = OF_OUT_PENDING;
		if (m->body_size > m->body_len)
			dead_letter(m, psprintf("message of " UINT64_FORMAT " bytes exceeds ordflow.max_message_size (%d bytes)",
									m->body_size, ordflow_max_message_size),
						ERRCODE_PROGRAM_LIMIT_EXCEEDED);
		else if (m->kind == OF_MSG_BROKER_DEAD && m->death_reason != NULL)
			dead_letter(m, psprintf("dead-lettered by the broker: %s", m->death_reason), 0);
		else if (m->kind == OF_MSG_BROKER_DEAD)
			/* no x-death: not dead-lettered by a queue (README) */
			dead_letter(m, psprintf("no queue is bound to routing key \"%s\": it came through the alternate exchange (or was published to %s.dlx directly)",
									m->routing_key, ordflow_exchange), 0);
		else if (m->kind == OF_MSG_USER_EVENT)
		{
			of_forward_user_event(m);
			if (m->outcome == OF_OUT_PENDING)
				events[nevents++] = m;
		}
		else
		{
			decode_order(m);
			if (m->outcome == OF_OUT_PENDING)
				of_forward_order(m);
			if (m->outcome == OF_OUT_PENDING)
				orders[norders++] = m;
		}
	}

	of_settle_orders(orders, norders, worker_no, stats);
	process_user_events(events, nevents);
	store_replies(msgs, n, stats);
	of_store_forwards(msgs, n, stats);
	of_store_dead_letters(msgs, n, stats);
}
