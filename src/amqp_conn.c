/*-------------------------------------------------------------------------
 *
 * amqp_conn.c
 *	  The broker connection of an ordflow worker: opening it (TLS, login,
 *	  channel, topology), the rounds over the URL list with backoff, and
 *	  the watchdog that gets a worker out of a blocked library call.
 *	  Frames and publishing are in amqp_frames.c.
 *
 * librabbitmq blocks in poll() and retries on EINTR, so a signal alone never
 * gets a worker out of a stuck call (a publish into a broker that stopped
 * reading under a memory alarm, say).  Two things guarantee it does:
 * SIGTERM shuts the socket down, and a watchdog timer armed around every
 * call that may block does the same when it fires.  A dead socket makes the
 * library return at once with an error, and the worker goes on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "batch_tuning.h"
#include "ordflow.h"
#include "partitions.h"
#include "worker_common.h"

#define OF_CONNECT_TIMEOUT_MS	5000
#define OF_BACKOFF_MIN_MS		500
#define OF_BACKOFF_MAX_MS		30000
#define OF_FRAME_MAX			131072
/* A connection lost sooner than this after it was made counts as a failed attempt. */
#define OF_STABLE_MS			5000

/* Socket the signal handlers may shut down; -1 when none. */
static volatile int of_watch_fd = -1;
static TimeoutId of_watchdog_id = MAX_TIMEOUTS;

static void
of_watchdog_handler(void)
{
	int			fd = of_watch_fd;

	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

void
of_amqp_watchdog_arm(int ms)
{
	if (of_watchdog_id == MAX_TIMEOUTS)
		of_watchdog_id = RegisterTimeout(USER_TIMEOUT, of_watchdog_handler);
	enable_timeout_after(of_watchdog_id, ms);
}

void
of_amqp_watchdog_disarm(void)
{
	if (of_watchdog_id != MAX_TIMEOUTS)
		disable_timeout(of_watchdog_id, false);
}

/* SIGTERM: the usual die(), plus cut the socket so no library call lingers. */
void
of_amqp_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;
	int			fd = of_watch_fd;

	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
	errno = save_errno;
	die(postgres_signal_arg);
}

/* Everything a connection depends on; a change means reconnect. */
static char *
settings_signature(const OfAmqp *a)
{
	/*
	 * A consumer's subscriptions depend on the last four: its prefetch, its
	 * priority and, with partitions, which of them it holds.  The relay
	 * ignores them: reconnecting it would publish its unconfirmed messages
	 * a second time, for nothing, whenever a partition moves.
	 */
	bool		subscriber = !a->publisher;
	bool		partitioned = subscriber && ordflow_partitions > 1;

	return psprintf("%s|%s|%s|%s|%s|%s|%s|%s|%d|%d|%d|%d|%s|%d",
					ordflow_amqp_url, ordflow_exchange, ordflow_orders_queue,
					ordflow_user_events_queue, ordflow_queue_type,
					ordflow_amqp_tls_ca_file, ordflow_amqp_tls_cert_file,
					ordflow_amqp_tls_key_file, (int) ordflow_amqp_tls_verify,
					ordflow_heartbeat,
					subscriber ? ordflow_prefetch : 0,
					subscriber ? (int) ordflow_consumer_priorities : 0,
					partitioned ? ordflow_owned_partitions : "",
					partitioned ? ordflow_consumers : 0);
}

bool
of_amqp_settings_changed(OfAmqp *a)
{
	char	   *sig;
	bool		changed;

	/* Settings change only on reload: no work on the hot path otherwise. */
	if (a->signature == NULL || a->config_seen == of_config_generation)
		return false;
	a->config_seen = of_config_generation;
	sig = settings_signature(a);
	changed = strcmp(sig, a->signature) != 0;
	pfree(sig);
	return changed;
}

/* ---- errors ---- */

/*
 * The class of an error is the constant text of its message, before the
 * first value filled in: "could not connect to %s:%d: %s" gives "could not
 * connect to".  It is what status() shows roles that may not see host
 * names, ports and file paths.
 */
void
of_amqp_set_error_class(OfAmqp *a, const char *fmt)
{
	size_t		n = strcspn(fmt, "%");

	while (n > 0 && strchr(" :\"'(", fmt[n - 1]) != NULL)
		n--;
	n = Min(n, sizeof(a->error_class) - 1);
	memcpy(a->error_class, fmt, n);
	a->error_class[n] = '\0';
}

void
of_amqp_fail(OfAmqp *a, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	vsnprintf(a->error, sizeof(a->error), fmt, args);
	va_end(args);
	of_amqp_set_error_class(a, fmt);
	a->connected = false;
}

