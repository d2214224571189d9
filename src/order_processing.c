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
#include "ordflow.h"
#include "spi_util.h"


typedef enum PlanId
{
	PLAN_INSERT_EXTERNAL,
	PLAN_LOCK_ORDERS,
	PLAN_LOCK_USERS,
	PLAN_APPLY,
	PLAN_METRICS,
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
	"  WHERE u.uid = b.uid",

	/* PLAN_METRICS: per-worker rows, so consumers never queue on one row */
	"WITH t AS ("
	"  INSERT INTO ordflow.metrics_totals AS t"
	"         (worker, processed, completed, declined, sum_price, latency_hist, last_processed_at)"
	"  VALUES ($1, $2, $3, $4, $5, $6, $7)"
	"  ON CONFLICT (worker) DO UPDATE SET"
	"    processed = t.processed + excluded.processed,"
	"    completed = t.completed + excluded.completed,"
	"    declined = t.declined + excluded.declined,"
	"    sum_price = t.sum_price + excluded.sum_price,"
	"    latency_hist = ARRAY(SELECT COALESCE(h.a, 0) + COALESCE(h.b, 0)"
	"                           FROM unnest(t.latency_hist, excluded.latency_hist)"
	"                                WITH ORDINALITY AS h(a, b, i) ORDER BY h.i),"
	"    last_processed_at = GREATEST(t.last_processed_at, excluded.last_processed_at))"
	" INSERT INTO ordflow.metrics_minute AS m"
	"        (minute, worker, processed, completed, declined, sum_price, latency_hist)"
	" VALUES (pg_catalog.date_trunc('minute', $7), $1, $2, $3, $4, $5, $6)"
	" ON CONFLICT (minute, worker) DO UPDATE SET"
	"    processed = m.processed + excluded.processed,"
	"    completed = m.completed + excluded.completed,"
	"    declined = m.declined + excluded.declined,"
	"    sum_price = m.sum_price + excluded.sum_price,"
	"    latency_hist = ARRAY(SELECT COALESCE(h.a, 0) + COALESCE(h.b, 0)"
	"                           FROM unnest(m.latency_hist, excluded.latency_hist)"
	"                                WITH ORDINALITY AS h(a, b, i) ORDER BY h.i)"
};

static const int plan_nargs[NUM_PLANS] = {6, 1, 1, 10, 7};
static const Oid plan_types[NUM_PLANS][10] = {
	{INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, NUMERICARRAYOID, TIMESTAMPTZARRAYOID},
	{INT8ARRAYOID},
	{INT8ARRAYOID},
	{INT8ARRAYOID, TEXTARRAYOID, NUMERICARRAYOID, TEXTARRAYOID, INT8ARRAYOID, NUMERICARRAYOID,
	TIMESTAMPTZOID, INT8ARRAYOID, NUMERICARRAYOID, TIDARRAYOID},
	{INT4OID, INT8OID, INT8OID, INT8OID, NUMERICOID, INT8ARRAYOID, TIMESTAMPTZOID}
};

static SPIPlanPtr plans[NUM_PLANS];

static void
run_plan(PlanId id, Datum *values, const char *nulls, int expected)
{
	of_run_plan(&plans[id], plan_sql[id], plan_nargs[id], plan_types[id],
				values, nulls, expected);
}

/* ---- orders ---- */

typedef struct OrderWork
{
	OfMessage **msgs;			/* order messages to process, delivery order */
	int			n;
	int			worker_no;
	OfBatchStats *stats;
	/* metrics of this pass */
	int64		completed;
	int64		declined;
	int64		generated;		/* of those, made by the generator */
	Datum		sum_price;
	int64		hist[OF_HIST_BUCKETS];
	TimestampTz processed_at;
} OrderWork;

typedef struct Slot
{
	OfMessage  *m;
	int			pos;			/* delivery order */
	/* from the locked row */
	bool		found;
	TimestampTz created_at;
	ItemPointerData tid;
	bool		generated;		/* made by the generator */
	Datum		price;
	bool		has_price;
} Slot;

