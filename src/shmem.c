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
#include "shmem.h"

OfShared   *OfState = NULL;

Size
of_shmem_size(void)
{
	return MAXALIGN(sizeof(OfShared));
}

/* From the shmem_request_hook. */
void
of_shmem_request(void)
{
	RequestAddinShmemSpace(of_shmem_size());
	RequestNamedLWLockTranche("ordflow", 1);
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
		OfState->lock = &(GetNamedLWLockTranche("ordflow"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
of_slot_detach(int code, Datum arg)
{
	OfWorkerSlot *slot = (OfWorkerSlot *) DatumGetPointer(arg);
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->latch = NULL;
		slot->connected = false;
		strlcpy(slot->state, "exited", OF_STATE_LEN);
		slot->since = now;
	}
	LWLockRelease(OfState->lock);
}

OfWorkerSlot *
of_slot_attach(int slotno, OfWorkerKind kind, int index)
{
	OfWorkerSlot *slot;
	TimestampTz now;
	pid_t		holder;
	bool		claimed = false;

	Assert(slotno >= 0 && slotno < OF_NUM_SLOTS);
	slot = &OfState->slots[slotno];
	now = GetCurrentTimestamp();

	/*
	 * A restarted supervisor may launch a twin of a worker that still runs.
	 * kill() is a system call, so it happens outside the lock; the slot is
	 * claimed only if its holder is still the one found dead.
	 */
	while (!claimed)
	{
		LWLockAcquire(OfState->lock, LW_SHARED);
		holder = slot->pid;
		LWLockRelease(OfState->lock);
		if (holder != 0 && holder != MyProcPid && kill(holder, 0) == 0)
			return NULL;

		LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
		if (slot->pid == holder)
		{
			slot->kind = kind;
			slot->index = index;
			slot->pid = MyProcPid;
			slot->latch = MyLatch;
			slot->connected = false;
			slot->since = now;
			strlcpy(slot->state, "starting", OF_STATE_LEN);
			slot->processed = 0;
			slot->last_error[0] = '\0';
			slot->error_class[0] = '\0';
			slot->node[0] = '\0';
			slot->partitions[0] = '\0';
			claimed = true;
		}
		LWLockRelease(OfState->lock);
	}

	on_shmem_exit(of_slot_detach, PointerGetDatum(slot));
	return slot;
}

void
of_slot_set_state(OfWorkerSlot *slot, const char *state)
{
	TimestampTz now;

	if (strncmp(slot->state, state, OF_STATE_LEN) == 0)
		return;					/* only the owner writes, so this read is safe */
	now = GetCurrentTimestamp();
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	strlcpy(slot->state, state, OF_STATE_LEN);
	slot->since = now;
	LWLockRelease(OfState->lock);
}

void
of_slot_set_connected(OfWorkerSlot *slot, bool connected)
{
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	slot->connected = connected;
	LWLockRelease(OfState->lock);
}

/*
 * error_class is what roles without pg_read_all_settings see in status():
 * the error without host names, ports or file paths.  NULL: the error
 * itself holds none.
 */
void
of_slot_set_error(OfWorkerSlot *slot, const char *error, const char *error_class)
{
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	strlcpy(slot->last_error, error ? error : "", OF_ERROR_LEN);
	strlcpy(slot->error_class, error_class ? error_class : (error ? error : ""),
			OF_STATE_LEN);
	LWLockRelease(OfState->lock);
}

void
of_slot_set_node(OfWorkerSlot *slot, const char *node)
{
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	strlcpy(slot->node, node ? node : "", OF_NODE_LEN);
	LWLockRelease(OfState->lock);
}

void
of_slot_set_partitions(OfWorkerSlot *slot, const char *partitions)
{
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	strlcpy(slot->partitions, partitions ? partitions : "", OF_PARTITIONS_LEN);
	LWLockRelease(OfState->lock);
}

void
of_slot_add_processed(OfWorkerSlot *slot, uint64 n)
{
	LWLockAcquire(OfState->lock, LW_EXCLUSIVE);
	slot->processed += n;
	LWLockRelease(OfState->lock);
}

/* Wake the worker in a slot, if it runs.  Safe from any backend. */
void
of_wake_slot(int slotno)
{
	Latch	   *latch;

	if (OfState == NULL)
		return;
	LWLockAcquire(OfState->lock, LW_SHARED);
	latch = OfState->slots[slotno].pid != 0 ? OfState->slots[slotno].latch : NULL;
	LWLockRelease(OfState->lock);
	if (latch)
		SetLatch(latch);
}
