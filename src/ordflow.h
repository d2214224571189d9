/*-------------------------------------------------------------------------
 *
 * ordflow.h
 *	  Settings and constants of the ordflow module, and the entry points
 *	  of its background workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_H
#define ORDFLOW_H

#include "postgres.h"


/* ---- settings (src/ordflow.c) ---- */
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

/* ---- worker entry points ---- */
extern PGDLLEXPORT void ordflow_supervisor_main(Datum main_arg);
extern PGDLLEXPORT void ordflow_generator_main(Datum main_arg);
extern PGDLLEXPORT void ordflow_relay_main(Datum main_arg);
extern PGDLLEXPORT void ordflow_consumer_main(Datum main_arg);

#endif							/* ORDFLOW_H */
