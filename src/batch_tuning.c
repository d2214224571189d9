/*-------------------------------------------------------------------------
 *
 * batch_tuning.c
 *	  A consumer's batch size and batch wait, adapted to what it
 *	  sees: large batches while a backlog lasts, no waiting at low rates.
 *
 * Every batch costs a commit (a WAL flush) and an ack whatever its size, so
 * under a backlog the batch should be as large as ordflow.batch_size allows;
 * at a low rate, waiting ordflow.batch_wait_ms for company only delays the
 * message that is there.  So:
 *
 *	 - target: the number of messages to collect.  It doubles every time a
 *	   batch filled up (more was waiting) and halves when a batch came back
 *	   with less than a quarter of it, between OF_BATCH_MIN and
 *	   ordflow.batch_size: quick to grow when a backlog appears, slow to
 *	   shrink, since every cut costs a commit.
 *	 - wait: after the first message, wait for more (up to
 *	   ordflow.batch_wait_ms) only when the recent rate says the wait would
 *	   bring at least OF_BATCH_WAIT_WORTH messages; otherwise take what is
 *	   there at once.  Messages that arrive while a batch is processed make
 *	   the next batch, so batches still grow with the rate.
 *
 * Sharing a queue (ordflow.consumer_priorities, on by default): consumer
 * i subscribes with x-priority -i, and the broker hands a message to the
 * highest-priority consumer that has prefetch room.  So consumer 1 gets
 * work only while consumer 0 holds ordflow.prefetch unacked messages, i.e.
 * cannot keep up, and takes over at once if consumer 0 stops.  Splitting a
 * stream that one consumer keeps up with gains nothing and halves every
 * batch: twice the commits, WAL flushes and acks for the same orders
 * (measured: 2 consumers were slower than 1, bench/RESULTS.md).  Off: the
 * broker spreads messages round-robin (all at priority 0).
 *
 * The prefetch is not adapted: RabbitMQ applies a per-consumer basic.qos
 * only to consumers created after it (changing it means re-subscribing),
 * and the channel-wide (global) one that applies at once makes every
 * delivery ask the channel's limiter: measured here, 50,000-order drains
 * ran at 7-9k orders/s with it against 11.5k without, in batches of ~115
 * instead of ~185 (bench/RESULTS.md).
 * ordflow.prefetch stays what each consumer may hold.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"
#include "utils/timestamp.h"

#include "batch_tuning.h"
#include "ordflow.h"

#define OF_BATCH_MIN			64
#define OF_BATCH_WAIT_WORTH		8.0
/* weight of the newest rate sample in the moving average */
#define OF_RATE_ALPHA			0.3

bool		ordflow_consumer_priorities = true;

void
of_define_consumer_settings(void)
{
	DefineCustomBoolVariable("ordflow.consumer_priorities",
							 "Consumer i subscribes with priority -i: the next consumer gets messages only when those before it are full.",
							 "Off: the broker spreads messages over the consumers round-robin. "
							 "A change reconnects the workers, so the consumers subscribe again with it.",
							 &ordflow_consumer_priorities, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* x-priority of consumer number index */
int
of_consumer_priority(int index)
{
	return ordflow_consumer_priorities ? -index : 0;
}

void
of_batch_tuning_init(OfBatchTuning *t)
{
	memset(t, 0, sizeof(*t));
	t->target = OF_BATCH_MIN;
	t->since = GetCurrentTimestamp();
}

/* Messages to collect now: the target within 1 .. ordflow.batch_size. */
int
of_batch_target(const OfBatchTuning *t)
{
	return Max(1, Min(t->target, ordflow_batch_size));
}

/* How long to wait for more after the first message of a batch. */
long
of_batch_wait_ms(const OfBatchTuning *t)
{
	if (t->rate * ordflow_batch_wait_ms / 1000.0 < OF_BATCH_WAIT_WORTH)
		return 0;
	return ordflow_batch_wait_ms;
}

/*
 * A collection ended with n messages (0: it timed out idle); filled says it
 * stopped because it had all it may take, i.e. more may be waiting.
 */
void
of_batch_observe(OfBatchTuning *t, int n, bool filled)
{
	TimestampTz now = GetCurrentTimestamp();
	double		secs = Max((double) (now - t->since) / USECS_PER_SEC, 0.001);

	t->rate = OF_RATE_ALPHA * (n / secs) + (1 - OF_RATE_ALPHA) * t->rate;
	t->since = now;
	if (filled)
		t->target = Min(t->target * 2, Max(ordflow_batch_size, 1));
	else if (n < t->target / 4)
		t->target = Max(t->target / 2, OF_BATCH_MIN);
	t->target = Min(t->target, Max(ordflow_batch_size, 1));
}
