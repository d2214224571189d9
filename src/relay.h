/*-------------------------------------------------------------------------
 *
 * relay.h
 *	  The relay worker's state, shared by its three files: relay.c (the
 *	  main loop), relay_outbox.c (reading, validating and deleting outbox
 *	  rows, dead letters) and relay_broker.c (the window of chunks in
 *	  flight: publishing, confirms, refusals).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_RELAY_H
#define ORDFLOW_RELAY_H

#include "datatype/timestamp.h"

#include "amqp_conn.h"
#include "shmem.h"

/* How long the broker may go without confirming anything we sent. */
#define RELAY_CONFIRM_TIMEOUT_MS	15000
/* Chunks in flight at once. */
#define RELAY_WINDOW				2
/* A suspect row is dead-lettered when refused this often over this long. */
#define RELAY_REFUSALS				3
#define RELAY_REFUSAL_MS			5000

typedef enum OutboxKind
{
	KIND_ORDER,
	KIND_REPLY,
	KIND_RETRY,
	KIND_FORWARD				/* like KIND_RETRY, from a consumer */
} OutboxKind;

/* One outbox row, ready to publish (or to dead-letter). */
typedef struct RelayMsg
{
	int64		id;
	OutboxKind	kind;
	int64		order_id;		/* kind order */
	/* as stored, in the database encoding (for a dead letter); may be NULL */
	char	   *db_routing_key;
	char	   *db_message_id;
	char	   *db_correlation_id;
	char	   *db_reply_to;
	/* as published, UTF-8 */
	const char *exchange;
	char	   *routing_key;
	char	   *message_id;
	char	   *correlation_id;
	char	   *reply_to;
	char	   *body;			/* at most OF_DEAD_LETTER_KEEP bytes if error */
	size_t		len;
	int64		size;			/* the whole body's size */
	char	   *error;			/* why it may not be published, or NULL */
} RelayMsg;

typedef struct RelayChunk
{
	MemoryContext cxt;			/* msgs and everything they point to */
	RelayMsg   *msgs;
	int			n;
	int			published;		/* msgs[0 .. published) were sent */
	uint64		first_tag;		/* delivery tag of msgs[0] */
	int64		lo;				/* id range the read covered */
	int64		hi;
	bool		full;			/* the read may have left rows behind */
} RelayChunk;

typedef struct Relay
{
	OfAmqp		a;
	OfWorkerSlot *slot;
	RelayChunk	window[RELAY_WINDOW];
	int			nchunks;
	uint64		generation;		/* connection the window is published on */
	uint64		acked_seen;		/* a.acked_upto when progress_at was set */
	TimestampTz progress_at;	/* last publish or confirm */
	bool		suspect;		/* one row at a time, up to suspect_hi */
	int64		suspect_hi;
	int64		refused_id;		/* the suspect row refused last ... */
	int			refusals;		/* ... this many times in a row ... */
	TimestampTz first_refusal;	/* ... since then */
	bool		extension_gone; /* DROP EXTENSION ordflow happened: exit */
	/* when to look at the outbox again */
	bool		woken;			/* the latch was set (a commit) since the last read */
	bool		more;			/* the last read left rows behind */
	TimestampTz last_read_at;
} Relay;

/* relay_outbox.c */
extern bool of_relay_read_chunk(Relay *r, RelayChunk *c, int limit);
extern void of_relay_delete_chunk(RelayChunk *c);
extern void of_relay_dead_letter_refused(RelayMsg *m, const char *error);

/* relay_broker.c */
extern RelayChunk *of_relay_unpublished_chunk(Relay *r);
extern void of_relay_publish_some(Relay *r, RelayChunk *c);
extern void of_relay_poll_frames(Relay *r);
extern void of_relay_drop_chunk(Relay *r, int i);
extern void of_relay_complete_chunks(Relay *r);
extern void of_relay_window_failed(Relay *r);

#endif							/* ORDFLOW_RELAY_H */
