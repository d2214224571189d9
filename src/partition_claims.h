/*-------------------------------------------------------------------------
 *
 * partition_claims.h
 *	  A consumer's share of the partitions its node owns: claimed through
 *	  exclusive queues <exchange>.owner.<p>, then consumed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_PARTITION_CLAIMS_H
#define ORDFLOW_PARTITION_CLAIMS_H

#include "amqp_conn.h"
#include "partitions.h"
#include "shmem.h"

typedef struct OfClaims
{
	int			n;				/* partitions assigned to this consumer */
	int			partition[OF_MAX_PARTITIONS];
	bool		held[OF_MAX_PARTITIONS];	/* by index into partition[] */
	bool		skip_logged[OF_MAX_PARTITIONS];
	TimestampTz next_retry;		/* when to try the skipped ones again */
} OfClaims;

extern bool of_claims_start(OfAmqp *a, OfClaims *c, OfWorkerSlot *slot);
extern bool of_claims_retry(OfAmqp *a, OfClaims *c, OfWorkerSlot *slot);

#endif							/* ORDFLOW_PARTITION_CLAIMS_H */