/*
 * A socket for the URL's scheme: TLS for amqps://, set up from the
 * ordflow.amqp_tls_* settings, plain TCP otherwise.  NULL (with a->error
 * set) when it cannot be made.
 */
static amqp_socket_t *
new_socket(OfAmqp *a, const struct amqp_connection_info *info)
{
	amqp_socket_t *sock;

	if (info->ssl)
	{
		sock = amqp_ssl_socket_new(a->conn);
		if (sock == NULL)
		{
			of_amqp_fail(a, "could not create a TLS socket");
			return NULL;
		}
		amqp_ssl_socket_set_verify_peer(sock, ordflow_amqp_tls_verify);
		amqp_ssl_socket_set_verify_hostname(sock, ordflow_amqp_tls_verify);
		if (ordflow_amqp_tls_ca_file[0] != '\0' &&
			amqp_ssl_socket_set_cacert(sock, ordflow_amqp_tls_ca_file) != AMQP_STATUS_OK)
		{
			of_amqp_fail(a, "could not load ordflow.amqp_tls_ca_file \"%s\"",
						 ordflow_amqp_tls_ca_file);
			return NULL;
		}
		if (ordflow_amqp_tls_verify && ordflow_amqp_tls_ca_file[0] == '\0')
		{
			of_amqp_fail(a, "amqps:// needs ordflow.amqp_tls_ca_file to verify the broker (or ordflow.amqp_tls_verify = off)");
			return NULL;
		}
		if (ordflow_amqp_tls_cert_file[0] != '\0' &&
			amqp_ssl_socket_set_key(sock, ordflow_amqp_tls_cert_file,
									ordflow_amqp_tls_key_file) != AMQP_STATUS_OK)
		{
			of_amqp_fail(a, "could not load the client certificate \"%s\" or its key",
						 ordflow_amqp_tls_cert_file);
			return NULL;
		}
	}
	else
		sock = amqp_tcp_socket_new(a->conn);
	if (sock == NULL)
		of_amqp_fail(a, "could not create a socket");
	return sock;
}

/*
 * Log in, announcing the capabilities we rely on: connection.blocked so a
 * memory alarm is seen, not suffered, publisher confirms, consumer cancel
 * notifications and a close (not a dropped socket) on a failed login.
 */
