/*-------------------------------------------------------------------------
 *
 * generator.c
 *	  The generator worker: while started, makes orders at the current rate
 *	  with a token bucket, several per transaction when the rate is high.
 *	  Each transaction inserts the orders, their 'initialised' events and
 *	  their outbox rows set-wise, then wakes the relay.  It never talks to
 *	  the broker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "storage/ipc.h"

#include "ordflow.h"
#include "partitions.h"
#include "spi_util.h"
#include "worker_common.h"

/* Most orders made in one transaction, whatever the backlog of tokens. */
#define GEN_MAX_BATCH		5000
/* Shortest pause between two transactions at high rates. */
#define GEN_MIN_TICK_MS		10
/* How often the list of users to pick from is refreshed. */
#define GEN_USERS_REFRESH_MS 1000
#define GEN_USERS_SAMPLE	100000

/*
 * The orders are made only if generator_state still says running, read
 * FOR SHARE: stop() locks that row FOR UPDATE, so it waits for a batch in
 * flight to commit, and a batch that reaches the row while stop() is
 * uncommitted waits and then (READ COMMITTED rechecks the newest version)
 * makes nothing.  Once stop() returns, no generated order commits until
 * the next start().  In the same statement as the inserts, so the batch
 * takes the row lock only after its table locks: a transaction that runs
 * truncate() and then stop() cannot deadlock with it.
 *
 * The ids are drawn as the order_id default draws them, with the node id,
 * ordflow.partitions and the owned partitions read once (s), so that each
 * order's partition is known before its row is written: the users picked
 * are all in owned partitions, but an order without uid (no user to pick)
 * goes by its order_id, and one in another node's partition gets only its
 * outbox row (kind forward), like place_order()'s.  The result is the number of orders
 * made here (what the back-pressure counts).
 */
static const char *insert_orders_sql =
"WITH s AS MATERIALIZED ("
"  SELECT ordflow._node_id() OPERATOR(pg_catalog.<<) 48 AS base,"
"         ordflow._partitions() AS parts, ordflow._owned_partitions() AS owned"
"   WHERE (SELECT g.running FROM ordflow.generator_state AS g FOR SHARE)),"
" d AS MATERIALIZED ("
"  SELECT n.*, s.parts OPERATOR(pg_catalog.=) 1"
"              OR ordflow.partition_of(COALESCE(n.uid, n.order_id)) OPERATOR(pg_catalog.=) ANY (s.owned) AS here"
"    FROM s, (SELECT s.base OPERATOR(pg_catalog.+) pg_catalog.nextval('ordflow.order_id_seq') AS order_id,"
"                    v.uid, v.symbol, v.quantity"
"               FROM s, unnest($1::pg_catalog.int8[], $2::pg_catalog.text[], $3::pg_catalog.int4[])"
"                    AS v(uid, symbol, quantity)"
"             OFFSET 0) AS n),"	/* one id per order */
" o AS ("
"  INSERT INTO ordflow.orders (order_id, uid, symbol, quantity, status, source)"
"  SELECT d.order_id, d.uid, d.symbol, d.quantity, 'initialised', 'generator'"
"    FROM d WHERE d.here"
"  ON CONFLICT (order_id) DO NOTHING"	/* an id an outside producer took */
"  RETURNING order_id, uid, symbol, quantity, amount, created_at),"
" e AS ("
"  INSERT INTO ordflow.order_events (order_id, uid, status, event_time, amount)"
"  SELECT order_id, uid, 'initialised', created_at, amount FROM o),"
" ob AS ("
"  INSERT INTO ordflow.outbox (kind, order_id, message_id, routing_key, payload)"
"  SELECT m.kind, m.order_id, m.order_id::pg_catalog.text,"
"         ordflow._order_routing_key(m.uid, m.order_id, s.parts),"
"         ordflow._order_payload(m.order_id, m.uid, m.symbol, m.quantity, m.amount, m.created_at)"
"    FROM s, (SELECT 'order' AS kind, order_id, uid, symbol, quantity, amount, created_at FROM o"
"             UNION ALL"
"             SELECT 'forward', order_id, uid, symbol, quantity, NULL, pg_catalog.clock_timestamp()"
"               FROM d WHERE NOT d.here) AS m)"
" SELECT pg_catalog.count(*) FROM o";

