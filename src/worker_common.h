/*-------------------------------------------------------------------------
 *
 * worker_common.h
 *	  Scaffolding shared by the ordflow background workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_WORKER_COMMON_H
#define ORDFLOW_WORKER_COMMON_H

#include "ordflow.h"
#include "shmem.h"

extern OfWorkerSlot *of_worker_start(int slotno, OfWorkerKind kind, int index);
extern void of_worker_interrupts(void);
/* The schema version the workers need (ordflow.control's default_version). */
#define OF_SCHEMA_VERSION "1.1"

typedef enum OfExtensionState
{
	OF_EXT_MISSING,
	OF_EXT_OLD_VERSION,			/* waits for ALTER EXTENSION ordflow UPDATE */
	OF_EXT_READY
} OfExtensionState;

extern OfExtensionState of_extension_state(void);
extern bool of_extension_exists(void);
extern void of_begin_tx(const char *activity);
extern void of_commit_tx(void);
extern void of_worker_wait(long timeout_ms);
extern long of_idle_wait_ms(long timeout_ms);
extern ErrorData *of_report_error(OfWorkerSlot *slot, MemoryContext cxt);

typedef void (*OfTxFn) (void *arg);
extern ErrorData *of_run_in_tx(OfWorkerSlot *slot, const char *activity,
							   OfTxFn fn, void *arg);
extern const char *of_message_origin(void);
extern int	of_backoff_next(int ms, int min_ms, int max_ms);

#endif							/* ORDFLOW_WORKER_COMMON_H */
