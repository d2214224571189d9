/*-------------------------------------------------------------------------
 *
 * worker_common.c
 *	  Start-up, transactions and waiting, as every ordflow worker does them
 *	  (the worker_spi pattern).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "amqp_conn.h"
#include "worker_common.h"

uint64		of_config_generation = 0;

OfWorkerSlot *
of_worker_start(int slotno, OfWorkerKind kind, int index)
{
	OfWorkerSlot *slot;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, of_amqp_sigterm);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(ordflow_database, NULL, 0);
	/* Our statements name every schema; trust nothing else on the path. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Our statements are keyed lookups on tables that grow fast.  Right
	 * after truncate() the statistics say they are empty, and a plan kept
	 * from then would scan a table that has since reached millions of rows.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* ... and with scans priced that high, JIT would compile trivial queries. */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	slot = of_slot_attach(slotno, kind, index);
	if (slot == NULL)
	{
		ereport(LOG, (errmsg("ordflow: %s is already running, exiting", MyBgworkerEntry->bgw_name)));
		proc_exit(0);
	}
	pgstat_report_appname(MyBgworkerEntry->bgw_type);
	return slot;
}

/* Exit on SIGTERM (through die()), reload settings on SIGHUP. */
void
of_worker_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		of_config_generation++;
	}
}

/* Must be called inside a transaction. */
bool
of_extension_exists(void)
{
	return OidIsValid(get_extension_oid("ordflow", true));
}

void
of_begin_tx(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

void
of_commit_tx(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Sleep on the latch; interrupts are checked by the caller's loop. */
void
of_worker_wait(long timeout_ms)
{
	int			rc;

	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
				   Max(timeout_ms, 1), PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
}

/*
 * After an ERROR escaped a worker's iteration: log it, remember it in the
 * slot, and clean up so the loop can go on.  Called in a PG_CATCH block.
 */
void
of_report_error(OfWorkerSlot *slot, const char *context)
{
	static char *last_logged = NULL;
	static TimestampTz last_logged_at = 0;

	ErrorData  *edata;
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	edata = CopyErrorData();
	MemoryContextSwitchTo(oldcxt);
	FlushErrorState();

	/*
	 * A persistent error repeats on every retry; log it when it changes or
	 * once a minute, not every time.
	 */
	if (last_logged == NULL || strcmp(last_logged, edata->message) != 0 ||
		TimestampDifferenceExceeds(last_logged_at, GetCurrentTimestamp(), 60000))
	{
		ereport(LOG,
				(errmsg("ordflow %s: %s", context, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
		if (last_logged)
			pfree(last_logged);
		last_logged = MemoryContextStrdup(TopMemoryContext, edata->message);
		last_logged_at = GetCurrentTimestamp();
	}
	else
		elog(DEBUG1, "ordflow %s: %s", context, edata->message);
	of_slot_set_error(slot, edata->message);
	FreeErrorData(edata);
	AbortCurrentTransaction();
	pgstat_report_activity(STATE_IDLE, NULL);
}
