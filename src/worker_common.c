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
#include "access/xlog.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
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

/*
 * Is the extension installed, at the version this library was built for?
 * Until ALTER EXTENSION ordflow UPDATE, an older schema lacks what the
 * workers use, so they wait as if it were missing.  In a transaction.
 */
OfExtensionState
of_extension_state(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	OfExtensionState state = OF_EXT_MISSING;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("ordflow"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		v = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		state = !isnull && strcmp(TextDatumGetCString(v), OF_SCHEMA_VERSION) == 0 ?
			OF_EXT_READY : OF_EXT_OLD_VERSION;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return state;
}

bool
of_extension_exists(void)
{
	return of_extension_state() == OF_EXT_READY;
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

/*
 * When the statistics a commit could not flush are due (0: none pending).
 * PostgreSQL flushes a process's table statistics at most once a second;
 * what a commit leaves pending, PostgresMain() flushes once the session has
 * been idle for the interval pgstat_report_stat() asks for.  A worker does
 * the same in of_idle_wait_ms(), or an idle worker's last batches would
 * never reach pg_stat_user_tables (nor autovacuum, which reads them).
 */
static TimestampTz stats_flush_due = 0;

void
of_commit_tx(void)
{
	long		next_ms;

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	next_ms = pgstat_report_stat(false);
	stats_flush_due = next_ms > 0 ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), next_ms) : 0;
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Before a worker sleeps for timeout_ms: flush pending statistics if they
 * are due, and return how long the sleep may last so that it wakes up when
 * they will be.
 */
long
of_idle_wait_ms(long timeout_ms)
{
	TimestampTz now;

	if (stats_flush_due == 0 || IsTransactionOrTransactionBlock())
		return timeout_ms;
	now = GetCurrentTimestamp();
	if (now >= stats_flush_due)
	{
		pgstat_report_stat(true);
		stats_flush_due = 0;
		return timeout_ms;
	}
	return Min(timeout_ms, (long) ((stats_flush_due - now) / 1000) + 1);
}

/*
 * The x-ordflow-origin of the messages this database publishes: the
 * cluster's system identifier and the database oid, which together tell
 * this database from every other one sharing the broker.
 */
const char *
of_message_origin(void)
{
	static char origin[48];

	if (origin[0] == '\0')
		snprintf(origin, sizeof(origin), UINT64_FORMAT "/%u",
				 GetSystemIdentifier(), MyDatabaseId);
	return origin;
}

/* The next wait of an exponential backoff: min_ms, then doubling to max_ms. */
int
of_backoff_next(int ms, int min_ms, int max_ms)
{
	return ms <= 0 ? min_ms : Min(ms * 2, max_ms);
}

/* Sleep on the latch; interrupts are checked by the caller's loop. */
void
of_worker_wait(long timeout_ms)
{
	int			rc;

	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
				   Max(of_idle_wait_ms(timeout_ms), 1), PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
}

/*
 * After an ERROR escaped a worker's transaction: log it with everything it
 * carries (SQLSTATE, detail, hint, context), as core's apply worker does,
 * remember it in the slot, and leave no transaction behind.  A persistent
 * error repeats on every retry, so it is logged when it changes or once a
 * minute.  Returns a copy in the caller's memory context.  Called in a
 * PG_CATCH block.
 */
ErrorData *
of_report_error(OfWorkerSlot *slot, MemoryContext cxt)
{
	static char *last_logged = NULL;
	static TimestampTz last_logged_at = 0;
	ErrorData  *edata;
	char		error_class[32];
	bool		repeated;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	repeated = last_logged != NULL && strcmp(last_logged, edata->message) == 0 &&
		!TimestampDifferenceExceeds(last_logged_at, GetCurrentTimestamp(), 60000);
	if (!repeated)
	{
		EmitErrorReport();
		if (last_logged)
			pfree(last_logged);
		last_logged = MemoryContextStrdup(TopMemoryContext, edata->message);
		last_logged_at = GetCurrentTimestamp();
	}
	AbortOutOfAnyTransaction();
	FlushErrorState();
	MemoryContextSwitchTo(cxt);
	RESUME_INTERRUPTS();

	if (repeated)
		elog(DEBUG1, "ordflow: %s", edata->message);
	snprintf(error_class, sizeof(error_class), "database error %s",
			 unpack_sql_state(edata->sqlerrcode));
	of_slot_set_error(slot, edata->message, error_class);
	pgstat_report_activity(STATE_IDLE, NULL);
	return edata;
}

/*
 * Run fn(arg) in a transaction of its own, SPI connected, in the caller's
 * memory context.  Returns NULL when it committed, else the error (already
 * logged and rolled back), allocated in the caller's context.
 */
ErrorData *
of_run_in_tx(OfWorkerSlot *slot, const char *activity, OfTxFn fn, void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		of_begin_tx(activity);
		MemoryContextSwitchTo(cxt);
		fn(arg);
		of_commit_tx();
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		edata = of_report_error(slot, cxt);
	}
	PG_END_TRY();
	return edata;
}
