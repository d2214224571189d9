/*-------------------------------------------------------------------------
 *
 * order_processing.c
 *	  Turning a batch of consumed messages into processed orders, events,
 *	  debits, metrics and dead letters, inside the caller's transaction.
 *
 * Orders are processed set-wise: a handful of statements per batch however
 * large it is.  Steps: insert outside producers' orders that we have never
 * seen; lock every order row of the batch (in order_id order); decide per
 * message whether it is new, a duplicate, a conflict or stale; lock the
 * users concerned (in uid order, so concurrent consumers never deadlock);
 * run the credit checks in C in delivery order; write everything back.
 *
 * The set-wise pass runs in a subtransaction.  If it fails for a reason
 * tied to the data, each order is redone alone in its own subtransaction,
 * so one bad message is dead-lettered without poisoning the batch.  Errors
 * that are nobody's fault (deadlock, serialization, shutdown) are rethrown:
 * the caller rolls back and requeues everything.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "order_processing.h"
#include "metrics.h"
#include "ordflow.h"
#include "spi_util.h"


typedef enum PlanId
{
	PLAN_INSERT_EXTERNAL,
	PLAN_LOCK_ORDERS,
	PLAN_LOCK_USERS,
	PLAN_APPLY,
	NUM_PLANS
} PlanId;

static const char *plan_sql[NUM_PLANS] = {
	/* PLAN_INSERT_EXTERNAL: an outside producer's orders, first sighting */
	"WITH ins AS ("
	"  INSERT INTO ordflow.orders (order_id, uid, symbol, quantity, amount, created_at, status, source)"
	"  SELECT v.order_id, v.uid, v.symbol, v.quantity, v.amount, v.created_at, 'initialised', 'broker'"
	"    FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.int8[], $3::pg_catalog.text[],"
	"                           $4::pg_catalog.int4[], $5::pg_catalog.numeric[], $6::pg_catalog.timestamptz[])"
	"         AS v(order_id, uid, symbol, quantity, amount, created_at)"
	"  ON CONFLICT (order_id) DO NOTHING"
	"  RETURNING order_id, uid, amount, created_at)"
	" INSERT INTO ordflow.order_events (order_id, uid, status, event_time, amount)"
	" SELECT order_id, uid, 'initialised', created_at, amount FROM ins",

	/* PLAN_LOCK_ORDERS */
	"SELECT order_id, uid, symbol, quantity, amount, status::pg_catalog.text, created_at, ctid, source"
	"  FROM ordflow.orders WHERE order_id = ANY ($1::pg_catalog.int8[])"
	" ORDER BY order_id FOR UPDATE",

	/* PLAN_LOCK_USERS */
	"SELECT uid, credit_balance FROM ordflow.users WHERE uid = ANY ($1::pg_catalog.int8[])"
	" ORDER BY uid FOR UPDATE",

	/* PLAN_APPLY */
	"WITH v AS ("
	"  SELECT * FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[],"
	"         $3::pg_catalog.numeric[], $4::pg_catalog.text[], $5::pg_catalog.int8[], $6::pg_catalog.numeric[],"
	"         $10::pg_catalog.tid[])"
	"         AS v(order_id, status, price, notes, uid, event_amount, tid)),"
	" upd AS ("
	"  UPDATE ordflow.orders o SET status = v.status::ordflow.order_status, execution_price = v.price,"
	"         notes = v.notes, processed_at = $7"
	"    FROM v WHERE o.ctid = ANY ($10::pg_catalog.tid[]) AND o.ctid = v.tid),"
	" ev AS ("
	"  INSERT INTO ordflow.order_events (order_id, uid, status, event_time, amount, notes)"
	"  SELECT v.order_id, v.uid, v.status::ordflow.order_status, $7, v.event_amount, v.notes FROM v)"
	" UPDATE ordflow.users u SET credit_balance = b.balance, updated_at = $7"
	"   FROM unnest($8::pg_catalog.int8[], $9::pg_catalog.numeric[]) AS b(uid, balance)"
	"  WHERE u.uid = b.uid"
};