static const Oid insert_orders_types[3] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID};
static SPIPlanPtr insert_plan = NULL;

/* Users to pick from, refreshed every second. */
static int64 *user_ids = NULL;
static int	n_user_ids = 0;
static TimestampTz users_loaded_at = 0;
static uint32 users_truncate_version = 0;

static void
refresh_users(void)
{
	MemoryContext oldcxt;
	uint64		i;

	/* with partitions, only users this node holds (their orders are made here) */
	if (SPI_execute(ordflow_partitions == 1 ?
					"SELECT uid FROM ordflow.users LIMIT " CppAsString2(GEN_USERS_SAMPLE) :
					"SELECT u.uid FROM ordflow.users AS u"
					" WHERE ordflow.partition_of(u.uid) OPERATOR(pg_catalog.=) ANY ((SELECT ordflow._owned_partitions())::pg_catalog.int4[])"
					" LIMIT " CppAsString2(GEN_USERS_SAMPLE),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read ordflow.users");
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	if (user_ids)
		pfree(user_ids);
	user_ids = palloc(sizeof(int64) * Max(SPI_processed, 1));
	MemoryContextSwitchTo(oldcxt);
	n_user_ids = (int) SPI_processed;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		user_ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 1, &isnull));
	}
	users_loaded_at = GetCurrentTimestamp();
}

/*
 * Make n orders in the current transaction; returns how many were inserted
 * (an id an outside producer took is skipped, not counted).
 */
