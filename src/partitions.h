/*-------------------------------------------------------------------------
 *
 * partitions.h
 *	  uid partitions: which partition a user or an order belongs to, and
 *	  which of them this node holds (ordflow.partitions,
 *	  ordflow.owned_partitions).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_PARTITIONS_H
#define ORDFLOW_PARTITIONS_H

#include "utils/guc.h"

/* Upper bound of ordflow.partitions. */
#define OF_MAX_PARTITIONS	1024

extern int	ordflow_partitions;
extern char *ordflow_owned_partitions;

extern bool of_check_owned_partitions(char **newval, void **extra, GucSource source);
extern void of_assign_owned_partitions(const char *newval, void *extra);

extern int	of_partition_of(int64 key);
extern bool of_partition_owned(int p);
extern int	of_owned_partition_list(int *out);

#endif							/* ORDFLOW_PARTITIONS_H */
