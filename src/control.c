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

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "ordflow.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(ordflow_status);
PG_FUNCTION_INFO_V1(ordflow_apply_generator_state);
PG_FUNCTION_INFO_V1(ordflow_wake_relay_at_commit);
PG_FUNCTION_INFO_V1(ordflow_truncated);

/*
 * Changes waiting for the current transaction to commit.  start()/stop()
 * calls are stacked with their subtransaction level, so rolling back a
 * savepoint drops only what was requested inside it.
 */
#define MAX_PENDING 64
typedef struct PendingGenerator
{
	int			level;
	bool		running;
	double		rate;
} PendingGenerator;

static bool callbacks_registered = false;
static PendingGenerator pending_gen[MAX_PENDING];
static int	n_pending_gen = 0;
static bool pending_wake_relay = false;
static bool pending_truncated = false;

static void
ordflow_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (OfState != NULL && (n_pending_gen > 0 || pending_truncated))
			{
				LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
				if (n_pending_gen > 0)
				{
					OfState->gen_running = pending_gen[n_pending_gen - 1].running;
					OfState->gen_rate = pending_gen[n_pending_gen - 1].rate;
					OfState->gen_loaded = true;
					OfState->gen_version++;
				}
				if (pending_truncated)
				{
					OfState->truncate_version++;
					/* truncated orders will never be processed: forget them */
					OfState->orders_generated = OfState->generated_processed;
				}
				LWLockRelease(OfState->lock);
			}
			if (n_pending_gen > 0 || pending_truncated)
				of_wake_slot(OF_SLOT_GENERATOR);
			if (pending_wake_relay)
				of_wake_slot(OF_SLOT_RELAY);
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			n_pending_gen = 0;
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
	int			level = GetCurrentTransactionNestLevel();

	/* A rolled back savepoint takes its start()/stop() with it ... */
	if (event == SUBXACT_EVENT_ABORT_SUB)
		while (n_pending_gen > 0 && pending_gen[n_pending_gen - 1].level >= level)
			n_pending_gen--;
	/* ... a released one hands them to its parent. */
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		for (int i = 0; i < n_pending_gen; i++)
			if (pending_gen[i].level >= level)
				pending_gen[i].level = level - 1;
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
	if (!PG_ARGISNULL(1) &&
		(isnan(PG_GETARG_FLOAT8(1)) || PG_GETARG_FLOAT8(1) < 0 ||
		 PG_GETARG_FLOAT8(1) > OF_MAX_GENERATOR_RATE))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("generator rate must be between 0 and %g orders per second",
						OF_MAX_GENERATOR_RATE)));
	register_callbacks();
	if (n_pending_gen == MAX_PENDING)
	{
		/* only the latest request matters at commit: keep the stack short */
		memmove(&pending_gen[0], &pending_gen[1], sizeof(PendingGenerator) * (MAX_PENDING - 1));
		n_pending_gen--;
	}
	pending_gen[n_pending_gen].level = GetCurrentTransactionNestLevel();
	pending_gen[n_pending_gen].running = PG_GETARG_BOOL(0);
	pending_gen[n_pending_gen].rate = PG_ARGISNULL(1) ? 0.0 : PG_GETARG_FLOAT8(1);
	n_pending_gen++;
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
	bool		see_details;

	/* Host names, ports and file paths are for those who may see settings. */
	see_details = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_SETTINGS);
	InitMaterializedSRF(fcinfo, 0);

	if (OfState == NULL)
		PG_RETURN_VOID();

	copy = palloc(sizeof(OfWorkerSlot) * OF_NUM_SLOTS);
	LWLockAcquire(OfState->lock, LW_SHARED);
	memcpy(copy, OfState->slots, sizeof(OfWorkerSlot) * OF_NUM_SLOTS);
	LWLockRelease(OfState->lock);

	for (i = 0; i < OF_NUM_SLOTS; i++)
	{
		OfWorkerSlot *s = &copy[i];
		Datum		values[9];
		bool		nulls[9] = {false};
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
		s->error_class[OF_STATE_LEN - 1] = '\0';
		s->node[OF_NODE_LEN - 1] = '\0';
		if (s->last_error[0] == '\0')
			nulls[6] = true;
		else
			values[6] = CStringGetTextDatum(see_details ? s->last_error : s->error_class);
		if (s->node[0] == '\0' || !see_details)
			nulls[7] = true;
		else
			values[7] = CStringGetTextDatum(s->node);
		s->partitions[OF_PARTITIONS_LEN - 1] = '\0';
		if (s->partitions[0] == '\0')
			nulls[8] = true;
		else
			values[8] = CStringGetTextDatum(s->partitions);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}
