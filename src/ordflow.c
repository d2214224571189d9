/*-------------------------------------------------------------------------
 *
 * ordflow.c
 *	  Module entry point: settings, shared memory hooks and the static
 *	  supervisor worker that keeps the rest of the pipeline alive.
 *
 * ordflow must be loaded through shared_preload_libraries: its workers and
 * shared memory exist only then.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <amqp.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "storage/shmem.h"
#include <limits.h>
#include "utils/guc.h"
#include "utils/memutils.h"

#include "amqp_conn.h"
#include "batch_tuning.h"
#include "ordflow.h"
#include "partitions.h"
#include "shmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *ordflow_database = NULL;
char	   *ordflow_amqp_url = NULL;
char	   *ordflow_exchange = NULL;
char	   *ordflow_orders_queue = NULL;
char	   *ordflow_user_events_queue = NULL;
char	   *ordflow_queue_type = NULL;
double		ordflow_generator_rate = 0.5;
int			ordflow_consumers = 1;
int			ordflow_batch_size = 1000;
int			ordflow_relay_batch_size = 5000;
int			ordflow_prefetch = 5000;
int			ordflow_generator_max_backlog = 100000;
int			ordflow_batch_wait_ms = 5;
int			ordflow_heartbeat = 30;
double		ordflow_price_factor_min = 1.1;
double		ordflow_price_factor_max = 2.0;
char	   *ordflow_amqp_tls_ca_file = NULL;
char	   *ordflow_amqp_tls_cert_file = NULL;
char	   *ordflow_amqp_tls_key_file = NULL;
bool		ordflow_amqp_tls_verify = true;
int			ordflow_event_retention = 7 * 24 * 60;
char	   *ordflow_user_events_role = NULL;
int			ordflow_max_message_size = 1024 * 1024;
int			ordflow_batch_max_bytes = 16 * 1024 * 1024;
int			ordflow_dead_letter_retention = 30 * 24 * 3600;
int			ordflow_node_id = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * Validate ordflow.amqp_url, a comma-separated list of URLs.  The default
 * error message of a failing check hook quotes the value, password
 * included, so we always replace it with one that names the bad element
 * and shows it redacted.
 */
static bool
check_amqp_url(char **newval, void **extra, GucSource source)
{
	char		reason[256];
	int			count;
	int			bad;
	char	  **elems;

	bad = of_amqp_url_list_check(*newval, &count, reason, sizeof(reason));
	if (bad == 0)
		return true;

	if (count <= 1 || bad > count)
		GUC_check_errmsg("invalid value for parameter \"ordflow.amqp_url\": %s",
						 count > 1 ? "too many URLs" : of_redact_url(*newval));
	else
	{
		elems = of_amqp_url_split(*newval, &count);
		GUC_check_errmsg("invalid value for parameter \"ordflow.amqp_url\": element %d of %d, %s",
						 bad, count, of_redact_url(elems[bad - 1]));
		for (int i = 0; i < count; i++)
		{
			explicit_bzero(elems[i], strlen(elems[i]));
			pfree(elems[i]);
		}
		pfree(elems);
	}
	GUC_check_errdetail("%s", reason);
	GUC_check_errhint("Use amqp://user:password@host:port/vhost or amqps://... for TLS; "
					  "list the nodes of a cluster as URLs separated by commas.");
	return false;
}

/* Exchange and queue names: AMQP short strings of printable characters. */
static bool
check_amqp_name(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (*newval == NULL || (*newval)[0] == '\0' || strlen(*newval) > 200)
	{
		GUC_check_errdetail("The name must be 1 to 200 characters long.");
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
		{
			GUC_check_errdetail("The name must not contain control characters.");
			return false;
		}
	}
	return true;
}

static bool
check_queue_type(char **newval, void **extra, GucSource source)
{
	if (*newval && (strcmp(*newval, "classic") == 0 || strcmp(*newval, "quorum") == 0))
		return true;
	GUC_check_errdetail("Valid values are \"classic\" and \"quorum\".");
	return false;
}

