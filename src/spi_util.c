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

void
of_run_plan(SPIPlanPtr *plan, const char *sql, int nargs, const Oid *types,
			Datum *values, const char *nulls, int expected)
{
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
	if (rc != expected)
		elog(ERROR, "ordflow: unexpected SPI result %s", SPI_result_code_string(rc));
}

/* ---- small array builders (palloc in the current context) ---- */

void
arr_init(ArrBuild *b, int cap)
{
	b->values = palloc(sizeof(Datum) * Max(cap, 1));
	b->nulls = palloc(sizeof(bool) * Max(cap, 1));
	b->n = 0;
}

void
arr_add(ArrBuild *b, Datum v, bool isnull)
{
	b->values[b->n] = v;
	b->nulls[b->n] = isnull;
	b->n++;
}

Datum
arr_make(ArrBuild *b, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {b->n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(b->values, b->nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}

/* Append a text element; NULL pointer means SQL NULL. */
void
arr_add_text(ArrBuild *b, const char *s)
{
	if (s == NULL)
		arr_add(b, (Datum) 0, true);
	else
		arr_add(b, CStringGetTextDatum(s), false);
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