static int
cmp_slot_order_id(const void *a, const void *b)
{
	const Slot *x = a;
	const Slot *y = b;

	if (x->m->order.order_id != y->m->order.order_id)
		return x->m->order.order_id < y->m->order.order_id ? -1 : 1;
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
insert_external(Slot *slots, int n)
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
		OfOrderMsg *o = &slots[i].m->order;

		if (slots[i].m->own)
			continue;
		if (i > 0 && slots[i - 1].m->order.order_id == o->order_id)
			continue;
		of_array_add(ids, Int64GetDatum(o->order_id), false);
		of_array_add(uids, Int64GetDatum(o->uid), !o->has_uid);
		of_array_add(syms, o->has_symbol ?
				CStringGetTextDatum(pg_any_to_server(o->symbol, strlen(o->symbol), PG_UTF8)) : 0,
				!o->has_symbol);
		of_array_add(qtys, Int32GetDatum(o->quantity), !o->has_quantity);
		of_array_add(amts, o->has_amount ? numeric_from_text(o->amount) : 0, !o->has_amount);
		of_array_add(times, TimestampTzGetDatum(o->has_created_at ? slots[i].m->created_at : now),
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

static void
process_orders(void *arg)
{
	OrderWork  *w = arg;
	int			n = w->n;
	Slot	   *slots = palloc0(sizeof(Slot) * n);
	Slot	  **todo = palloc(sizeof(Slot *) * n);
	int			ntodo = 0;
	ArrayBuildState *ids;
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	SPITupleTable *rows;
	uint64		nrows;
	int64		taken_id;
	uint64		r;
	int64	   *uids;
	int			nuids = 0;
	Datum	   *balances = NULL;
	bool	   *balance_found = NULL;
	bool	   *balance_changed = NULL;
	ArrayBuildState *a_id,
			   *a_status,
			   *a_price,
			   *a_notes,
			   *a_uid,
			   *a_evamt,
			   *a_tid,
			   *u_id,
			   *u_bal;

	for (int i = 0; i < n; i++)
	{
		w->msgs[i]->outcome = OF_OUT_PENDING;
		slots[i].m = w->msgs[i];
		slots[i].pos = i;
	}
	qsort(slots, n, sizeof(Slot), cmp_slot_order_id);

	/* 1. Outside producers' orders we have not seen yet. */
	insert_external(slots, n);

	/* 2. Lock every order of the batch, in order_id order. */
	ids = of_array_new(INT8OID);
	for (int i = 0; i < n; i++)
		if (i == 0 || slots[i - 1].m->order.order_id != slots[i].m->order.order_id)
			of_array_add(ids, Int64GetDatum(slots[i].m->order.order_id), false);
	values[0] = of_array_done(ids);
	run_plan(PLAN_LOCK_ORDERS, values, nulls, SPI_OK_SELECT);
	rows = SPI_tuptable;
	nrows = SPI_processed;

	/* 3. Classify, merging the sorted rows with the sorted messages. */
	r = 0;
	taken_id = 0;					/* order ids are >= 1 */
	for (int i = 0; i < n; i++)
	{
		Slot	   *s = &slots[i];
		OfOrderMsg *o = &s->m->order;
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
			s->m->outcome = OF_OUT_STALE;
			w->stats->stale++;
			continue;
		}
		if (!same_content(o, tup, rows->tupdesc))
		{
			s->m->outcome = OF_OUT_DEAD;
			s->m->error = psprintf("order_id " INT64_FORMAT " already exists with different content", o->order_id);
			continue;
		}
		if (o->order_id == taken_id)
		{
			/* a second copy within this batch */
			s->m->outcome = OF_OUT_DUPLICATE;
			continue;
		}
		if (strcmp(TextDatumGetCString(SPI_getbinval(tup, rows->tupdesc, 6, &isnull)), "initialised") != 0)
		{
			s->m->outcome = OF_OUT_DUPLICATE;
			continue;
		}
		s->found = true;
		taken_id = o->order_id;
		s->created_at = DatumGetTimestampTz(SPI_getbinval(tup, rows->tupdesc, 7, &isnull));
		ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(tup, rows->tupdesc, 8, &isnull)), &s->tid);
		s->generated = strcmp(TextDatumGetCString(SPI_getbinval(tup, rows->tupdesc, 9, &isnull)),
							  "generator") == 0;
		todo[ntodo++] = s;
	}
	if (ntodo == 0)
		return;

	/* Credit checks run in delivery order. */
	for (int i = 1; i < ntodo; i++)
	{
		Slot	   *x = todo[i];
		int			j = i - 1;

		while (j >= 0 && todo[j]->pos > x->pos)
		{
			todo[j + 1] = todo[j];
			j--;
		}
		todo[j + 1] = x;
	}

	/* 4. Lock the users concerned, in uid order. */
	uids = palloc(sizeof(int64) * ntodo);
	for (int i = 0; i < ntodo; i++)
		if (todo[i]->m->order.has_uid)
			uids[nuids++] = todo[i]->m->order.uid;
	if (nuids > 0)
	{
		int			k = 0;

		qsort(uids, nuids, sizeof(int64), cmp_int64);
		for (int i = 0; i < nuids; i++)
			if (i == 0 || uids[i] != uids[k - 1])
				uids[k++] = uids[i];
		nuids = k;
		ids = of_array_new(INT8OID);
		for (int i = 0; i < nuids; i++)
			of_array_add(ids, Int64GetDatum(uids[i]), false);
		values[0] = of_array_done(ids);
		run_plan(PLAN_LOCK_USERS, values, nulls, SPI_OK_SELECT);
		balances = palloc0(sizeof(Datum) * nuids);
		balance_found = palloc0(sizeof(bool) * nuids);
		balance_changed = palloc0(sizeof(bool) * nuids);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			int64		uid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
			int64	   *hit = bsearch(&uid, uids, nuids, sizeof(int64), cmp_int64);

			if (hit)
			{
				Datum		bal = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);

				balances[hit - uids] = datumCopy(bal, false, -1);
				balance_found[hit - uids] = true;
			}
		}
	}

	/* 5. Decide. */
	w->processed_at = GetCurrentTimestamp();
	a_id = of_array_new(INT8OID);
	a_status = of_array_new(TEXTOID);
	a_price = of_array_new(NUMERICOID);
	a_notes = of_array_new(TEXTOID);
	a_uid = of_array_new(INT8OID);
	a_evamt = of_array_new(NUMERICOID);
	a_tid = of_array_new(TIDOID);
	for (int i = 0; i < ntodo; i++)
	{
		OfMessage  *m = todo[i]->m;
		OfOrderMsg *o = &m->order;
		Datum		price = price_of(o);
		const char *status = "completed";
		const char *notes = NULL;
		double		ms;

		if (o->has_uid)
		{
			int64	   *hit = bsearch(&o->uid, uids, nuids, sizeof(int64), cmp_int64);
			int			k = hit ? (int) (hit - uids) : -1;

			if (k < 0 || !balance_found[k])
			{
				status = "declined";
				notes = "unknown user";
			}
			else if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, balances[k], price)) >= 0)
			{
				balances[k] = DirectFunctionCall2(numeric_sub, balances[k], price);
				balance_changed[k] = true;
			}
			else
			{
				status = "declined";
				notes = "insufficient balance";
			}
		}

		of_array_add(a_id, Int64GetDatum(o->order_id), false);
		of_array_add(a_tid, PointerGetDatum(&todo[i]->tid), false);
		of_array_add(a_status, CStringGetTextDatum(status), false);
		of_array_add(a_notes, notes ? CStringGetTextDatum(notes) : 0, notes == NULL);
		of_array_add(a_uid, Int64GetDatum(o->uid), !o->has_uid);
		/* an unknown user's order has no price to speak of */
		of_array_add(a_evamt, price, notes != NULL && strcmp(notes, "unknown user") == 0);
		if (notes == NULL)
		{
			of_array_add(a_price, price, false);
			m->outcome = OF_OUT_COMPLETED;
			w->completed++;
			w->sum_price = DirectFunctionCall2(numeric_add, w->sum_price, price);
		}
		else
		{
			of_array_add(a_price, 0, true);
			m->outcome = OF_OUT_DECLINED;
			w->declined++;
		}
		if (todo[i]->generated)
			w->generated++;
		ms = (double) (w->processed_at - todo[i]->created_at) / 1000.0;
		w->hist[of_latency_bucket(ms)]++;
	}

	/* 6. Write back. */
	u_id = of_array_new(INT8OID);
	u_bal = of_array_new(NUMERICOID);
	for (int k = 0; k < nuids; k++)
	{
		if (!balance_changed[k])
			continue;
		of_array_add(u_id, Int64GetDatum(uids[k]), false);
		of_array_add(u_bal, balances[k], false);
	}
	values[0] = of_array_done(a_id);
	values[1] = of_array_done(a_status);
	values[2] = of_array_done(a_price);
	values[3] = of_array_done(a_notes);
	values[4] = of_array_done(a_uid);
	values[5] = of_array_done(a_evamt);
	values[6] = TimestampTzGetDatum(w->processed_at);
	values[7] = of_array_done(u_id);
	values[8] = of_array_done(u_bal);
	values[9] = of_array_done(a_tid);
	run_plan(PLAN_APPLY, values, nulls, SPI_OK_UPDATE);

	/* 7. Metrics, in the same transaction. */
	{
		Datum		hist[OF_HIST_BUCKETS];
		Datum		mv[7];
		char		mn[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

		for (int i = 0; i < OF_HIST_BUCKETS; i++)
			hist[i] = Int64GetDatum(w->hist[i]);
		mv[0] = Int32GetDatum(w->worker_no);
		mv[1] = Int64GetDatum(w->completed + w->declined);
		mv[2] = Int64GetDatum(w->completed);
		mv[3] = Int64GetDatum(w->declined);
		mv[4] = w->sum_price;
		mv[5] = PointerGetDatum(construct_array(hist, OF_HIST_BUCKETS, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		mv[6] = TimestampTzGetDatum(w->processed_at);
		run_plan(PLAN_METRICS, mv, mn, SPI_OK_INSERT);
	}
}

static void
reset_work(OrderWork *w)
{
	w->completed = 0;
	w->declined = 0;
	w->generated = 0;
	w->sum_price = DirectFunctionCall1(int4_numeric, Int32GetDatum(0));
	memset(w->hist, 0, sizeof(w->hist));
}

void
of_process_order_messages(OfMessage **orders, int n, int worker_no, OfBatchStats *stats)
{
	OrderWork	w;
	ErrorData  *err;
	OfBatchStats saved = *stats;

	if (n == 0)
		return;
	w.msgs = orders;
	w.n = n;
	w.worker_no = worker_no;
	w.stats = stats;
	reset_work(&w);
	err = of_run_in_subxact(process_orders, &w);
	if (err == NULL)
	{
		stats->generated += w.generated;
		return;
	}

	/* Something in the batch is bad: redo each order alone. */
	elog(DEBUG1, "ordflow: batch of %d orders failed (%s), retrying one by one", n, err->message);
	FreeErrorData(err);
	*stats = saved;
	for (int i = 0; i < n; i++)
	{
		w.msgs = &orders[i];
		w.n = 1;
		reset_work(&w);
		err = of_run_in_subxact(process_orders, &w);
		if (err == NULL)
		{
			stats->generated += w.generated;
			continue;
		}
		orders[i]->outcome = OF_OUT_DEAD;
		orders[i]->error = psprintf("processing failed: %s", err->message);
		FreeErrorData(err);
	}
}
