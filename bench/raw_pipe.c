/*
 * raw_pipe.c - the ceiling for ordflow's benchmark: a bare librabbitmq
 * publisher and consumer moving order-sized JSON messages through RabbitMQ
 * with the same guarantees ordflow uses (durable queue, persistent messages,
 * publisher confirms waited for in batches, manual multiple-acks under a
 * prefetch window), and nothing else: no database on either side.
 *
 *   raw_pipe HOST PORT N [CONFIRM_BATCH [PREFETCH [ACK_EVERY]]]
 *
 * Forks a consumer, waits until it consumes, then publishes N messages to a
 * private durable queue (purged first) through the default exchange.
 * Prints one line:
 *   n=N seconds=S rate=R publish_seconds=P
 * where S runs from the first publish to the consumer's ack of the last
 * message, R = N / S messages/s end to end.  Exits non-zero on any error.
 *
 * Build: cc -O2 -o raw_pipe raw_pipe.c -lrabbitmq
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#define QUEUE	"ordflow.bench.raw"
#define CHANNEL	1

static void
die(const char *fmt, ...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "raw_pipe[%d]: ", (int) getpid());
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
check_rpc(amqp_connection_state_t c, const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(c);

	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		die("%s failed (reply type %d, library error %s)", what, (int) r.reply_type,
			amqp_error_string2(r.library_error));
}

static amqp_connection_state_t
connect_broker(const char *host, int port)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);

	if (s == NULL)
		die("cannot create a socket");
	if (amqp_socket_open(s, host, port) != AMQP_STATUS_OK)
		die("cannot connect to %s:%d", host, port);
	if (amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
				   "guest", "guest").reply_type != AMQP_RESPONSE_NORMAL)
		die("login refused");
	amqp_channel_open(c, CHANNEL);
	check_rpc(c, "channel.open");
	return c;
}

static void
close_broker(amqp_connection_state_t c)
{
	amqp_channel_close(c, CHANNEL, AMQP_REPLY_SUCCESS);
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

/* Consumer: ack (multiple) every ack_every messages and at the last one. */
static void
consume(const char *host, int port, long n, int prefetch, int ack_every, int ready_fd)
{
	amqp_connection_state_t c = connect_broker(host, port);
	long		got = 0;
	uint64_t	last_tag = 0;
	int			unacked = 0;

	amqp_basic_qos(c, CHANNEL, 0, (uint16_t) prefetch, 0);
	check_rpc(c, "basic.qos");
	amqp_basic_consume(c, CHANNEL, amqp_cstring_bytes(QUEUE), amqp_empty_bytes,
					   0, 0, 0, amqp_empty_table);
	check_rpc(c, "basic.consume");
	if (write(ready_fd, "r", 1) != 1)
		die("cannot signal readiness");
	close(ready_fd);

	while (got < n)
	{
		amqp_envelope_t env;
		struct timeval tv = {30, 0};
		amqp_rpc_reply_t r;

		amqp_maybe_release_buffers(c);
		r = amqp_consume_message(c, &env, &tv, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL)
			die("consume failed after %ld messages (%s)", got,
				r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ?
				amqp_error_string2(r.library_error) : "server exception");
		/* touch the body as a real consumer would */
		if (env.message.body.len < 2 || ((char *) env.message.body.bytes)[0] != '{')
			die("unexpected body");
		last_tag = env.delivery_tag;
		amqp_destroy_envelope(&env);
		got++;
		if (++unacked >= ack_every || got == n)
		{
			if (amqp_basic_ack(c, CHANNEL, last_tag, 1) != AMQP_STATUS_OK)
				die("basic.ack failed");
			unacked = 0;
		}
	}
	close_broker(c);
}

/* Wait until the broker confirmed every tag up to last; die on a nack. */
static void
wait_confirms(amqp_connection_state_t c, uint64_t last, uint64_t *acked_upto)
{
	while (*acked_upto < last)
	{
		amqp_frame_t f;
		struct timeval tv = {30, 0};
		int			rc = amqp_simple_wait_frame_noblock(c, &f, &tv);

		if (rc != AMQP_STATUS_OK)
			die("waiting for confirms: %s", amqp_error_string2(rc));
		if (f.frame_type != AMQP_FRAME_METHOD || f.channel != CHANNEL)
			continue;
		if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
		{
			amqp_basic_ack_t *a = f.payload.method.decoded;

			if (a->multiple)
				*acked_upto = a->delivery_tag > *acked_upto ? a->delivery_tag : *acked_upto;
			else if (a->delivery_tag == *acked_upto + 1)
				*acked_upto = a->delivery_tag;
			/* single acks out of order do not happen on one channel */
		}
		else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD)
			die("the broker nacked a message");
		else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD)
			die("the broker closed the channel");
	}
}

