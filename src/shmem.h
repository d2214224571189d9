/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared state of the ordflow workers: one slot per worker, the
 *	  generator's run flag and rate, and counters, under one LWLock.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_SHMEM_H
#define ORDFLOW_SHMEM_H

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#include "ordflow.h"

typedef enum OfWorkerKind
{
	OF_WORKER_NONE = 0,
	OF_WORKER_SUPERVISOR,
	OF_WORKER_GENERATOR,
	OF_WORKER_RELAY,
	OF_WORKER_CONSUMER
} OfWorkerKind;

/* Fixed slots: 0 supervisor, 1 generator, 2 relay, 3.. consumers. */
#define OF_SLOT_SUPERVISOR	0
#define OF_SLOT_GENERATOR	1
#define OF_SLOT_RELAY		2
#define OF_SLOT_CONSUMER0	3
#define OF_NUM_SLOTS		(OF_SLOT_CONSUMER0 + OF_MAX_CONSUMERS)

#define OF_STATE_LEN		64
#define OF_ERROR_LEN		256
#define OF_NODE_LEN			128
#define OF_PARTITIONS_LEN	128

typedef struct OfWorkerSlot
{
	OfWorkerKind kind;
	int			index;			/* consumer number, else 0 */
	pid_t		pid;			/* 0 while not running */
	Latch	   *latch;			/* to wake the worker; NULL while not running */
	bool		connected;		/* broker connection is up */
	TimestampTz since;			/* when "state" was entered */
	char		state[OF_STATE_LEN];
	uint64		processed;		/* messages handled (published/consumed/made) */
	char		last_error[OF_ERROR_LEN];
	char		error_class[OF_STATE_LEN];	/* last_error without host, port or path */
	char		node[OF_NODE_LEN];	/* broker host:port connected to, or "" */
	char		partitions[OF_PARTITIONS_LEN];	/* consumer: partitions it holds, e.g. "0,2" */
} OfWorkerSlot;

typedef struct OfShared
{
	LWLock	   *lock;			/* protects everything below */
	bool		gen_loaded;		/* run state read from ordflow.generator_state */
	bool		gen_running;
	double		gen_rate;		/* orders per second; <= 0 means use the GUC */
	uint32		gen_version;	/* bumped on every change, so the generator resets its bucket */
	uint32		truncate_version;	/* bumped by truncate(), so workers drop caches */
	uint64		orders_generated;	/* by the generator, since shared memory was made */
	uint64		generated_processed;	/* of those, processed by the consumers */
	OfWorkerSlot slots[OF_NUM_SLOTS];
} OfShared;

extern OfShared *OfState;

extern void of_shmem_request(void);
extern void of_shmem_startup(void);
extern Size of_shmem_size(void);

/* Claim and release a slot for the calling worker process. */
extern OfWorkerSlot *of_slot_attach(int slotno, OfWorkerKind kind, int index);
extern void of_slot_set_state(OfWorkerSlot *slot, const char *state);
extern void of_slot_set_connected(OfWorkerSlot *slot, bool connected);
extern void of_slot_set_error(OfWorkerSlot *slot, const char *error,
							  const char *error_class);
extern void of_slot_set_node(OfWorkerSlot *slot, const char *node);
extern void of_slot_set_partitions(OfWorkerSlot *slot, const char *partitions);
extern void of_slot_add_processed(OfWorkerSlot *slot, uint64 n);
extern void of_wake_slot(int slotno);

#endif							/* ORDFLOW_SHMEM_H */
