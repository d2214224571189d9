/*
 * amqp_client.c - a tiny AMQP 0-9-1 client for the TAP tests.
 *
 * amqp-tools cannot set correlation_id/message_id and amqp-get prints no
 * properties, but the user-event reply tests need both; so the harness
 * (t/lib/OrdflowTest.pm) compiles this once per test run.
 *
 *   amqp_client URL publish [opts]       publish one message (or one per
 *                                        stdin line with --lines), waits
 *                                        for the publisher confirm
 *   amqp_client URL get QUEUE [--wait S] [--count N]
 *                                        basic.get with ack; prints each
 *                                        message as "key=value" lines, then
 *                                        "body_length=N", the raw body and
 *                                        a newline. Exit 3 if none arrived.
 *   amqp_client URL declare-queue NAME [--durable] [--bind EXCHANGE KEY]
 *   amqp_client URL purge QUEUE
 *
 * publish opts: --exchange E, --routing-key K, --persistent,
 *   --content-type T, --reply-to Q, --correlation-id C, --message-id M,
 *   --header k=v (string value, repeatable), --expiration MS, --body B, --body-file F,
 *   --lines (stdin, one message per line), --no-confirm
 * TLS (amqps:// URL): --cacert F, --cert F, --key F, --no-verify
 * Exit codes: 0 ok, 1 usage, 2 broker/connection error, 3 queue empty,
 * 4 message nacked or returned.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#define MAX_HEADERS 16

static const char *cacert, *cert, *key;
static int	no_verify;

static void die(const char *what, const char *detail) __attribute__((noreturn));

static void
die(const char *what, const char *detail)
{
	fprintf(stderr, "amqp_client: %s%s%s\n", what, detail ? ": " : "",
			detail ? detail : "");
	exit(2);
}

static void
check_reply(amqp_rpc_reply_t r, const char *what)
{
	char		buf[512];

	switch (r.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			return;
		case AMQP_RESPONSE_NONE:
			die(what, "missing RPC reply");
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			die(what, amqp_error_string2(r.library_error));
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = r.reply.decoded;

				snprintf(buf, sizeof(buf), "connection closed %u %.*s",
						 m->reply_code, (int) m->reply_text.len,
						 (char *) m->reply_text.bytes);
			}
			else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = r.reply.decoded;

				snprintf(buf, sizeof(buf), "channel closed %u %.*s",
						 m->reply_code, (int) m->reply_text.len,
						 (char *) m->reply_text.bytes);
			}
			else
				snprintf(buf, sizeof(buf), "server method 0x%08X", r.reply.id);
			die(what, buf);
	}
}

static amqp_connection_state_t
connect_url(const char *url_in)
{
	struct amqp_connection_info ci;
	char	   *url = strdup(url_in);
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock;
	struct timeval tv = {10, 0};
	int			rc;

	amqp_default_connection_info(&ci);
	if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
		die("bad URL", NULL);
	if (ci.ssl)
	{
		sock = amqp_ssl_socket_new(conn);
		if (!sock)
			die("cannot create TLS socket", NULL);
		amqp_ssl_socket_set_verify_peer(sock, !no_verify);
		amqp_ssl_socket_set_verify_hostname(sock, !no_verify);
		if (cacert && amqp_ssl_socket_set_cacert(sock, cacert) != AMQP_STATUS_OK)
			die("cannot load CA file", cacert);
		if (cert && key && amqp_ssl_socket_set_key(sock, cert, key) != AMQP_STATUS_OK)
			die("cannot load client certificate/key", cert);
	}
	else
		sock = amqp_tcp_socket_new(conn);
	if (!sock)
		die("cannot create socket", NULL);
	rc = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
	if (rc != AMQP_STATUS_OK)
		die("cannot connect", amqp_error_string2(rc));
	amqp_set_rpc_timeout(conn, &tv);
	check_reply(amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
						   ci.user, ci.password), "login");
	amqp_channel_open(conn, 1);
	check_reply(amqp_get_rpc_reply(conn), "channel.open");
	return conn;
}

static void
disconnect(amqp_connection_state_t conn)
{
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

static amqp_bytes_t
read_all(FILE *f)
{
	amqp_bytes_t b = {0, NULL};
	size_t		cap = 0;
	size_t		n;

	for (;;)
	{
		if (b.len == cap)
		{
			cap = cap ? cap * 2 : 65536;
			b.bytes = realloc(b.bytes, cap);
			if (!b.bytes)
				die("out of memory", NULL);
		}
		n = fread((char *) b.bytes + b.len, 1, cap - b.len, f);
		if (n == 0)
			break;
		b.len += n;
	}
	return b;
}

/* Wait for the confirm of one publish; basic.return comes first if unroutable. */
static int
wait_confirm(amqp_connection_state_t conn)
{
	struct timeval tv = {10, 0};
	amqp_frame_t frame;
	int			returned = 0;

	for (;;)
	{
		int			rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);

		if (rc != AMQP_STATUS_OK)
			die("waiting for confirm", amqp_error_string2(rc));
		if (frame.frame_type != AMQP_FRAME_METHOD)
			continue;
		switch (frame.payload.method.id)
		{
			case AMQP_BASIC_ACK_METHOD:
				return returned ? 4 : 0;
			case AMQP_BASIC_NACK_METHOD:
				fprintf(stderr, "amqp_client: message nacked\n");
				return 4;
			case AMQP_BASIC_RETURN_METHOD:
				{
					amqp_message_t msg;

					/* the returned message's header and body follow */
					check_reply(amqp_read_message(conn, frame.channel, &msg, 0),
								"reading returned message");
					amqp_destroy_message(&msg);
					fprintf(stderr, "amqp_client: message returned (unroutable)\n");
					returned = 1;
					break;
				}
			case AMQP_CHANNEL_CLOSE_METHOD:
			case AMQP_CONNECTION_CLOSE_METHOD:
				die("broker closed the channel while publishing", NULL);
		}
	}
}

