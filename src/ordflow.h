/*-------------------------------------------------------------------------
 *
 * ordflow.h
 *	  Declarations shared by the ordflow module: settings, shared state and
 *	  the entry points of the background workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_H
#define ORDFLOW_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

/* ---- settings (ordflow.c) ---- */
extern char *ordflow_database;
extern char *ordflow_amqp_url;
extern char *ordflow_exchange;
extern char *ordflow_orders_queue;
extern char *ordflow_user_events_queue;
extern char *ordflow_queue_type;
extern double ordflow_generator_rate;
extern int	ordflow_consumers;
extern int	ordflow_batch_size;
extern int	ordflow_relay_batch_size;
extern int	ordflow_prefetch;
extern int	ordflow_generator_max_backlog;
extern int	ordflow_batch_wait_ms;
extern int	ordflow_heartbeat;
extern double ordflow_price_factor_min;
extern double ordflow_price_factor_max;
extern char *ordflow_amqp_tls_ca_file;
extern char *ordflow_amqp_tls_cert_file;
extern char *ordflow_amqp_tls_key_file;
extern bool ordflow_amqp_tls_verify;
extern int	ordflow_event_retention;	/* minutes; 0 keeps everything */
extern char *ordflow_user_events_role;	/* '' refuses broker user events */
extern int	ordflow_max_message_size;	/* bytes */
extern int	ordflow_batch_max_bytes;	/* bytes */
extern int	ordflow_dead_letter_retention;	/* seconds; 0 keeps everything */
extern int	ordflow_node_id;		/* 0..OF_MAX_NODE_ID */

/* Highest ordflow.node_id: ids are node_id << 48 plus a per-node sequence. */
#define OF_MAX_NODE_ID		1023
#define OF_NODE_ID_SHIFT	48
/* A dead letter keeps at most this much of an oversized message. */
#define OF_DEAD_LETTER_KEEP	65536

/* Upper bound of ordflow.consumers; sizes shared memory. */
#define OF_MAX_CONSUMERS	32
/* Highest generator rate start() accepts, orders per second. */
#define OF_MAX_GENERATOR_RATE	1000000.0

/* Bumped by every SIGHUP reload a worker processes (worker_common.c). */
extern uint64 of_config_generation;

/* ---- shared state (src/shmem.c) ---- */
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
extern void of_slot_add_processed(OfWorkerSlot *slot, uint64 n);
extern void of_wake_slot(int slotno);

/* ---- latency histogram (src/metrics.c) ---- */
#define OF_HIST_BUCKETS 256
extern int	of_latency_bucket(double ms);

/* ---- worker entry points ---- */
extern PGDLLEXPORT void ordflow_supervisor_main(Datum main_arg);
extern PGDLLEXPORT void ordflow_generator_main(Datum main_arg);
extern PGDLLEXPORT void ordflow_relay_main(Datum main_arg);
extern PGDLLEXPORT void ordflow_consumer_main(Datum main_arg);

#endif							/* ORDFLOW_H */
