/*-------------------------------------------------------------------------
 *
 * amqp_conn.h
 *	  A RabbitMQ connection owned by an ordflow worker: connect with
 *	  timeouts and backoff, declare the topology, wait for frames on the
 *	  latch and the socket together, publish with confirms.
 *	  amqp_conn.c connects, amqp_frames.c reads frames and publishes,
 *	  amqp_topology.c declares, amqp_url.c checks and redacts URLs.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_AMQP_CONN_H
#define ORDFLOW_AMQP_CONN_H

#include <amqp.h>

#include "datatype/timestamp.h"

#define OF_AMQP_CHANNEL 1
#define OF_AMQP_ERRLEN 256
/* How long a broker call may take before the watchdog cuts the socket. */
#define OF_RPC_TIMEOUT_MS 10000
#define OF_AMQP_NODELEN 128		/* as OF_NODE_LEN of a worker slot */
/* Most URLs ordflow.amqp_url may list. */
#define OF_MAX_BROKER_URLS 32

typedef struct OfAmqp
{
	amqp_connection_state_t conn;
	int			fd;
	bool		connected;
	bool		blocked;		/* broker sent connection.blocked */
	bool		confirms;		/* channel is in confirm mode */
	bool		publisher;		/* the relay's: publishes, subscribes to nothing */
	uint64		next_tag;		/* delivery tag of the next publish */
	uint64		acked_upto;		/* every tag <= this was confirmed */
	uint64	   *early_acks;		/* single confirms above acked_upto, unordered */
	int			n_early_acks;
	int			max_early_acks;
	bool		nacked;			/* the broker refused a publish */
	char	   *signature;		/* settings the connection was made with */
	uint64		config_seen;	/* of_config_generation the signature was checked at */
	uint64		generation;		/* bumped by every new connection */
	char		node[OF_AMQP_NODELEN];	/* host:port connected to, or "" */
	/* reconnecting */
	int			backoff_ms;
	TimestampTz next_attempt;
	bool		failing;		/* the last attempt failed (logged once) */
	bool		url_started;	/* url_next was set to the worker's offset */
	int			url_next;		/* element of ordflow.amqp_url to try next */
	int			round_failures; /* attempts failed in a row since the last backoff */
	char	   *tried_signature;	/* settings of the last attempt */
	TimestampTz connected_at;	/* when the current connection was made */
	char		error[OF_AMQP_ERRLEN];
	char		error_class[64];	/* error without host, port or path */
	/*
	 * Reply code of the last channel.close or connection.close the broker
	 * sent (0: none).  Set by the frame reader, cleared by the publisher
	 * when it starts on a new connection; tells a refused publish (403, 404,
	 * 406, ...) from a broker that merely went away.
	 */
	int			close_code;
} OfAmqp;

/* Results of of_amqp_next_frame(). */
typedef enum OfWait
{
	OF_WAIT_FRAME,				/* *frame holds a frame for the caller */
	OF_WAIT_TIMEOUT,
	OF_WAIT_LATCH,				/* latch was set: check interrupts and state */
	OF_WAIT_CONTROL,			/* a control frame (confirm, blocked) was handled */
	OF_WAIT_ERROR				/* connection lost; a->error says why */
} OfWait;

extern bool of_amqp_url_valid(const char *url, char *reason, size_t len);
extern char **of_amqp_url_split(const char *list, int *count);
extern int	of_amqp_url_list_check(const char *list, int *count, char *reason, size_t len);
extern char *of_redact_url(const char *url);
extern char *of_redact_urls_in_text(const char *text);

extern void of_amqp_reply_error(amqp_rpc_reply_t r, const char *what, char *buf, size_t len);
extern bool of_amqp_rpc_ok(OfAmqp *a, const char *what);
extern bool of_amqp_channel_closed_with(amqp_rpc_reply_t r, int reply_code);
extern bool of_amqp_reopen_channel(OfAmqp *a, amqp_channel_t channel);
extern bool of_amqp_declare_topology(OfAmqp *a);
extern bool of_amqp_reserved_queue(const char *name);

extern bool of_amqp_ensure_connected(OfAmqp *a, bool confirms, long *wait_ms);
extern void of_amqp_disconnect(OfAmqp *a, bool graceful);
extern void of_amqp_fail(OfAmqp *a, const char *fmt,...) pg_attribute_printf(2, 3);
extern void of_amqp_set_error_class(OfAmqp *a, const char *fmt);
extern bool of_amqp_settings_changed(OfAmqp *a);

extern OfWait of_amqp_next_frame(OfAmqp *a, amqp_frame_t *frame, long timeout_ms);
extern bool of_amqp_publish(OfAmqp *a, const char *exchange, const char *routing_key,
							const char *body, size_t len,
							amqp_basic_properties_t *props);
extern bool of_amqp_close_is_refusal(int reply_code);
extern void of_amqp_read_close(OfAmqp *a, long timeout_ms);
extern bool of_amqp_ack(OfAmqp *a, uint64 delivery_tag);
extern bool of_amqp_requeue(OfAmqp *a, uint64 delivery_tag);

extern void of_amqp_watchdog_arm(int ms);
extern void of_amqp_watchdog_disarm(void);
extern void of_amqp_sigterm(SIGNAL_ARGS);

#endif							/* ORDFLOW_AMQP_CONN_H */