static const int plan_nargs[NUM_PLANS] = {6, 1, 1, 10};
static const Oid plan_types[NUM_PLANS][10] = {
	{INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, NUMERICARRAYOID, TIMESTAMPTZARRAYOID},
	{INT8ARRAYOID},
	{INT8ARRAYOID},
	{INT8ARRAYOID, TEXTARRAYOID, NUMERICARRAYOID, TEXTARRAYOID, INT8ARRAYOID, NUMERICARRAYOID,
	TIMESTAMPTZOID, INT8ARRAYOID, NUMERICARRAYOID, TIDARRAYOID}
};

static SPIPlanPtr plans[NUM_PLANS];

static void
run_plan(PlanId id, Datum *values, const char *nulls, int expected)
{
	of_run_plan(&plans[id], plan_sql[id], plan_nargs[id], plan_types[id],
				values, nulls, expected);
}

/* ---- orders ---- */

/* One pass over the order messages of a batch (or over one of them). */
typedef struct OrderPass
{
	OfMessage **msgs;			/* order messages, delivery order */
	int			n;
	int			worker_no;
	OfBatchStats *stats;
	struct OrderItem *items;	/* by order_id, then delivery order */
	struct OrderItem **todo;	/* to settle, delivery order */
	int			ntodo;
	/* the users concerned, locked, sorted by uid */
	int64	   *uids;
	int			nuids;
	Datum	   *balances;
	bool	   *balance_found;
	bool	   *balance_changed;
	/* what this pass settled */
	OfPassMetrics metrics;
	int64		generated;		/* of those, made by the generator */
	TimestampTz processed_at;
} OrderPass;

/* An order message and what its locked row says. */
typedef struct OrderItem
{
	OfMessage  *m;
	int			pos;			/* delivery order */
	TimestampTz created_at;
	ItemPointerData tid;
	bool		generated;		/* made by the generator */
} OrderItem;

static int
cmp_item_order_id(const void *a, const void *b)
{
	const OrderItem *x = a;
	const OrderItem *y = b;

	if (x->m->order.order_id != y->m->order.order_id)
		return x->m->order.order_id < y->m->order.order_id ? -1 : 1;
	return x->pos - y->pos;
}