int
main(int argc, char **argv)
{
	const char *host;
	int			port;
	long		n;
	int			confirm_batch = 1000;
	int			prefetch = 2000;
	int			ack_every = 500;
	amqp_connection_state_t c;
	amqp_basic_properties_t props;
	int			pipefd[2];
	char		byte;
	pid_t		child;
	int			status;
	double		t0, t_pub, t1;
	uint64_t	acked_upto = 0;
	uint64_t	sent = 0;
	char		body[256];
	int			len;

	if (argc < 4)
	{
		fprintf(stderr, "usage: %s HOST PORT N [CONFIRM_BATCH [PREFETCH [ACK_EVERY]]]\n", argv[0]);
		return 2;
	}
	host = argv[1];
	port = atoi(argv[2]);
	n = atol(argv[3]);
	if (argc > 4)
		confirm_batch = atoi(argv[4]);
	if (argc > 5)
		prefetch = atoi(argv[5]);
	if (argc > 6)
		ack_every = atoi(argv[6]);
	if (n < 1 || confirm_batch < 1 || prefetch < 1 || prefetch > 65535 || ack_every < 1)
		die("bad arguments");

	/* a fresh durable queue */
	c = connect_broker(host, port);
	amqp_queue_declare(c, CHANNEL, amqp_cstring_bytes(QUEUE), 0, 1, 0, 0, amqp_empty_table);
	check_rpc(c, "queue.declare");
	amqp_queue_purge(c, CHANNEL, amqp_cstring_bytes(QUEUE));
	check_rpc(c, "queue.purge");
	amqp_confirm_select(c, CHANNEL);
	check_rpc(c, "confirm.select");

	if (pipe(pipefd) != 0)
		die("pipe: %s", strerror(errno));
	fflush(NULL);
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0)
	{
		close(pipefd[0]);
		consume(host, port, n, prefetch, ack_every, pipefd[1]);
		_exit(0);
	}
	close(pipefd[1]);
	if (read(pipefd[0], &byte, 1) != 1)
		die("the consumer did not start");
	close(pipefd[0]);

	/* the same properties the relay sets */
	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
		AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_APP_ID_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = 2;
	props.app_id = amqp_cstring_bytes("ordflow-bench");

	t0 = now_s();
	for (long i = 1; i <= n; i++)
	{
		char		mid[24];

		/* the size and shape of an outbox payload */
		len = snprintf(body, sizeof(body),
					   "{\"order_id\" : %ld, \"uid\" : %ld, \"symbol\" : \"AB%c\", "
					   "\"quantity\" : %ld, \"amount\" : null, "
					   "\"created_at\" : \"2026-11-21T12:00:00.123456Z\"}",
					   1000000 + i, i % 1000 + 1, 'A' + (int) (i % 26), 1 + i % 10);
		snprintf(mid, sizeof(mid), "%ld", 1000000 + i);
		props.message_id = amqp_cstring_bytes(mid);
		if (amqp_basic_publish(c, CHANNEL, amqp_empty_bytes, amqp_cstring_bytes(QUEUE),
							   0, 0, &props, (amqp_bytes_t) {len, body}) != AMQP_STATUS_OK)
			die("publish failed");
		sent++;
		if (sent % confirm_batch == 0 || i == n)
			wait_confirms(c, sent, &acked_upto);
	}
	t_pub = now_s();

	if (waitpid(child, &status, 0) != child)
		die("waitpid: %s", strerror(errno));
	t1 = now_s();
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("the consumer failed");

	amqp_queue_delete(c, CHANNEL, amqp_cstring_bytes(QUEUE), 0, 0);
	close_broker(c);
	printf("n=%ld seconds=%.4f rate=%.1f publish_seconds=%.4f\n",
		   n, t1 - t0, n / (t1 - t0), t_pub - t0);
	return 0;
}
