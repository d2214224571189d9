/*-------------------------------------------------------------------------
 *
 * spi_util.h
 *	  SPI helpers of the workers: kept plans, array parameters built from
 *	  C values, and subtransactions that tell data errors from transient ones.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_SPI_UTIL_H
#define ORDFLOW_SPI_UTIL_H

#include "executor/spi.h"
#include "utils/elog.h"

#define NUMERICARRAYOID_ 1231	/* numeric[] */
#define TIMESTAMPTZARRAYOID_ 1185	/* timestamptz[] */
#define TIDARRAYOID_ 1010			/* tid[] */

/* A one-dimensional array parameter under construction. */
typedef struct ArrBuild
{
	Datum	   *values;
	bool	   *nulls;
	int			n;
} ArrBuild;

extern void arr_init(ArrBuild *b, int cap);
extern void arr_add(ArrBuild *b, Datum v, bool isnull);
extern void arr_add_text(ArrBuild *b, const char *s);
extern Datum arr_make(ArrBuild *b, Oid elemtype);

/* Prepare (once, kept) and run a statement; ERROR unless it returns expected. */
extern void of_run_plan(SPIPlanPtr *plan, const char *sql, int nargs, const Oid *types,
						Datum *values, const char *nulls, int expected);

typedef void (*SubxactFn) (void *arg);
extern bool of_is_transient(int sqlerrcode);
extern ErrorData *of_run_in_subxact(SubxactFn fn, void *arg);

#endif							/* ORDFLOW_SPI_UTIL_H */
