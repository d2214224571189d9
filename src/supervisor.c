/*-------------------------------------------------------------------------
 *
 * supervisor.c
 *	  The static worker that keeps the pipeline alive: it waits until the
 *	  extension exists in ordflow.database, loads the generator's persisted
 *	  run state into shared memory, and launches (and relaunches, with
 *	  backoff) the generator, the relay and ordflow.consumers consumers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "ordflow.h"
#include "spi_util.h"
#include "worker_common.h"

#define SUPERVISOR_TICK_MS		1000
#define RELAUNCH_MIN_MS			1000
#define RELAUNCH_MAX_MS			30000
/* A worker that lived this long is considered healthy again. */
#define HEALTHY_AFTER_MS		60000

typedef struct Child
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz next_launch;
	int			backoff_ms;
} Child;

static Child children[OF_NUM_SLOTS];
static bool old_version_logged = false;

static const char *
child_function(int slotno)
{
	if (slotno == OF_SLOT_GENERATOR)
		return "ordflow_generator_main";
	if (slotno == OF_SLOT_RELAY)
		return "ordflow_relay_main";
	return "ordflow_consumer_main";
}

static void
child_type(int slotno, char *buf)
{
	if (slotno == OF_SLOT_GENERATOR)
		snprintf(buf, BGW_MAXLEN, "ordflow generator");
	else if (slotno == OF_SLOT_RELAY)
		snprintf(buf, BGW_MAXLEN, "ordflow relay");
	else
		snprintf(buf, BGW_MAXLEN, "ordflow consumer");
}

static bool
child_running(int slotno)
{
	pid_t		pid;

	if (children[slotno].handle == NULL)
	{
		/* adopted from a previous supervisor: alive while its slot is held */
		pid_t		held;

		LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
		held = OfState->slots[slotno].pid;
		LWLockRelease(OfState->lock);
		return held != 0 && kill(held, 0) == 0;
	}
	if (GetBackgroundWorkerPid(children[slotno].handle, &pid) == BGWH_STOPPED)
	{
		pfree(children[slotno].handle);
		children[slotno].handle = NULL;
		return false;
	}
	return true;
}

static void
launch_child(int slotno)
{
	Child	   *c = &children[slotno];
	BackgroundWorker w;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext oldcxt;

	if (child_running(slotno))
		return;

	/* Just noticed it is gone: back off if it died young. */
	if (c->started_at != 0)
	{
		if (TimestampDifferenceExceeds(c->started_at, now, HEALTHY_AFTER_MS))
			c->backoff_ms = 0;
		else
			c->backoff_ms = of_backoff_next(c->backoff_ms, RELAUNCH_MIN_MS, RELAUNCH_MAX_MS);
		c->next_launch = TimestampTzPlusMilliseconds(now, c->backoff_ms);
		c->started_at = 0;
	}
	if (now < c->next_launch)
		return;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "ordflow");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "%s", child_function(slotno));
	child_type(slotno, w.bgw_type);
	if (slotno >= OF_SLOT_CONSUMER0)
		snprintf(w.bgw_name, BGW_MAXLEN, "ordflow consumer %d", slotno - OF_SLOT_CONSUMER0);
	else
		snprintf(w.bgw_name, BGW_MAXLEN, "%s", w.bgw_type);
	w.bgw_main_arg = Int32GetDatum(slotno);
	w.bgw_notify_pid = MyProcPid;

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	if (!RegisterDynamicBackgroundWorker(&w, &c->handle))
	{
		c->handle = NULL;
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("ordflow: could not start the %s worker", w.bgw_name),
				 errhint("Raise max_worker_processes: ordflow needs 4 + ordflow.consumers (supervisor, generator, relay, consumers).")));
		c->next_launch = TimestampTzPlusMilliseconds(now, RELAUNCH_MAX_MS);
	}
	else
		c->started_at = now;
	MemoryContextSwitchTo(oldcxt);
}

static void
stop_child(int slotno)
{
	if (child_running(slotno))
	{
		if (children[slotno].handle)
			TerminateBackgroundWorker(children[slotno].handle);
		else
		{
			pid_t		held;

			LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
			held = OfState->slots[slotno].pid;
			LWLockRelease(OfState->lock);
			if (held != 0)
				kill(held, SIGTERM);
		}
	}
	children[slotno].started_at = 0;
	children[slotno].next_launch = 0;
	children[slotno].backoff_ms = 0;
}

/* Copy the persisted generator state into shared memory once per start. */
static void
load_generator_state(void *arg)
{
	bool		loaded;

	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	loaded = OfState->gen_loaded;
	LWLockRelease(OfState->lock);
	if (loaded)
		return;

	if (SPI_execute("SELECT running, rate FROM ordflow.generator_state", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		bool		running = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1, &isnull));
		Datum		rate = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
		if (!OfState->gen_loaded)
		{
			OfState->gen_running = running;
			OfState->gen_rate = isnull ? 0.0 : DatumGetFloat8(rate);
			OfState->gen_loaded = true;
			OfState->gen_version++;
		}
		LWLockRelease(OfState->lock);
	}
}

/*
 * Delete what the retention settings let go, a bounded chunk per call so
 * no transaction grows long: events, metrics history and the message ids
 * of applied user events older than ordflow.retention, dead letters older
 * than ordflow.dead_letter_retention.  Orders stay; their final state is in
 * the orders table.
 */
