/*-------------------------------------------------------------------------
 *
 * spi_util.c
 *	  SPI helpers of the workers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "spi_util.h"

/*
 * Every SPI call returns with CurrentMemoryContext set to SPI's procedure
 * context, which SPI_finish() frees at commit.  Our callers keep what they
 * allocate after a statement (replies, errors, outcomes) past the commit,
 * so each helper here puts the caller's context back.
 */
void
of_run_plan(SPIPlanPtr *plan, const char *sql, int nargs, const Oid *types,
			Datum *values, const char *nulls, int expected)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc;

	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, (Oid *) types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	rc = SPI_execute_plan(*plan, values, nulls, false, 0);
	MemoryContextSwitchTo(cxt);
	if (rc != expected)
		elog(ERROR, "ordflow: unexpected SPI result %s", SPI_result_code_string(rc));
}

/* Run a one-off statement (no parameters, not kept). */
void
of_execute(const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute(sql, false, 0);

	MemoryContextSwitchTo(cxt);
	if (rc < 0)
		elog(ERROR, "ordflow: SPI_execute failed: %s", SPI_result_code_string(rc));
}

/* ---- array parameters, built with PostgreSQL's array builder ---- */

ArrayBuildState *
of_array_new(Oid elemtype)
{
	return initArrayResult(elemtype, CurrentMemoryContext, false);
}

void
of_array_add(ArrayBuildState *a, Datum v, bool isnull)
{
	accumArrayResult(a, v, isnull, a->element_type, a->mcontext);
}

/* Append a text element; NULL pointer means SQL NULL. */
void
of_array_add_text(ArrayBuildState *a, const char *s)
{
	of_array_add(a, s ? CStringGetTextDatum(s) : (Datum) 0, s == NULL);
}

Datum
of_array_done(ArrayBuildState *a)
{
	return makeArrayResult(a, a->mcontext);
}

/* A bytea holding a copy of len bytes at data. */
Datum
of_bytea_datum(const char *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	if (len > 0)
		memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}

/* ---- errors ---- */

/* Errors that say nothing about the message: retry the batch later. */
bool
of_is_transient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_TRANSACTION_ROLLBACK:	/* deadlock, serialization */
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_OPERATOR_INTERVENTION: /* shutdown, cancel */
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_CONNECTION_EXCEPTION:
			return true;
		default:
			break;
	}
	return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_UNDEFINED_TABLE ||	/* extension being dropped */
		sqlerrcode == ERRCODE_UNDEFINED_FUNCTION ||
		sqlerrcode == ERRCODE_READ_ONLY_SQL_TRANSACTION;
}

/*
 * Run fn in a subtransaction.  Returns NULL on success, or the error (with
 * the subtransaction rolled back) when it is tied to the data; rethrows
 * transient errors.
 */
ErrorData *
of_run_in_subxact(SubxactFn fn, void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (of_is_transient(edata->sqlerrcode))
			ReThrowError(edata);
	}
	PG_END_TRY();
	return edata;
}