static int
do_publish(amqp_connection_state_t conn, int argc, char **argv)
{
	const char *exchange = "", *rkey = "", *body = NULL, *body_file = NULL;
	int			lines = 0, confirm = 1, mandatory = 0, rc = 0;
	amqp_basic_properties_t props;
	amqp_table_entry_t hdr[MAX_HEADERS];
	int			nhdr = 0;
	int			i;

	memset(&props, 0, sizeof(props));
	for (i = 0; i < argc; i++)
	{
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

#define NEEDV do { if (!v) { fprintf(stderr, "%s needs a value\n", a); exit(1); } i++; } while (0)
		if (!strcmp(a, "--exchange")) { NEEDV; exchange = v; }
		else if (!strcmp(a, "--routing-key")) { NEEDV; rkey = v; }
		else if (!strcmp(a, "--body")) { NEEDV; body = v; }
		else if (!strcmp(a, "--body-file")) { NEEDV; body_file = v; }
		else if (!strcmp(a, "--lines")) lines = 1;
		else if (!strcmp(a, "--no-confirm")) confirm = 0;
		else if (!strcmp(a, "--mandatory")) mandatory = 1;
		else if (!strcmp(a, "--persistent"))
		{
			props._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
			props.delivery_mode = 2;
		}
		else if (!strcmp(a, "--content-type"))
		{
			NEEDV;
			props._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
			props.content_type = amqp_cstring_bytes(v);
		}
		else if (!strcmp(a, "--reply-to"))
		{
			NEEDV;
			props._flags |= AMQP_BASIC_REPLY_TO_FLAG;
			props.reply_to = amqp_cstring_bytes(v);
		}
		else if (!strcmp(a, "--correlation-id"))
		{
			NEEDV;
			props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
			props.correlation_id = amqp_cstring_bytes(v);
		}
		else if (!strcmp(a, "--message-id"))
		{
			NEEDV;
			props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
			props.message_id = amqp_cstring_bytes(v);
		}
		else if (!strcmp(a, "--expiration"))
		{
			/* per-message TTL in ms, as a string (the broker dead-letters it) */
			NEEDV;
			props._flags |= AMQP_BASIC_EXPIRATION_FLAG;
			props.expiration = amqp_cstring_bytes(v);
		}
		else if (!strcmp(a, "--header"))
		{
			char	   *eq;

			NEEDV;
			eq = strchr(v, '=');
			if (!eq || nhdr >= MAX_HEADERS)
			{
				fprintf(stderr, "bad --header %s\n", v);
				exit(1);
			}
			hdr[nhdr].key.bytes = (void *) v;
			hdr[nhdr].key.len = eq - v;
			hdr[nhdr].value.kind = AMQP_FIELD_KIND_UTF8;
			hdr[nhdr].value.value.bytes = amqp_cstring_bytes(eq + 1);
			nhdr++;
		}
		else
		{
			fprintf(stderr, "unknown publish option %s\n", a);
			exit(1);
		}
#undef NEEDV
	}
	if (nhdr > 0)
	{
		props._flags |= AMQP_BASIC_HEADERS_FLAG;
		props.headers.num_entries = nhdr;
		props.headers.entries = hdr;
	}
	if (confirm)
	{
		amqp_confirm_select(conn, 1);
		check_reply(amqp_get_rpc_reply(conn), "confirm.select");
	}

	if (lines)
	{
		char	   *line = NULL;
		size_t		cap = 0;
		ssize_t		n;

		while ((n = getline(&line, &cap, stdin)) >= 0)
		{
			amqp_bytes_t b;

			if (n > 0 && line[n - 1] == '\n')
				n--;
			b.bytes = line;
			b.len = n;
			if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange),
								   amqp_cstring_bytes(rkey), mandatory, 0,
								   &props, b) != AMQP_STATUS_OK)
				die("publish failed", NULL);
			if (confirm && wait_confirm(conn) != 0)
				rc = 4;
		}
		free(line);
	}
	else
	{
		amqp_bytes_t b;

		if (body)
			b = amqp_cstring_bytes(body);
		else if (body_file)
		{
			FILE	   *f = fopen(body_file, "rb");

			if (!f)
				die("cannot open body file", strerror(errno));
			b = read_all(f);
			fclose(f);
		}
		else
			b = read_all(stdin);
		if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange),
							   amqp_cstring_bytes(rkey), mandatory, 0,
							   &props, b) != AMQP_STATUS_OK)
			die("publish failed", NULL);
		if (confirm)
			rc = wait_confirm(conn);
	}
	return rc;
}