static uint64
make_orders(int n)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	Datum	   *uids = palloc(sizeof(Datum) * n);
	bool	   *uid_nulls = palloc(sizeof(bool) * n);
	Datum	   *symbols = palloc(sizeof(Datum) * n);
	Datum	   *quantities = palloc(sizeof(Datum) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Datum		args[3];
	int			i;
	uint32		truncate_version;
	bool		isnull;

	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	truncate_version = OfState->truncate_version;
	LWLockRelease(OfState->lock);
	if (user_ids == NULL || truncate_version != users_truncate_version ||
		TimestampDifferenceExceeds(users_loaded_at, GetCurrentTimestamp(), GEN_USERS_REFRESH_MS))
	{
		refresh_users();
		users_truncate_version = truncate_version;
	}

	for (i = 0; i < n; i++)
	{
		char		sym[3];

		if (n_user_ids > 0)
		{
			uids[i] = Int64GetDatum(user_ids[pg_prng_uint64_range(&pg_global_prng_state, 0, n_user_ids - 1)]);
			uid_nulls[i] = false;
		}
		else
		{
			uids[i] = (Datum) 0;
			uid_nulls[i] = true;
		}
		for (int j = 0; j < 3; j++)
			sym[j] = alphabet[pg_prng_uint64_range(&pg_global_prng_state, 0, 35)];
		symbols[i] = PointerGetDatum(cstring_to_text_with_len(sym, 3));
		quantities[i] = Int32GetDatum((int32) pg_prng_uint64_range(&pg_global_prng_state, 1, 10));
	}

	args[0] = PointerGetDatum(construct_md_array(uids, uid_nulls, 1, dims, lbs,
												 INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(symbols, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(quantities, n, INT4OID, 4, true, TYPALIGN_INT));

	of_run_plan(&insert_plan, insert_orders_sql, 3, insert_orders_types, args, NULL,
				SPI_OK_SELECT);
	return (uint64) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Back-pressure: pause while more than ordflow.generator_max_backlog of the
 * orders made are still unprocessed, so a rate the pipeline cannot follow
 * never grows the backlog without bound.
 */
static bool
throttled(OfWorkerSlot *slot)
{
	uint64		made;
	uint64		done;

	if (ordflow_generator_max_backlog <= 0)
		return false;
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	made = OfState->orders_generated;
	done = OfState->generated_processed;
	LWLockRelease(OfState->lock);
	if (made <= done || made - done <= (uint64) ordflow_generator_max_backlog)
		return false;
	of_slot_set_state(slot, "paused: backlog above ordflow.generator_max_backlog");
	return true;
}

typedef struct GenerateWork
{
	int			requested;
	uint64		inserted;
	bool		extension_gone; /* DROP EXTENSION ordflow happened */
} GenerateWork;

static void
generate_tx(void *arg)
{
	GenerateWork *w = arg;

	if (of_extension_exists())
		w->inserted = make_orders(w->requested);
	else
		w->extension_gone = true;
}

/*
 * Make n orders in a transaction of its own, count them and wake the relay.
 * False after an error (of_run_in_tx reported it).
 */
static bool
generate_orders(OfWorkerSlot *slot, MemoryContext loop_cxt, int n)
{
	GenerateWork w = {n, 0, false};
	MemoryContext oldcxt;
	ErrorData  *err;

	of_slot_set_state(slot, "generating");
	oldcxt = MemoryContextSwitchTo(loop_cxt);
	err = of_run_in_tx(slot, "ordflow generator: making orders", generate_tx, &w);
	MemoryContextSwitchTo(oldcxt);
	/* Extension dropped: leave quietly; the supervisor decides. */
	if (w.extension_gone)
		proc_exit(0);
	if (err != NULL)
		return false;
	/* back-pressure counts only the orders that exist */
	of_slot_add_processed(slot, w.inserted);
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	OfState->orders_generated += w.inserted;
	LWLockRelease(OfState->lock);
	of_wake_slot(OF_SLOT_RELAY);
	return true;
}

void
ordflow_generator_main(Datum main_arg)
{
	OfWorkerSlot *slot;
	MemoryContext loop_cxt;
	double		tokens = 0.0;
	TimestampTz last_refill = 0;
	uint32		seen_version = 0;

	slot = of_worker_start(OF_SLOT_GENERATOR, OF_WORKER_GENERATOR, 0);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "ordflow generator loop",
									 ALLOCSET_DEFAULT_SIZES);

	while (true)
	{
		bool		running;
		double		rate;
		uint32		version;
		TimestampTz now;
		long		wait_ms;
		int			n;

		of_worker_interrupts();
		MemoryContextReset(loop_cxt);

		LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
		running = OfState->gen_running;
		rate = OfState->gen_rate > 0 ? OfState->gen_rate : ordflow_generator_rate;
		version = OfState->gen_version;
		LWLockRelease(OfState->lock);

		if (!running || throttled(slot))
		{
			if (running)
			{
				/* back-pressure: wait for the pipeline, keep no burst */
				tokens = 0.0;
				last_refill = 0;
				of_worker_wait(GEN_MIN_TICK_MS * 5);
				continue;
			}
			of_slot_set_state(slot, "stopped");
			tokens = 0.0;
			last_refill = 0;
			of_worker_wait(10000);
			continue;
		}

		/* A start() or a new rate restarts the bucket with one token, so
		 * the first order comes at once. */
		now = GetCurrentTimestamp();
		if (version != seen_version || last_refill == 0)
		{
			seen_version = version;
			tokens = 1.0;
			last_refill = now;
		}
		else
		{
			tokens += rate * (double) (now - last_refill) / 1000000.0;
			last_refill = now;
		}
		/* Never let a stall turn into a burst larger than a second's worth. */
		tokens = Min(tokens, Max(rate, 1.0));

		n = (int) Min(tokens, (double) GEN_MAX_BATCH);
		if (n >= 1)
		{
			if (!generate_orders(slot, loop_cxt, n))
			{
				tokens = 0.0;
				of_worker_wait(1000);
				continue;
			}
			tokens -= n;
		}

		/* Sleep until the next whole token, but not less than a tick. */
		if (tokens >= 1.0)
			wait_ms = GEN_MIN_TICK_MS;
		else
			wait_ms = (long) Min((1.0 - tokens) * 1000.0 / rate + 1.0, 10000.0);
		of_worker_wait(Max(wait_ms, GEN_MIN_TICK_MS));
	}
}