static bool
broker_login(OfAmqp *a, const struct amqp_connection_info *info)
{
	amqp_table_entry_t caps[4];
	amqp_table_entry_t props[1];
	amqp_table_t client_props;
	amqp_rpc_reply_t r;

	caps[0].key = amqp_cstring_bytes("connection.blocked");
	caps[1].key = amqp_cstring_bytes("publisher_confirms");
	caps[2].key = amqp_cstring_bytes("consumer_cancel_notify");
	caps[3].key = amqp_cstring_bytes("authentication_failure_close");
	for (int i = 0; i < 4; i++)
	{
		caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
		caps[i].value.value.boolean = 1;
	}
	props[0].key = amqp_cstring_bytes("capabilities");
	props[0].value.kind = AMQP_FIELD_KIND_TABLE;
	props[0].value.value.table.entries = caps;
	props[0].value.value.table.num_entries = 4;
	client_props.entries = props;
	client_props.num_entries = 1;

	r = amqp_login_with_properties(a->conn, info->vhost, 0, OF_FRAME_MAX,
								   ordflow_heartbeat, &client_props,
								   AMQP_SASL_METHOD_PLAIN, info->user, info->password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
	{
		of_amqp_reply_error(r, "login", a->error, sizeof(a->error));
		of_amqp_set_error_class(a, "login");
		a->connected = false;
		return false;
	}
	return true;
}

/* The channel, the topology, and confirm mode if the worker publishes. */
static bool
open_channel(OfAmqp *a, bool confirms)
{
	amqp_channel_open(a->conn, OF_AMQP_CHANNEL);
	if (!of_amqp_rpc_ok(a, "opening a channel"))
		return false;
	if (!of_amqp_declare_topology(a))
		return false;
	if (confirms)
	{
		amqp_confirm_select(a->conn, OF_AMQP_CHANNEL);
		if (!of_amqp_rpc_ok(a, "enabling publisher confirms"))
			return false;
		a->confirms = true;
		a->next_tag = 1;
		a->acked_upto = 0;
		a->n_early_acks = 0;
		a->nacked = false;
	}
	return true;
}

/* url: a writable copy of the URL, which amqp_parse_url() cuts up */
static bool
open_connection(OfAmqp *a, bool confirms, char *url)
{
	struct amqp_connection_info info;
	amqp_socket_t *sock;
	struct timeval tv;
	int			status;

	amqp_default_connection_info(&info);
	if (amqp_parse_url(url, &info) != AMQP_STATUS_OK)
	{
		of_amqp_fail(a, "ordflow.amqp_url is not a valid URL");
		return false;
	}

	a->conn = amqp_new_connection();
	if (a->conn == NULL)
	{
		of_amqp_fail(a, "out of memory creating a broker connection");
		return false;
	}
	if ((sock = new_socket(a, &info)) == NULL)
		return false;

	tv.tv_sec = OF_CONNECT_TIMEOUT_MS / 1000;
	tv.tv_usec = 0;
	status = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
	if (status != AMQP_STATUS_OK)
	{
		of_amqp_fail(a, "could not connect to %s:%d: %s", info.host, info.port,
					 amqp_error_string2(status));
		return false;
	}
	a->fd = amqp_get_sockfd(a->conn);
	of_watch_fd = a->fd;

	amqp_set_handshake_timeout(a->conn, &tv);
	tv.tv_sec = OF_RPC_TIMEOUT_MS / 1000;
	amqp_set_rpc_timeout(a->conn, &tv);

	if (!broker_login(a, &info) || !open_channel(a, confirms))
		return false;
	if (strchr(info.host, ':') != NULL)
		snprintf(a->node, sizeof(a->node), "[%s]:%d", info.host, info.port);
	else
		snprintf(a->node, sizeof(a->node), "%s:%d", info.host, info.port);
	a->connected = true;
	a->blocked = false;
	a->generation++;
	return true;
}

void
of_amqp_disconnect(OfAmqp *a, bool graceful)
{
	if (a->conn != NULL)
	{
		if (graceful && a->connected && !a->blocked)
		{
			of_amqp_watchdog_arm(2000);
			amqp_channel_close(a->conn, OF_AMQP_CHANNEL, AMQP_REPLY_SUCCESS);
			amqp_connection_close(a->conn, AMQP_REPLY_SUCCESS);
			of_amqp_watchdog_disarm();
		}
		of_watch_fd = -1;
		amqp_destroy_connection(a->conn);
	}
	a->conn = NULL;
	a->fd = -1;
	a->node[0] = '\0';
	a->connected = false;
	a->blocked = false;
	a->confirms = false;
	if (a->signature)
		pfree(a->signature);
	a->signature = NULL;
}

/*
 * The element of the list a worker tries first: its slot number (every
 * ordflow worker gets it as its main argument), so that the relay and the
 * consumers spread over the broker nodes.
 */
static int
worker_offset(void)
{
	return MyBgworkerEntry ? Max(DatumGetInt32(MyBgworkerEntry->bgw_main_arg), 0) : 0;
}

/* Start from the worker's own element, at once, and log the next failure. */
static void
restart_rounds(OfAmqp *a)
{
	a->url_started = true;
	a->url_next = worker_offset();
	a->round_failures = 0;
	a->failing = false;
	a->backoff_ms = 0;
	a->next_attempt = 0;
}

/* How many URLs ordflow.amqp_url lists. */
static int
url_count(void)
{
	int			n;
	char	  **urls = of_amqp_url_split(ordflow_amqp_url, &n);

	for (int j = 0; j < n; j++)
	{
		explicit_bzero(urls[j], strlen(urls[j]));	/* they hold the password */
		pfree(urls[j]);
	}
	pfree(urls);
	return n;
}

/*
 * After a whole round of the list failed: wait, longer each time.  Returns
 * the wait in ms.
 */
static long
back_off(OfAmqp *a, int n)
{
	if (n > 1 && a->backoff_ms == 0)
		ereport(LOG,
				(errmsg("ordflow: could not connect to any of the %d broker URLs; the last error: %s",
						n, a->error),
				 errdetail("Retrying with exponential backoff up to %d s; orders wait in the database.",
						   OF_BACKOFF_MAX_MS / 1000)));
	a->round_failures = 0;
	a->backoff_ms = of_backoff_next(a->backoff_ms, OF_BACKOFF_MIN_MS, OF_BACKOFF_MAX_MS);
	a->next_attempt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), a->backoff_ms);
	return a->backoff_ms;
}

/*
 * A connection was lost.  One that had been up a while starts afresh: log
 * it, try the next node at once, a whole round before backing off.  One
 * lost right after it was made (a broker that accepts connections but
 * refuses the work, say) counts as a failed attempt, so that a flapping
 * node is reconnected to (and logged) at the pace of the backoff, not in a
 * hot loop.
 */