static void
print_bytes_prop(const char *name, amqp_bytes_t b)
{
	/* property values are short strings; keep the line format parseable */
	printf("%s=", name);
	for (size_t i = 0; i < b.len; i++)
	{
		unsigned char c = ((unsigned char *) b.bytes)[i];

		putchar(c == '\n' ? ' ' : c);
	}
	putchar('\n');
}

static int
do_get(amqp_connection_state_t conn, const char *queue, int argc, char **argv)
{
	double		wait_s = 0;
	int			count = 1, got = 0, i;
	struct timespec start, now;

	for (i = 0; i < argc; i++)
	{
		if (!strcmp(argv[i], "--wait") && i + 1 < argc)
			wait_s = atof(argv[++i]);
		else if (!strcmp(argv[i], "--count") && i + 1 < argc)
			count = atoi(argv[++i]);
		else
		{
			fprintf(stderr, "unknown get option %s\n", argv[i]);
			exit(1);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (got < count)
	{
		amqp_rpc_reply_t r = amqp_basic_get(conn, 1, amqp_cstring_bytes(queue), 1);
		amqp_message_t msg;

		check_reply(r, "basic.get");
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
		{
			clock_gettime(CLOCK_MONOTONIC, &now);
			if ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 >= wait_s)
				break;
			usleep(50000);
			continue;
		}
		else
		{
			amqp_basic_get_ok_t *ok = r.reply.decoded;
			amqp_basic_properties_t *p;

			print_bytes_prop("exchange", ok->exchange);
			print_bytes_prop("routing_key", ok->routing_key);
			printf("redelivered=%d\n", ok->redelivered ? 1 : 0);
			check_reply(amqp_read_message(conn, 1, &msg, 0), "reading message");
			p = &msg.properties;
			if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
				print_bytes_prop("content_type", p->content_type);
			if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
				printf("delivery_mode=%u\n", p->delivery_mode);
			if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
				print_bytes_prop("correlation_id", p->correlation_id);
			if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
				print_bytes_prop("reply_to", p->reply_to);
			if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
				print_bytes_prop("message_id", p->message_id);
			if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
			{
				for (int h = 0; h < p->headers.num_entries; h++)
				{
					amqp_table_entry_t *e = &p->headers.entries[h];

					if (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
						e->value.kind == AMQP_FIELD_KIND_BYTES)
					{
						char		name[300];

						snprintf(name, sizeof(name), "header.%.*s",
								 (int) e->key.len, (char *) e->key.bytes);
						print_bytes_prop(name, e->value.value.bytes);
					}
					else if (e->value.kind == AMQP_FIELD_KIND_I32 ||
							 e->value.kind == AMQP_FIELD_KIND_I64 ||
							 e->value.kind == AMQP_FIELD_KIND_I16 ||
							 e->value.kind == AMQP_FIELD_KIND_I8)
					{
						/* integer headers print as header.k=<decimal> */
						long long	v = e->value.kind == AMQP_FIELD_KIND_I32 ? e->value.value.i32 :
							e->value.kind == AMQP_FIELD_KIND_I64 ? e->value.value.i64 :
							e->value.kind == AMQP_FIELD_KIND_I16 ? e->value.value.i16 :
							e->value.value.i8;

						printf("header.%.*s=%lld\n", (int) e->key.len,
							   (char *) e->key.bytes, v);
					}
				}
			}
			printf("body_length=%zu\n", msg.body.len);
			fwrite(msg.body.bytes, 1, msg.body.len, stdout);
			putchar('\n');
			amqp_destroy_message(&msg);
			got++;
		}
		amqp_maybe_release_buffers(conn);
	}
	fflush(stdout);
	return got > 0 ? 0 : 3;
}

int
main(int argc, char **argv)
{
	amqp_connection_state_t conn;
	const char *url, *cmd;
	int			rc = 0;
	int			i, j;

	/* strip TLS options wherever they are */
	for (i = 1, j = 1; i < argc; i++)
	{
		if (!strcmp(argv[i], "--cacert") && i + 1 < argc)
			cacert = argv[++i];
		else if (!strcmp(argv[i], "--cert") && i + 1 < argc)
			cert = argv[++i];
		else if (!strcmp(argv[i], "--key") && i + 1 < argc)
			key = argv[++i];
		else if (!strcmp(argv[i], "--no-verify"))
			no_verify = 1;
		else
			argv[j++] = argv[i];
	}
	argc = j;
	if (argc < 3)
	{
		fprintf(stderr, "usage: amqp_client URL publish|get|declare-queue|purge ...\n");
		return 1;
	}
	url = argv[1];
	cmd = argv[2];
	conn = connect_url(url);

	if (!strcmp(cmd, "publish"))
		rc = do_publish(conn, argc - 3, argv + 3);
	else if (!strcmp(cmd, "get") && argc >= 4)
		rc = do_get(conn, argv[3], argc - 4, argv + 4);
	else if (!strcmp(cmd, "declare-queue") && argc >= 4)
	{
		int			durable = 0;
		const char *bind_ex = NULL, *bind_key = NULL;

		for (i = 4; i < argc; i++)
		{
			if (!strcmp(argv[i], "--durable"))
				durable = 1;
			else if (!strcmp(argv[i], "--bind") && i + 2 < argc)
			{
				bind_ex = argv[++i];
				bind_key = argv[++i];
			}
			else
			{
				fprintf(stderr, "unknown declare-queue option %s\n", argv[i]);
				return 1;
			}
		}
		amqp_queue_declare(conn, 1, amqp_cstring_bytes(argv[3]), 0, durable, 0, 0,
						   amqp_empty_table);
		check_reply(amqp_get_rpc_reply(conn), "queue.declare");
		if (bind_ex)
		{
			amqp_queue_bind(conn, 1, amqp_cstring_bytes(argv[3]),
							amqp_cstring_bytes(bind_ex), amqp_cstring_bytes(bind_key),
							amqp_empty_table);
			check_reply(amqp_get_rpc_reply(conn), "queue.bind");
		}
	}
	else if (!strcmp(cmd, "purge") && argc >= 4)
	{
		amqp_queue_purge(conn, 1, amqp_cstring_bytes(argv[3]));
		check_reply(amqp_get_rpc_reply(conn), "queue.purge");
	}
	else
	{
		fprintf(stderr, "unknown command %s\n", cmd);
		return 1;
	}
	disconnect(conn);
	return rc;
}
