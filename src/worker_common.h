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

extern OfWorkerSlot *of_worker_start(int slotno, OfWorkerKind kind, int index);
extern void of_worker_interrupts(void);
extern bool of_extension_exists(void);
extern void of_begin_tx(const char *activity);
extern void of_commit_tx(void);
extern void of_worker_wait(long timeout_ms);
extern void of_report_error(OfWorkerSlot *slot, const char *context);

#endif							/* ORDFLOW_WORKER_COMMON_H */