static void
apply_retention(void *arg)
{
	pgstat_report_activity(STATE_RUNNING, "ordflow supervisor: applying retention");
	if (ordflow_event_retention > 0)
	{
		/*
		 * Events are appended in event_id order, so the old ones are among
		 * the lowest ids: look at the 50,000 oldest only, never the whole
		 * table.  (created_at in the future is refused, so no event dated
		 * ahead can pin this window.)
		 */
		of_execute(psprintf("DELETE FROM ordflow.order_events"
							" WHERE event_id <= (SELECT pg_catalog.max(o.event_id) FROM"
							"   (SELECT event_id, event_time FROM ordflow.order_events"
							"     ORDER BY event_id LIMIT 50000) AS o"
							"   WHERE o.event_time < pg_catalog.now() - pg_catalog.make_interval(mins => %d))"
							"   AND event_time < pg_catalog.now() - pg_catalog.make_interval(mins => %d)",
							ordflow_event_retention, ordflow_event_retention));
		of_execute(psprintf("DELETE FROM ordflow.metrics_minute"
							" WHERE minute < pg_catalog.now() - pg_catalog.make_interval(mins => %d)",
							ordflow_event_retention));
		of_execute(psprintf("DELETE FROM ordflow.applied_user_events WHERE message_id = ANY (ARRAY("
							"  SELECT message_id FROM ordflow.applied_user_events"
							"   WHERE applied_at < pg_catalog.now() - pg_catalog.make_interval(mins => %d)"
							"   ORDER BY applied_at LIMIT 50000))",
							ordflow_event_retention));
	}
	if (ordflow_dead_letter_retention > 0)
		of_execute(psprintf("DELETE FROM ordflow.dead_letters_raw WHERE id = ANY (ARRAY("
							"  SELECT id FROM ordflow.dead_letters_raw"
							"   WHERE received_at < pg_catalog.now() - pg_catalog.make_interval(secs => %d)"
							"   ORDER BY received_at LIMIT 50000))",
							ordflow_dead_letter_retention));
}

static void
read_extension_state(void *arg)
{
	*(OfExtensionState *) arg = of_extension_state();
}

/*
 * Is the extension there, at our version?  An error reading the catalog
 * (already logged) keeps the previous answer.
 */
static bool
check_extension(OfWorkerSlot *slot, bool was_present)
{
	OfExtensionState state = OF_EXT_MISSING;

	if (of_run_in_tx(slot, "ordflow supervisor: checking the extension",
					 read_extension_state, &state) != NULL)
		return was_present;

	/* New library, old schema: say once what the pipeline waits for. */
	if (state == OF_EXT_OLD_VERSION && !old_version_logged)
		ereport(LOG,
				(errmsg("ordflow: the extension in database \"%s\" is older than this library (%s)",
						ordflow_database, OF_SCHEMA_VERSION),
				 errhint("Run ALTER EXTENSION ordflow UPDATE; the pipeline waits until then.")));
	old_version_logged = state == OF_EXT_OLD_VERSION;
	return state == OF_EXT_READY;
}

void
ordflow_supervisor_main(Datum main_arg)
{
	TimestampTz last_retention = 0;
	OfWorkerSlot *slot;
	bool		was_present = false;
	MemoryContext loop_cxt;

	slot = of_worker_start(OF_SLOT_SUPERVISOR, OF_WORKER_SUPERVISOR, 0);
	of_slot_set_state(slot, "starting");
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "ordflow supervisor loop",
									 ALLOCSET_DEFAULT_SIZES);

	while (true)
	{
		bool		present;

		of_worker_interrupts();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		present = check_extension(slot, was_present);
		if (present)
		{
			(void) of_run_in_tx(slot, "ordflow supervisor: loading the generator state",
								load_generator_state, NULL);
			if (TimestampDifferenceExceeds(last_retention, GetCurrentTimestamp(), 60000))
			{
				(void) of_run_in_tx(slot, "ordflow supervisor: applying retention",
									apply_retention, NULL);
				last_retention = GetCurrentTimestamp();
			}
		}

		if (present)
		{
			if (!was_present)
				ereport(LOG, (errmsg("ordflow: extension found in database \"%s\", starting the pipeline",
									 ordflow_database)));
			of_slot_set_state(slot, "supervising");
			launch_child(OF_SLOT_GENERATOR);
			launch_child(OF_SLOT_RELAY);
			for (int i = 0; i < OF_MAX_CONSUMERS; i++)
			{
				if (i < ordflow_consumers)
					launch_child(OF_SLOT_CONSUMER0 + i);
				else
					stop_child(OF_SLOT_CONSUMER0 + i);
			}
		}
		else
		{
			if (was_present)
				ereport(LOG, (errmsg("ordflow: extension dropped from database \"%s\", pipeline stopped",
									 ordflow_database)));
			of_slot_set_state(slot, "waiting for CREATE EXTENSION ordflow");
			/* Workers exit by themselves; forget the persisted state. */
			LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
			OfState->gen_loaded = false;
			OfState->gen_running = false;
			LWLockRelease(OfState->lock);
			for (int i = OF_SLOT_GENERATOR; i < OF_NUM_SLOTS; i++)
				stop_child(i);
		}
		was_present = present;

		of_worker_wait(present ? SUPERVISOR_TICK_MS : 2 * SUPERVISOR_TICK_MS);
	}
}