/* The broker: where it is, how to reach it, the topology ordflow declares. */
static void
define_broker_settings(void)
{
	DefineCustomStringVariable("ordflow.amqp_url",
							   "RabbitMQ broker URL (amqp:// or amqps://).",
							   NULL, &ordflow_amqp_url,
							   "amqp://guest:guest@127.0.0.1:5672/%2f",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_amqp_url, NULL, NULL);
	DefineCustomStringVariable("ordflow.exchange",
							   "Durable topic exchange ordflow declares and publishes to.",
							   NULL, &ordflow_exchange, "ordflow",
							   PGC_SIGHUP, 0, check_amqp_name, NULL, NULL);
	DefineCustomStringVariable("ordflow.orders_queue",
							   "Durable queue bound to order.#.",
							   NULL, &ordflow_orders_queue, "ordflow.orders",
							   PGC_SIGHUP, 0, check_amqp_name, NULL, NULL);
	DefineCustomStringVariable("ordflow.user_events_queue",
							   "Durable queue bound to user.#.",
							   NULL, &ordflow_user_events_queue, "ordflow.user_events",
							   PGC_SIGHUP, 0, check_amqp_name, NULL, NULL);
	DefineCustomStringVariable("ordflow.queue_type",
							   "Type of the queues ordflow declares: classic or quorum.",
							   NULL, &ordflow_queue_type, "classic",
							   PGC_SIGHUP, 0, check_queue_type, NULL, NULL);
	DefineCustomIntVariable("ordflow.heartbeat",
							"AMQP heartbeat interval.",
							NULL, &ordflow_heartbeat, 30, 0, 600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.prefetch",
							"basic.qos prefetch count of each consumer.",
							NULL, &ordflow_prefetch, 5000, 1, 65535,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("ordflow.amqp_tls_ca_file",
							   "CA certificates that verify the broker (amqps://).",
							   NULL, &ordflow_amqp_tls_ca_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("ordflow.amqp_tls_cert_file",
							   "Client certificate presented to the broker (amqps://).",
							   NULL, &ordflow_amqp_tls_cert_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("ordflow.amqp_tls_key_file",
							   "Private key of the client certificate (amqps://).",
							   NULL, &ordflow_amqp_tls_key_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomBoolVariable("ordflow.amqp_tls_verify",
							 "Verify the broker's certificate and host name (amqps://).",
							 "Turning this off is an explicit opt-out; never use it in production.",
							 &ordflow_amqp_tls_verify, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* The workers: their database, their number, their pace and their limits. */
static void
define_pipeline_settings(void)
{
	DefineCustomStringVariable("ordflow.database",
							   "Database the ordflow workers connect to.",
							   NULL, &ordflow_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.node_id",
							"Number of this ordflow database among those sharing a broker.",
							"Ids ordflow makes are node_id << 48 plus a per-node sequence.",
							&ordflow_node_id, 0, 0, OF_MAX_NODE_ID,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	/* partitions first: the check of owned_partitions reads it */
	DefineCustomIntVariable("ordflow.partitions",
							"Number of uid partitions; the same on every node sharing a broker.",
							"A user's partition is uid mod ordflow.partitions.",
							&ordflow_partitions, 1, 1, OF_MAX_PARTITIONS,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("ordflow.owned_partitions",
							   "uid partitions this node holds: all, none, or a list such as 0-3,8.",
							   NULL, &ordflow_owned_partitions, "all",
							   PGC_SIGHUP, 0, of_check_owned_partitions,
							   of_assign_owned_partitions, NULL);
	DefineCustomIntVariable("ordflow.consumers",
							"Number of consumer workers.",
							NULL, &ordflow_consumers, 1, 0, OF_MAX_CONSUMERS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("ordflow.generator_rate",
							 "Orders per second the generator makes when start() is given no rate.",
							 NULL, &ordflow_generator_rate, 0.5, 0.001, OF_MAX_GENERATOR_RATE,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.generator_max_backlog",
							"Generated orders that may wait unprocessed before the generator pauses.",
							"Back-pressure: the generator never outruns the pipeline by more than this. 0 means no limit.",
							&ordflow_generator_max_backlog, 100000, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("ordflow.price_factor_min",
							 "Lower bound of the factor quantity is multiplied by to make a price.",
							 NULL, &ordflow_price_factor_min, 1.1, 0.0, 1e6,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("ordflow.price_factor_max",
							 "Upper bound of the factor quantity is multiplied by to make a price.",
							 NULL, &ordflow_price_factor_max, 2.0, 0.0, 1e6,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.relay_batch_size",
							"Maximum outbox rows the relay publishes in one transaction.",
							NULL, &ordflow_relay_batch_size, 5000, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.batch_size",
							"Maximum messages a consumer processes in one transaction.",
							"1 processes every message in its own transaction (the naive mode).",
							&ordflow_batch_size, 1000, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.batch_wait_ms",
							"How long a consumer waits for more messages to fill a batch.",
							NULL, &ordflow_batch_wait_ms, 5, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.batch_max_bytes",
							"Message bytes at which a consumer batch closes early.",
							NULL, &ordflow_batch_max_bytes, 16 * 1024 * 1024, 65536, MaxAllocSize / 2,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.max_message_size",
							"Largest message body ordflow accepts or publishes.",
							"A larger message is dead-lettered with its first 64 kB and its size.",
							&ordflow_max_message_size, 1024 * 1024, 1024, 256 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomStringVariable("ordflow.user_events_role",
							   "Role whose rights user events from the broker are applied with.",
							   "Empty refuses every user event from the broker. Superuser roles are refused.",
							   &ordflow_user_events_role, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* How long the history and the dead letters are kept. */
static void
define_retention_settings(void)
{
	DefineCustomIntVariable("ordflow.retention",
							"Age after which processed order events and metrics history are deleted.",
							"0 keeps everything.",
							&ordflow_event_retention, 7 * 24 * 60, 0, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_MIN, NULL, NULL, NULL);
	DefineCustomIntVariable("ordflow.dead_letter_retention",
							"Age after which dead letters are deleted.",
							"0 keeps them.",
							&ordflow_dead_letter_retention, 30 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
}

/*
 * Every setting is defined before the prefix is reserved, so that a
 * misspelt ordflow.* setting is reported rather than kept as a placeholder.
 */
static void
define_settings(void)
{
	define_broker_settings();
	define_pipeline_settings();
	of_define_consumer_settings();	/* batch_tuning.c */
	define_retention_settings();

	MarkGUCPrefixReserved("ordflow");
}

/* Replace *field by its redacted copy when it holds a URL with a password. */
static void
redact_field(char **field)
{
	char	   *redacted = of_redact_urls_in_text(*field);

	if (redacted)
		*field = redacted;
}

/*
 * PostgreSQL logs setting values itself ("parameter ... changed to ..."),
 * statements (log_statement, the STATEMENT line of an error) and contexts:
 * keep the broker password out of all of them, whatever characters it has.
 * Runs in every process, the postmaster included.
 */
static void
ordflow_emit_log(ErrorData *edata)
{
	bool		names_url = debug_query_string != NULL &&
		strcasestr(debug_query_string, "amqp_url") != NULL;

	/*
	 * A statement that sets the URL may hold a password in a form no URL
	 * rule recognises (typed without its scheme, say): never show it.
	 */
	if (names_url && edata->message != NULL && debug_query_string[0] != '\0')
	{
		char	   *pos = strstr(edata->message, debug_query_string);

		if (pos != NULL)
			edata->message = psprintf("%.*s(hidden: it names ordflow.amqp_url)%s",
									  (int) (pos - edata->message), edata->message,
									  pos + strlen(debug_query_string));
	}
	/* ... nor the values bound to it (log_statement with the extended protocol) */
	if (names_url && edata->detail != NULL && strncmp(edata->detail, "parameters:", 11) == 0)
		edata->detail = pstrdup("parameters: (hidden: the statement names ordflow.amqp_url)");
	redact_field(&edata->message);
	redact_field(&edata->detail);
	redact_field(&edata->detail_log);
	redact_field(&edata->hint);
	redact_field(&edata->context);
	redact_field(&edata->internalquery);
	/* A statement naming the setting or holding a URL with a password. */
	if (debug_query_string != NULL &&
		(names_url || of_redact_urls_in_text(debug_query_string) != NULL))
		edata->hide_stmt = true;
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
ordflow_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	of_shmem_request();
}

static void
ordflow_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	of_shmem_startup();
}

void
_PG_init(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ordflow can only be loaded via shared_preload_libraries"),
				 errhint("Add ordflow to shared_preload_libraries in postgresql.conf and restart the server.")));

	define_settings();

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = ordflow_emit_log;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ordflow_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ordflow_shmem_startup;

	/* pg_upgrade runs the server with workers that must not touch data. */
	if (IsBinaryUpgrade)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "ordflow");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "ordflow_supervisor_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "ordflow supervisor");
	snprintf(worker.bgw_type, BGW_MAXLEN, "ordflow supervisor");
	RegisterBackgroundWorker(&worker);
}
