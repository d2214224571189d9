/*-------------------------------------------------------------------------
 *
 * control.c
 *	  SQL-callable control functions: status(), and the commit-time hooks
 *	  behind start(), stop(), truncate() and place_order().
 *
 * Shared memory changes requested inside a transaction are applied only
 * when it commits, from a transaction callback that does nothing but copy a
 * few words and set latches (no I/O may happen there).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "ordflow.h"

PG_FUNCTION_INFO_V1(ordflow_status);
PG_FUNCTION_INFO_V1(ordflow_apply_generator_state);
PG_FUNCTION_INFO_V1(ordflow_wake_relay_at_commit);
PG_FUNCTION_INFO_V1(ordflow_truncated);

/* Changes waiting for the current transaction to commit. */
static bool callbacks_registered = false;
static bool pending_generator = false;
static int	pending_generator_level = 0;
static bool pending_running = false;
static double pending_rate = 0.0;
static bool pending_wake_relay = false;
static bool pending_truncated = false;

static void
ordflow_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (OfState != NULL && (pending_generator || pending_truncated))
			{
				SpinLockAcquire(&OfState->mutex);
				if (pending_generator)
				{
					OfState->gen_running = pending_running;
					OfState->gen_rate = pending_rate;
					OfState->gen_loaded = true;
					OfState->gen_version++;
				}
				if (pending_truncated)
					OfState->truncate_version++;
				SpinLockRelease(&OfState->mutex);
			}
			if (pending_generator || pending_truncated)
				of_wake_slot(OF_SLOT_GENERATOR);
			if (pending_wake_relay)
				of_wake_slot(OF_SLOT_RELAY);
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			pending_generator = false;
			pending_wake_relay = false;
			pending_truncated = false;
			break;
		default:
			break;
	}
}

static void
ordflow_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	/* A rolled back savepoint takes its start()/stop() with it. */
	if (event == SUBXACT_EVENT_ABORT_SUB && pending_generator &&
		pending_generator_level >= GetCurrentTransactionNestLevel())
		pending_generator = false;
}

static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(ordflow_xact_callback, NULL);
	RegisterSubXactCallback(ordflow_subxact_callback, NULL);
	callbacks_registered = true;
}

Datum
ordflow_apply_generator_state(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("running must not be null")));
	register_callbacks();
	pending_generator = true;
	pending_generator_level = GetCurrentTransactionNestLevel();
	pending_running = PG_GETARG_BOOL(0);
	pending_rate = PG_ARGISNULL(1) ? 0.0 : PG_GETARG_FLOAT8(1);
	PG_RETURN_VOID();
}

Datum
ordflow_wake_relay_at_commit(PG_FUNCTION_ARGS)
{
	if (!pending_wake_relay)
	{
		register_callbacks();
		pending_wake_relay = true;
	}
	PG_RETURN_VOID();
}

Datum
ordflow_truncated(PG_FUNCTION_ARGS)
{
	register_callbacks();
	pending_truncated = true;
	PG_RETURN_VOID();
}

static const char *
worker_name(OfWorkerSlot *slot, char *buf, size_t len)
{
	switch (slot->kind)
	{
		case OF_WORKER_SUPERVISOR:
			return "supervisor";
		case OF_WORKER_GENERATOR:
			return "generator";
		case OF_WORKER_RELAY:
			return "relay";
		case OF_WORKER_CONSUMER:
			snprintf(buf, len, "consumer %d", slot->index);
			return buf;
		default:
			return "unknown";
	}
}

/* One row per running worker, copied under the spinlock then emitted. */
Datum
ordflow_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OfWorkerSlot *copy;
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	if (OfState == NULL)
		PG_RETURN_VOID();

	copy = palloc(sizeof(OfWorkerSlot) * OF_NUM_SLOTS);
	SpinLockAcquire(&OfState->mutex);
	memcpy(copy, OfState->slots, sizeof(OfWorkerSlot) * OF_NUM_SLOTS);
	SpinLockRelease(&OfState->mutex);

	for (i = 0; i < OF_NUM_SLOTS; i++)
	{
		OfWorkerSlot *s = &copy[i];
		Datum		values[7];
		bool		nulls[7] = {false};
		char		namebuf[32];

		if (s->pid == 0)
			continue;
		values[0] = CStringGetTextDatum(worker_name(s, namebuf, sizeof(namebuf)));
		values[1] = Int32GetDatum(s->pid);
		s->state[OF_STATE_LEN - 1] = '\0';
		values[2] = CStringGetTextDatum(s->state);
		values[3] = BoolGetDatum(s->connected);
		values[4] = TimestampTzGetDatum(s->since);
		values[5] = Int64GetDatum((int64) s->processed);
		s->last_error[OF_ERROR_LEN - 1] = '\0';
		if (s->last_error[0] == '\0')
			nulls[6] = true;
		else
			values[6] = CStringGetTextDatum(s->last_error);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}
