/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state of the ordflow workers: one slot per worker with its pid,
 *	  latch, connection state, counters and last error, plus the generator's
 *	  run flag and rate.  Any session reads it (status()) or changes it
 *	  (start(), stop()) and wakes the worker through its latch.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "ordflow.h"

OfShared   *OfState = NULL;

static OfWorkerSlot *MySlot = NULL;

Size
of_shmem_size(void)
{
	return MAXALIGN(sizeof(OfShared));
}

void
of_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	OfState = ShmemInitStruct("ordflow", of_shmem_size(), &found);
	if (!found)
	{
		memset(OfState, 0, of_shmem_size());
		SpinLockInit(&OfState->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
of_slot_detach(int code, Datum arg)
{
	OfWorkerSlot *slot = (OfWorkerSlot *) DatumGetPointer(arg);

	SpinLockAcquire(&OfState->mutex);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->latch = NULL;
		slot->connected = false;
		strlcpy(slot->state, "exited", OF_STATE_LEN);
		slot->since = GetCurrentTimestamp();
	}
	SpinLockRelease(&OfState->mutex);
	MySlot = NULL;
}

OfWorkerSlot *
of_slot_attach(int slotno, OfWorkerKind kind, int index)
{
	OfWorkerSlot *slot;

	Assert(slotno >= 0 && slotno < OF_NUM_SLOTS);
	slot = &OfState->slots[slotno];

	SpinLockAcquire(&OfState->mutex);
	/* A restarted supervisor may launch a twin of a worker that still runs. */
	if (slot->pid != 0 && slot->pid != MyProcPid && kill(slot->pid, 0) == 0)
	{
		SpinLockRelease(&OfState->mutex);
		return NULL;
	}
	slot->kind = kind;
	slot->index = index;
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	slot->connected = false;
	slot->since = GetCurrentTimestamp();
	strlcpy(slot->state, "starting", OF_STATE_LEN);
	slot->processed = 0;
	slot->last_error[0] = '\0';
	slot->error_class[0] = '\0';
	slot->node[0] = '\0';
	SpinLockRelease(&OfState->mutex);

	MySlot = slot;
	on_shmem_exit(of_slot_detach, PointerGetDatum(slot));
	return slot;
}

void
of_slot_set_state(OfWorkerSlot *slot, const char *state)
{
	if (strncmp(slot->state, state, OF_STATE_LEN) == 0)
		return;					/* only the owner writes, so this read is safe */
	SpinLockAcquire(&OfState->mutex);
	strlcpy(slot->state, state, OF_STATE_LEN);
	slot->since = GetCurrentTimestamp();
	SpinLockRelease(&OfState->mutex);
}

void
of_slot_set_connected(OfWorkerSlot *slot, bool connected)
{
	SpinLockAcquire(&OfState->mutex);
	slot->connected = connected;
	SpinLockRelease(&OfState->mutex);
}

/*
 * error_class is what roles without pg_read_all_settings see in status():
 * the error without host names, ports or file paths.  NULL: the error
 * itself holds none.
 */
void
of_slot_set_error(OfWorkerSlot *slot, const char *error, const char *error_class)
{
	SpinLockAcquire(&OfState->mutex);
	strlcpy(slot->last_error, error ? error : "", OF_ERROR_LEN);
	strlcpy(slot->error_class, error_class ? error_class : (error ? error : ""),
			OF_STATE_LEN);
	SpinLockRelease(&OfState->mutex);
}

void
of_slot_set_node(OfWorkerSlot *slot, const char *node)
{
	SpinLockAcquire(&OfState->mutex);
	strlcpy(slot->node, node ? node : "", OF_NODE_LEN);
	SpinLockRelease(&OfState->mutex);
}

void
of_slot_add_processed(OfWorkerSlot *slot, uint64 n)
{
	SpinLockAcquire(&OfState->mutex);
	slot->processed += n;
	SpinLockRelease(&OfState->mutex);
}

/* Wake the worker in a slot, if it runs.  Safe from any backend. */
void
of_wake_slot(int slotno)
{
	Latch	   *latch;

	if (OfState == NULL)
		return;
	SpinLockAcquire(&OfState->mutex);
	latch = OfState->slots[slotno].pid != 0 ? OfState->slots[slotno].latch : NULL;
	SpinLockRelease(&OfState->mutex);
	if (latch)
		SetLatch(latch);
}
