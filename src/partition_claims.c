/*-------------------------------------------------------------------------
 *
 * partition_claims.c
 *	  Holding uid partitions (ordflow.partitions > 1).
 *
 * The owned partitions are dealt out to the node's consumers in turn
 * (the i-th owned partition to consumer i mod ordflow.consumers), so each
 * partition queue has one consumer on its node.  Before consuming the queue
 * of partition p, the consumer declares the exclusive queue
 * <exchange>.owner.<p> on its connection: the broker lets one connection
 * hold it, and drops it with the connection.  So holding a partition and
 * consuming its queue start and end together, and a second node that lists
 * the partition is refused (405 RESOURCE_LOCKED); it logs that, skips the
 * partition and tries again every few seconds, which is also how a moved
 * partition is taken over once its old owner let it go.
 *
 * The claims use a second channel: a refusal closes the channel it came on,
 * and the deliveries on the first must go on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "message_reader.h"
#include "ordflow.h"
#include "partition_claims.h"

#define CLAIM_CHANNEL		2
/* How often a consumer tries again for a partition another node held. */
#define CLAIM_RETRY_MS		3000

typedef enum ClaimResult
{
	CLAIM_HELD,
	CLAIM_REFUSED,				/* another connection holds it */
	CLAIM_FAILED				/* the connection failed; a->error says why */
} ClaimResult;

static ClaimResult
claim(OfAmqp *a, int p)
{
	char	   *owner = psprintf("%s.owner.%d", ordflow_exchange, p);
	amqp_rpc_reply_t r;

	/* not durable, exclusive, auto-delete: it lives as long as we do */
	amqp_queue_declare(a->conn, CLAIM_CHANNEL, amqp_cstring_bytes(owner), 0, 0, 1, 1,
					   amqp_empty_table);
	r = amqp_get_rpc_reply(a->conn);
	pfree(owner);
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return CLAIM_HELD;
	if (of_amqp_channel_closed_with(r, AMQP_RESOURCE_LOCKED))
		return of_amqp_reopen_channel(a, CLAIM_CHANNEL) ? CLAIM_REFUSED : CLAIM_FAILED;
	of_amqp_reply_error(r, psprintf("claiming partition %d", p), a->error, sizeof(a->error));
	of_amqp_set_error_class(a, "claiming a partition");
	return CLAIM_FAILED;
}

static bool
consume_partition(OfAmqp *a, int p)
{
	char	   *queue = psprintf("%s.%d", ordflow_orders_queue, p);
	char	   *tag = psprintf("%s%d", OF_TAG_PARTITION, p);

	amqp_basic_consume(a->conn, OF_AMQP_CHANNEL, amqp_cstring_bytes(queue),
					   amqp_cstring_bytes(tag), 0, 0, 0, amqp_empty_table);
	return of_amqp_rpc_ok(a, psprintf("consuming from queue \"%s\"", queue));
}

/* "0,2,5" of the partitions held, for status(). */
static void
show_held(OfClaims *c, OfWorkerSlot *slot)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < c->n; i++)
		if (c->held[i])
			appendStringInfo(&buf, "%s%d", buf.len > 0 ? "," : "", c->partition[i]);
	if (buf.len >= OF_PARTITIONS_LEN)
		strcpy(buf.data + OF_PARTITIONS_LEN - 4, "...");
	of_slot_set_partitions(slot, buf.data);
	pfree(buf.data);
}

/* Claim and consume every assigned partition not held yet. */
static bool
claim_missing(OfAmqp *a, OfClaims *c, OfWorkerSlot *slot)
{
	bool		changed = false;

	for (int i = 0; i < c->n; i++)
	{
		int			p = c->partition[i];

		if (c->held[i])
			continue;
		switch (claim(a, p))
		{
			case CLAIM_FAILED:
				return false;
			case CLAIM_REFUSED:
				if (!c->skip_logged[i])
					ereport(LOG,
							(errmsg("ordflow: partition %d is held by another node; skipping it", p),
							 errdetail("Another connection holds the exclusive queue \"%s.owner.%d\".",
									   ordflow_exchange, p),
							 errhint("Each partition may be listed in ordflow.owned_partitions of one node only. This node takes it over when the other lets it go.")));
				c->skip_logged[i] = true;
				break;
			case CLAIM_HELD:
				if (!consume_partition(a, p))
					return false;
				if (c->skip_logged[i])
					ereport(LOG, (errmsg("ordflow: partition %d is held by this node now", p)));
				c->held[i] = true;
				changed = true;
				break;
		}
	}
	if (changed)
		show_held(c, slot);
	c->next_retry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CLAIM_RETRY_MS);
	return true;
}

/* On a new connection: work out this consumer's share and claim it. */
bool
of_claims_start(OfAmqp *a, OfClaims *c, OfWorkerSlot *slot)
{
	int		   *owned;
	int			nowned;
	int			consumers = Max(ordflow_consumers, 1);

	memset(c, 0, sizeof(*c));
	of_slot_set_partitions(slot, "");
	if (ordflow_partitions <= 1)
		return true;
	owned = palloc(sizeof(int) * OF_MAX_PARTITIONS);
	nowned = of_owned_partition_list(owned);
	for (int i = slot->index; i < nowned; i += consumers)
		c->partition[c->n++] = owned[i];
	pfree(owned);
	if (c->n == 0)
		return true;
	amqp_channel_open(a->conn, CLAIM_CHANNEL);
	if (!of_amqp_rpc_ok(a, "opening the claims channel"))
		return false;
	return claim_missing(a, c, slot);
}

/* Now and then: try again for the partitions another node held. */
bool
of_claims_retry(OfAmqp *a, OfClaims *c, OfWorkerSlot *slot)
{
	bool		missing = false;

	for (int i = 0; i < c->n; i++)
		missing |= !c->held[i];
	if (!missing || GetCurrentTimestamp() < c->next_retry)
		return true;
	return claim_missing(a, c, slot);
}