static int
cmp_item_pos(const void *a, const void *b)
{
	const OrderItem *x = *(OrderItem *const *) a;
	const OrderItem *y = *(OrderItem *const *) b;

	return x->pos - y->pos;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

static Datum
numeric_from_text(const char *s)
{
	return DirectFunctionCall3(numeric_in, CStringGetDatum(s),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

static bool
numeric_same(Datum a, Datum b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, a, b)) == 0;
}

/* Does the message say the same as the stored row? */
static bool
same_content(OfOrderMsg *o, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	Datum		d;

	d = SPI_getbinval(tup, desc, 2, &isnull);
	if (isnull != !o->has_uid || (!isnull && DatumGetInt64(d) != o->uid))
		return false;
	d = SPI_getbinval(tup, desc, 3, &isnull);
	if (isnull != !o->has_symbol)
		return false;
	if (!isnull)
	{
		char	   *sym = TextDatumGetCString(d);
		char	   *msym = pg_any_to_server(o->symbol, strlen(o->symbol), PG_UTF8);

		if (strcmp(sym, msym) != 0)
			return false;
	}
	d = SPI_getbinval(tup, desc, 4, &isnull);
	if (isnull != !o->has_quantity || (!isnull && DatumGetInt32(d) != o->quantity))
		return false;
	d = SPI_getbinval(tup, desc, 5, &isnull);
	if (isnull != !o->has_amount)
		return false;
	if (!isnull && !numeric_same(d, numeric_from_text(o->amount)))
		return false;
	return true;
}

static Datum
price_of(OfOrderMsg *o)
{
	double		lo = Min(ordflow_price_factor_min, ordflow_price_factor_max);
	double		hi = Max(ordflow_price_factor_min, ordflow_price_factor_max);
	double		factor;
	Datum		price;

	if (o->has_amount)
		return numeric_from_text(o->amount);
	factor = lo + (hi - lo) * pg_prng_double(&pg_global_prng_state);
	price = DirectFunctionCall2(numeric_mul,
								DirectFunctionCall1(int4_numeric, Int32GetDatum(o->quantity)),
								DirectFunctionCall1(float8_numeric, Float8GetDatum(factor)));
	return DirectFunctionCall2(numeric_round, price, Int32GetDatum(4));
}

static void
insert_external(OrderItem *items, int n)
{
	ArrayBuildState *ids,
			   *uids,
			   *syms,
			   *qtys,
			   *amts,
			   *times;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	TimestampTz now = GetCurrentTimestamp();
	int			count = 0;

	ids = of_array_new(INT8OID);
	uids = of_array_new(INT8OID);
	syms = of_array_new(TEXTOID);
	qtys = of_array_new(INT4OID);
	amts = of_array_new(NUMERICOID);
	times = of_array_new(TIMESTAMPTZOID);
	for (int i = 0; i < n; i++)
	{
		OfOrderMsg *o = &items[i].m->order;

		if (items[i].m->own)
			continue;
		if (i > 0 && items[i - 1].m->order.order_id == o->order_id)
			continue;
		of_array_add(ids, Int64GetDatum(o->order_id), false);
		of_array_add(uids, Int64GetDatum(o->uid), !o->has_uid);
		of_array_add(syms, o->has_symbol ?
				CStringGetTextDatum(pg_any_to_server(o->symbol, strlen(o->symbol), PG_UTF8)) : 0,
				!o->has_symbol);
		of_array_add(qtys, Int32GetDatum(o->quantity), !o->has_quantity);
		of_array_add(amts, o->has_amount ? numeric_from_text(o->amount) : 0, !o->has_amount);
		of_array_add(times, TimestampTzGetDatum(o->has_created_at ? items[i].m->created_at : now),
					 false);
		count++;
	}
	if (count == 0)
		return;
	values[0] = of_array_done(ids);
	values[1] = of_array_done(uids);
	values[2] = of_array_done(syms);
	values[3] = of_array_done(qtys);
	values[4] = of_array_done(amts);
	values[5] = of_array_done(times);
	run_plan(PLAN_INSERT_EXTERNAL, values, nulls, SPI_OK_INSERT);
}

/*
 * Lock every order row of the pass, in order_id order, and sort the
 * messages out: new (to settle), duplicate, conflicting or stale.
 */
static void
lock_orders(OrderPass *p)
{
	ArrayBuildState *ids = of_array_new(INT8OID);
	Datum		value;
	SPITupleTable *rows;
	uint64		nrows;
	uint64		r = 0;
	int64		taken_id = 0;	/* order ids are >= 1 */

	for (int i = 0; i < p->n; i++)
		if (i == 0 || p->items[i - 1].m->order.order_id != p->items[i].m->order.order_id)
			of_array_add(ids, Int64GetDatum(p->items[i].m->order.order_id), false);
	value = of_array_done(ids);
	run_plan(PLAN_LOCK_ORDERS, &value, NULL, SPI_OK_SELECT);
	rows = SPI_tuptable;
	nrows = SPI_processed;

	/* merge the sorted rows with the sorted messages */
	for (int i = 0; i < p->n; i++)
	{
		OrderItem  *it = &p->items[i];
		OfOrderMsg *o = &it->m->order;
		HeapTuple	tup = NULL;
		bool		isnull;

		while (r < nrows &&
			   DatumGetInt64(SPI_getbinval(rows->vals[r], rows->tupdesc, 1, &isnull)) < o->order_id)
			r++;
		if (r < nrows &&
			DatumGetInt64(SPI_getbinval(rows->vals[r], rows->tupdesc, 1, &isnull)) == o->order_id)
			tup = rows->vals[r];

		if (tup == NULL)
		{
			/* Ours, but the row is gone: truncate() emptied the tables. */
			it->m->outcome = OF_OUT_STALE;
			p->stats->stale++;
		}
		else if (!same_content(o, tup, rows->tupdesc))
		{
			it->m->outcome = OF_OUT_DEAD;
			it->m->error = psprintf("order_id " INT64_FORMAT " already exists with different content",
									o->order_id);
		}
		else if (o->order_id == taken_id ||
				 strcmp(TextDatumGetCString(SPI_getbinval(tup, rows->tupdesc, 6, &isnull)),
						"initialised") != 0)
			it->m->outcome = OF_OUT_DUPLICATE;	/* a second copy, or done before */
		else
		{
			taken_id = o->order_id;
			it->created_at = DatumGetTimestampTz(SPI_getbinval(tup, rows->tupdesc, 7, &isnull));
			ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(tup, rows->tupdesc, 8, &isnull)),
							&it->tid);
			it->generated = strcmp(TextDatumGetCString(SPI_getbinval(tup, rows->tupdesc, 9, &isnull)),
								   "generator") == 0;
			p->todo[p->ntodo++] = it;
		}
	}
}