static void
connection_lost(OfAmqp *a)
{
	bool		stable = TimestampDifferenceExceeds(a->connected_at, GetCurrentTimestamp(),
													OF_STABLE_MS);

	if (stable)
	{
		a->round_failures = 0;
		a->backoff_ms = 0;
		a->next_attempt = 0;
	}
	ereport(LOG, (errmsg("ordflow: lost the broker connection: %s", a->error)));
	a->failing = true;
	/* that node is likely gone: the next one first */
	a->url_next++;
	if (!stable)
	{
		int			n = url_count();

		if (++a->round_failures >= n)
			(void) back_off(a, n);
	}
}

/* Did the settings change (on a reload) since the last failed attempt? */
static bool
settings_changed_while_down(OfAmqp *a)
{
	char	   *sig;
	bool		changed;

	if (a->tried_signature == NULL || a->config_seen == of_config_generation)
		return false;
	a->config_seen = of_config_generation;
	sig = settings_signature(a);
	changed = strcmp(sig, a->tried_signature) != 0;
	pfree(sig);
	return changed;
}

/*
 * One attempt, at the next element of the URL list.  Logs the first
 * failure since the last success or settings change, with its reason, and
 * once a whole round of the list has failed; the rest go to DEBUG1.
 */
static bool
try_next_url(OfAmqp *a, bool confirms, long *wait_ms)
{
	MemoryContext cxt;
	MemoryContext oldcxt;
	char	  **urls;
	int			n;
	int			i;
	char	   *redacted;
	bool		ok;

	/* Whatever a failed attempt allocates goes with this context. */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "ordflow connect",
								ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);
	urls = of_amqp_url_split(ordflow_amqp_url, &n);
	i = a->url_next % n;
	redacted = of_redact_url(urls[i]);
	ok = open_connection(a, confirms, urls[i]);
	for (int j = 0; j < n; j++)
		explicit_bzero(urls[j], strlen(urls[j]));	/* they hold the password */
	if (a->tried_signature)
		pfree(a->tried_signature);
	a->tried_signature = MemoryContextStrdup(TopMemoryContext, settings_signature(a));
	a->config_seen = of_config_generation;
	if (ok)
		a->signature = MemoryContextStrdup(TopMemoryContext, a->tried_signature);

	if (ok)
	{
		/* the backoff is reset only once the connection proved stable */
		ereport(LOG, (errmsg("ordflow: %s to the broker at %s",
							 a->failing ? "reconnected" : "connected", redacted)));
		a->failing = false;
		a->url_next = i;
		a->connected_at = GetCurrentTimestamp();
		a->next_attempt = 0;
		a->error[0] = '\0';
		a->error_class[0] = '\0';
	}
	else
	{
		if (!a->failing)
			ereport(LOG,
					(errmsg("ordflow: could not connect to the broker at %s: %s",
							redacted, a->error),
					 n > 1 ?
					 errdetail("Trying the other URLs of ordflow.amqp_url; orders wait in the database.") :
					 errdetail("Retrying with exponential backoff up to %d s; orders wait in the database.",
							   OF_BACKOFF_MAX_MS / 1000)));
		else
			elog(DEBUG1, "ordflow: broker still unreachable: %s (at %s)", a->error, redacted);
		a->failing = true;
		a->url_next = i + 1;
		a->round_failures++;
		of_amqp_disconnect(a, false);	/* keeps a->error for status() */
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	if (ok)
		return true;

	/* Another node may answer at once; back off only after a whole round. */
	if (a->round_failures < n)
		return false;
	*wait_ms = back_off(a, n);
	return false;
}

/*
 * Connect if not connected and the backoff allows.  Returns true when
 * connected; otherwise *wait_ms says how long to sleep before trying again
 * (0: try the next URL of the list at once).  Logs one line per change of
 * state, not one per attempt.
 */
bool
of_amqp_ensure_connected(OfAmqp *a, bool confirms, long *wait_ms)
{
	TimestampTz now;

	*wait_ms = 0;
	a->publisher = confirms;
	if (a->conn != NULL && a->connected && !of_amqp_settings_changed(a))
		return true;
	if (!a->url_started)
		restart_rounds(a);
	if (a->conn != NULL)
	{
		bool		lost = !a->connected;

		if (!lost)
			ereport(LOG, (errmsg("ordflow: broker settings changed, reconnecting")));
		of_amqp_disconnect(a, !lost);
		if (lost)
			connection_lost(a);
		else
			restart_rounds(a);
	}
	else if (settings_changed_while_down(a))
		restart_rounds(a);

	now = GetCurrentTimestamp();
	if (a->next_attempt != 0 && now < a->next_attempt)
	{
		*wait_ms = (long) ((a->next_attempt - now) / 1000) + 1;
		return false;
	}
	return try_next_url(a, confirms, wait_ms);
}
