/*-------------------------------------------------------------------------
 *
 * partitions.c
 *	  uid partitions: a user's partition is uid mod ordflow.partitions; an
 *	  order without a uid belongs to the partition of its order_id.  Each
 *	  node holds the partitions ordflow.owned_partitions lists ("all", or
 *	  numbers and ranges such as "0-3,8").
 *
 * The SQL side (partition_of(), _owned_partitions()) calls the same C code
 * as the workers, so there is one definition of both.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/guc.h"

#include "partitions.h"

PG_FUNCTION_INFO_V1(ordflow_partition_of);
PG_FUNCTION_INFO_V1(ordflow_owned_partition_list);

int			ordflow_partitions = 1;
char	   *ordflow_owned_partitions = NULL;

/* The parsed ordflow.owned_partitions (a GUC "extra", malloc'd). */
typedef struct OwnedPartitions
{
	bool		all;
	bool		owned[OF_MAX_PARTITIONS];
} OwnedPartitions;

static OwnedPartitions *owned = NULL;

/* Parse one number of the list; false if there is none or it is too big. */
static bool
parse_number(const char **p, int *value)
{
	long		v = 0;

	if (**p < '0' || **p > '9')
		return false;
	while (**p >= '0' && **p <= '9')
	{
		v = v * 10 + (**p - '0');
		if (v >= OF_MAX_PARTITIONS)
			return false;
		(*p)++;
	}
	*value = (int) v;
	return true;
}

static void
skip_spaces(const char **p)
{
	while (**p == ' ' || **p == '\t')
		(*p)++;
}

/*
 * "all", "none" (or empty: a node that holds nothing yet), or a
 * comma-separated list of partitions and ranges lo-hi, each below
 * ordflow.partitions (defined before this setting, and fixed at
 * server start, so known here).
 */
bool
of_check_owned_partitions(char **newval, void **extra, GucSource source)
{
	OwnedPartitions *result;
	const char *p = *newval;

	/* PostgreSQL frees a GUC's extra with free() */
	result = (OwnedPartitions *) malloc(sizeof(OwnedPartitions));
	if (result == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		return false;
	}
	memset(result, 0, sizeof(*result));
	skip_spaces(&p);
	if (pg_strcasecmp(p, "all") == 0)
	{
		result->all = true;
		*extra = result;
		return true;
	}
	if (*p == '\0' || pg_strcasecmp(p, "none") == 0)
	{
		*extra = result;
		return true;
	}
	for (;;)
	{
		int			lo,
					hi;

		skip_spaces(&p);
		if (!parse_number(&p, &lo))
			break;
		hi = lo;
		skip_spaces(&p);
		if (*p == '-')
		{
			p++;
			skip_spaces(&p);
			if (!parse_number(&p, &hi))
				break;
			skip_spaces(&p);
		}
		if (hi < lo)
		{
			GUC_check_errdetail("The range %d-%d is empty: write the lower partition first.", lo, hi);
			free(result);
			return false;
		}
		if (hi >= ordflow_partitions)
		{
			GUC_check_errdetail("Partition %d is out of range: ordflow.partitions is %d, so partitions are 0 to %d.",
								hi, ordflow_partitions, ordflow_partitions - 1);
			free(result);
			return false;
		}
		for (int i = lo; i <= hi; i++)
			result->owned[i] = true;
		if (*p == '\0')
		{
			*extra = result;
			return true;
		}
		if (*p != ',')
			break;
		p++;
	}
	GUC_check_errdetail("The value is \"all\", \"none\" or a comma-separated list of partitions and ranges, such as \"0-3,8\".");
	free(result);
	return false;
}

void
of_assign_owned_partitions(const char *newval, void *extra)
{
	owned = (OwnedPartitions *) extra;
}

/* The partition of a uid (or of an order_id, for an order without uid). */
int
of_partition_of(int64 key)
{
	int64		r = key % ordflow_partitions;

	return (int) (r < 0 ? r + ordflow_partitions : r);
}

bool
of_partition_owned(int p)
{
	if (p < 0 || p >= ordflow_partitions)
		return false;
	return owned == NULL || owned->all || owned->owned[p];
}

/* The owned partitions in ascending order into out[]; returns how many. */
int
of_owned_partition_list(int *out)
{
	int			n = 0;

	for (int p = 0; p < ordflow_partitions; p++)
		if (of_partition_owned(p))
			out[n++] = p;
	return n;
}

Datum
ordflow_partition_of(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(of_partition_of(PG_GETARG_INT64(0)));
}

/* ordflow._owned_partitions(): the partitions this node holds, ascending. */
Datum
ordflow_owned_partition_list(PG_FUNCTION_ARGS)
{
	int		   *list = palloc(sizeof(int) * ordflow_partitions);
	Datum	   *elems = palloc(sizeof(Datum) * ordflow_partitions);
	int			n = of_owned_partition_list(list);

	for (int i = 0; i < n; i++)
		elems[i] = Int32GetDatum(list[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}