/* Lock the users the orders to settle name, in uid order; read balances. */
static void
lock_users(OrderPass *p)
{
	ArrayBuildState *ids;
	Datum		value;
	int			k = 0;

	p->uids = palloc(sizeof(int64) * p->ntodo);
	for (int i = 0; i < p->ntodo; i++)
		if (p->todo[i]->m->order.has_uid)
			p->uids[p->nuids++] = p->todo[i]->m->order.uid;
	if (p->nuids == 0)
		return;
	qsort(p->uids, p->nuids, sizeof(int64), cmp_int64);
	for (int i = 0; i < p->nuids; i++)
		if (i == 0 || p->uids[i] != p->uids[k - 1])
			p->uids[k++] = p->uids[i];
	p->nuids = k;

	ids = of_array_new(INT8OID);
	for (int i = 0; i < p->nuids; i++)
		of_array_add(ids, Int64GetDatum(p->uids[i]), false);
	value = of_array_done(ids);
	run_plan(PLAN_LOCK_USERS, &value, NULL, SPI_OK_SELECT);
	p->balances = palloc0(sizeof(Datum) * p->nuids);
	p->balance_found = palloc0(sizeof(bool) * p->nuids);
	p->balance_changed = palloc0(sizeof(bool) * p->nuids);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		uid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64	   *hit = bsearch(&uid, p->uids, p->nuids, sizeof(int64), cmp_int64);

		if (hit)
		{
			Datum		bal = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);

			p->balances[hit - p->uids] = datumCopy(bal, false, -1);
			p->balance_found[hit - p->uids] = true;
		}
	}
}

/*
 * The credit check of one order against the locked balances: NULL when it
 * completes (and the balance is debited), else the reason it is declined.
 */
static const char *
check_credit(OrderPass *p, OfOrderMsg *o, Datum price)
{
	int64	   *hit;
	int			k;

	if (!o->has_uid)
		return NULL;
	hit = bsearch(&o->uid, p->uids, p->nuids, sizeof(int64), cmp_int64);
	k = hit ? (int) (hit - p->uids) : -1;
	if (k < 0 || !p->balance_found[k])
		return "unknown user";
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, p->balances[k], price)) < 0)
		return "insufficient balance";
	p->balances[k] = DirectFunctionCall2(numeric_sub, p->balances[k], price);
	p->balance_changed[k] = true;
	return NULL;
}

