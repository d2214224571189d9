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
#include "utils/array.h"
#include "utils/elog.h"

/* A one-dimensional array parameter under construction. */
extern ArrayBuildState *of_array_new(Oid elemtype);
extern void of_array_add(ArrayBuildState *a, Datum v, bool isnull);
extern void of_array_add_text(ArrayBuildState *a, const char *s);
extern Datum of_array_done(ArrayBuildState *a);
extern Datum of_bytea_datum(const char *data, size_t len);

/* Prepare (once, kept) and run a statement; ERROR unless it returns expected. */
extern void of_run_plan(SPIPlanPtr *plan, const char *sql, int nargs, const Oid *types,
						Datum *values, const char *nulls, int expected);

extern void of_execute(const char *sql);

typedef void (*SubxactFn) (void *arg);
extern bool of_is_transient(int sqlerrcode);
extern ErrorData *of_run_in_subxact(SubxactFn fn, void *arg);

#endif							/* ORDFLOW_SPI_UTIL_H */