/* Settle the orders in delivery order and write it all back at once. */
static void
settle_and_write(OrderPass *p)
{
	ArrayBuildState *a_id = of_array_new(INT8OID),
			   *a_status = of_array_new(TEXTOID),
			   *a_price = of_array_new(NUMERICOID),
			   *a_notes = of_array_new(TEXTOID),
			   *a_uid = of_array_new(INT8OID),
			   *a_evamt = of_array_new(NUMERICOID),
			   *a_tid = of_array_new(TIDOID),
			   *u_id = of_array_new(INT8OID),
			   *u_bal = of_array_new(NUMERICOID);
	Datum		values[10];

	p->processed_at = GetCurrentTimestamp();
	for (int i = 0; i < p->ntodo; i++)
	{
		OfMessage  *m = p->todo[i]->m;
		OfOrderMsg *o = &m->order;
		Datum		price = price_of(o);
		const char *notes = check_credit(p, o, price);

		of_array_add(a_id, Int64GetDatum(o->order_id), false);
		of_array_add(a_tid, PointerGetDatum(&p->todo[i]->tid), false);
		of_array_add_text(a_status, notes == NULL ? "completed" : "declined");
		of_array_add_text(a_notes, notes);
		of_array_add(a_uid, Int64GetDatum(o->uid), !o->has_uid);
		/* an unknown user's order has no price to speak of */
		of_array_add(a_evamt, price, notes != NULL && strcmp(notes, "unknown user") == 0);
		/* a declined order has no execution price */
		of_array_add(a_price, price, notes != NULL);
		m->outcome = notes == NULL ? OF_OUT_COMPLETED : OF_OUT_DECLINED;
		of_metrics_count(&p->metrics, notes == NULL, price,
						 (double) (p->processed_at - p->todo[i]->created_at) / 1000.0);
		if (p->todo[i]->generated)
			p->generated++;
	}
	for (int k = 0; k < p->nuids; k++)
	{
		if (!p->balance_changed[k])
			continue;
		of_array_add(u_id, Int64GetDatum(p->uids[k]), false);
		of_array_add(u_bal, p->balances[k], false);
	}
	values[0] = of_array_done(a_id);
	values[1] = of_array_done(a_status);
	values[2] = of_array_done(a_price);
	values[3] = of_array_done(a_notes);
	values[4] = of_array_done(a_uid);
	values[5] = of_array_done(a_evamt);
	values[6] = TimestampTzGetDatum(p->processed_at);
	values[7] = of_array_done(u_id);
	values[8] = of_array_done(u_bal);
	values[9] = of_array_done(a_tid);
	run_plan(PLAN_APPLY, values, NULL, SPI_OK_UPDATE);
}

/* One set-wise pass; run in a subtransaction. */
static void
settle_orders(void *arg)
{
	OrderPass  *p = arg;

	p->items = palloc0(sizeof(OrderItem) * p->n);
	p->todo = palloc(sizeof(OrderItem *) * p->n);
	p->ntodo = 0;
	p->nuids = 0;
	for (int i = 0; i < p->n; i++)
	{
		p->msgs[i]->outcome = OF_OUT_PENDING;
		p->items[i].m = p->msgs[i];
		p->items[i].pos = i;
	}
	qsort(p->items, p->n, sizeof(OrderItem), cmp_item_order_id);

	insert_external(p->items, p->n);
	lock_orders(p);
	if (p->ntodo == 0)
		return;
	/* credit checks run in delivery order */
	qsort(p->todo, p->ntodo, sizeof(OrderItem *), cmp_item_pos);
	lock_users(p);
	settle_and_write(p);
	of_metrics_record(&p->metrics, p->worker_no, p->processed_at);
}

static void
reset_pass(OrderPass *p)
{
	of_metrics_reset(&p->metrics);
	p->generated = 0;
}

/*
 * Settle the batch's orders set-wise in a subtransaction.  If that fails
 * for a reason tied to the data, redo each order alone in its own, so one
 * bad message is dead-lettered without poisoning the batch.
 */
void
of_settle_orders(OfMessage **orders, int n, int worker_no, OfBatchStats *stats)
{
	OrderPass	p;
	ErrorData  *err;
	OfBatchStats saved = *stats;

	if (n == 0)
		return;
	p.msgs = orders;
	p.n = n;
	p.worker_no = worker_no;
	p.stats = stats;
	reset_pass(&p);
	err = of_run_in_subxact(settle_orders, &p);
	if (err == NULL)
	{
		stats->generated += p.generated;
		return;
	}

	elog(DEBUG1, "ordflow: batch of %d orders failed (%s), retrying one by one", n, err->message);
	FreeErrorData(err);
	*stats = saved;
	for (int i = 0; i < n; i++)
	{
		p.msgs = &orders[i];
		p.n = 1;
		reset_pass(&p);
		err = of_run_in_subxact(settle_orders, &p);
		if (err == NULL)
		{
			stats->generated += p.generated;
			continue;
		}
		orders[i]->outcome = OF_OUT_DEAD;
		orders[i]->error = psprintf("processing failed: %s", err->message);
		FreeErrorData(err);
	}
}
