/*-------------------------------------------------------------------------
 *
 * message_reader.c
 *	  Reading one consumed message: its properties, headers and body.
 *
 * Nothing a publisher sends is trusted.  A body larger than
 * ordflow.max_message_size is read frame by frame and dropped as it comes,
 * keeping only its first OF_DEAD_LETTER_KEEP bytes for the dead letter, so
 * no message is ever held whole beyond the limit.  Routing keys and ids are
 * stored in text columns: bytes that are not valid text in the database
 * encoding are escaped, so every client (and pg_dump) can read every row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "message_reader.h"
#include "ordflow.h"
#include "worker_common.h"

/* A message's header and body follow its deliver frame at once. */
#define CONTENT_TIMEOUT_MS	10000

/*
 * The bytes as text in the database encoding: valid UTF-8 (in a UTF-8
 * database) or printable ASCII is kept, every other byte becomes \xNN.
 * *exact says nothing had to be escaped.
 */
char *
of_wire_text(const void *bytes, size_t len, bool *exact)
{
	const unsigned char *s = bytes;
	StringInfoData buf;
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;
	size_t		i = 0;

	*exact = true;
	initStringInfo(&buf);
	while (i < len)
	{
		int			l = 1;

		if (s[i] >= 0x80 && utf8)
		{
			l = pg_utf_mblen(&s[i]);
			if (l > (int) (len - i) || !pg_utf8_islegal(&s[i], l))
				l = 0;
		}
		else if (s[i] < 0x20 || s[i] == 0x7f || s[i] >= 0x80)
			l = 0;
		if (l == 0)
		{
			appendStringInfo(&buf, "\\x%02x", s[i]);
			*exact = false;
			i++;
		}
		else
		{
			appendBinaryStringInfo(&buf, (const char *) &s[i], l);
			i += l;
		}
	}
	return buf.data;
}

static char *
wire_text(amqp_bytes_t b)
{
	bool		exact;

	return of_wire_text(b.bytes, b.len, &exact);
}

static const amqp_field_value_t *
find_header(const amqp_basic_properties_t *p, const char *key)
{
	size_t		keylen = strlen(key);

	if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
		return NULL;
	for (int i = 0; i < p->headers.num_entries; i++)
	{
		const amqp_table_entry_t *e = &p->headers.entries[i];

		if (e->key.len == keylen && memcmp(e->key.bytes, key, keylen) == 0)
			return &e->value;
	}
	return NULL;
}

static bool
header_text_is(const amqp_basic_properties_t *p, const char *key, const char *value)
{
	const amqp_field_value_t *v = find_header(p, key);

	return v != NULL && (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES) &&
		v->value.bytes.len == strlen(value) &&
		memcmp(v->value.bytes.bytes, value, v->value.bytes.len) == 0;
}

static bool
header_int_is(const amqp_basic_properties_t *p, const char *key, int64 value)
{
	const amqp_field_value_t *v = find_header(p, key);

	if (v == NULL)
		return false;
	switch (v->kind)
	{
		case AMQP_FIELD_KIND_I8:
			return v->value.i8 == value;
		case AMQP_FIELD_KIND_U8:
			return v->value.u8 == value;
		case AMQP_FIELD_KIND_I16:
			return v->value.i16 == value;
		case AMQP_FIELD_KIND_U16:
			return v->value.u16 == value;
		case AMQP_FIELD_KIND_I32:
			return v->value.i32 == value;
		case AMQP_FIELD_KIND_U32:
			return v->value.u32 == value;
		case AMQP_FIELD_KIND_I64:
			return v->value.i64 == value;
		case AMQP_FIELD_KIND_U64:
			return value >= 0 && v->value.u64 == (uint64) value;
		default:
			return false;
	}
}

static char *
header_text(const amqp_basic_properties_t *p, const char *key)
{
	const amqp_field_value_t *v = find_header(p, key);

	if (v == NULL || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
		return NULL;
	return wire_text(v->value.bytes);
}

static void
read_properties(const amqp_basic_properties_t *p, OfMessage *m)
{
	if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
		m->reply_to = of_wire_text(p->reply_to.bytes, p->reply_to.len, &m->reply_to_exact);
	if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
		m->correlation_id = wire_text(p->correlation_id);
	if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
		m->message_id = wire_text(p->message_id);

	/*
	 * Our own order only when both node and database are ours: another
	 * node's or database's message is an outside order, never dropped.
	 */
	m->own = header_int_is(p, "x-ordflow-node", ordflow_node_id) &&
		header_text_is(p, "x-ordflow-origin", of_message_origin());
	if (m->kind == OF_MSG_BROKER_DEAD)
	{
		m->death_reason = header_text(p, "x-first-death-reason");
		m->death_queue = header_text(p, "x-first-death-queue");
	}
}

/* Wait for the next content frame of the message being read. */
static bool
content_frame(OfAmqp *a, amqp_frame_t *frame)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CONTENT_TIMEOUT_MS);

	for (;;)
	{
		long		remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		OfWait		w;

		if (remaining <= 0)
		{
			of_amqp_fail(a, "timed out reading a message's content");
			return false;
		}
		w = of_amqp_next_frame(a, frame, remaining);
		if (w == OF_WAIT_FRAME)
			return true;
		if (w == OF_WAIT_ERROR)
			return false;
		/* latch or timeout: keep reading; interrupts are handled after */
	}
}

/* The body frames: keep what fits, drop the rest as it arrives. */
static bool
read_body(OfAmqp *a, OfMessage *m, uint64 size)
{
	size_t		keep = size > (uint64) ordflow_max_message_size ? OF_DEAD_LETTER_KEEP : (size_t) size;
	uint64		got = 0;

	m->body = palloc(keep + 1);
	m->body_len = 0;
	m->body_size = size;
	while (got < size)
	{
		amqp_frame_t frame;
		size_t		len;

		if (!content_frame(a, &frame))
			return false;
		len = frame.payload.body_fragment.len;
		if (frame.frame_type != AMQP_FRAME_BODY || got + len > size)
		{
			of_amqp_fail(a, "protocol error in a message body");
			return false;
		}
		if (m->body_len < keep)
		{
			size_t		n = Min(len, keep - m->body_len);

			memcpy(m->body + m->body_len, frame.payload.body_fragment.bytes, n);
			m->body_len += n;
		}
		got += len;
		/* librabbitmq pools the frames it decodes: give them back as we go */
		if (size > keep)
			amqp_maybe_release_buffers_on_channel(a->conn, OF_AMQP_CHANNEL);
	}
	m->body[m->body_len] = '\0';
	return true;
}

static bool
tag_is(amqp_bytes_t tag, const char *name)
{
	return tag.len == strlen(name) && memcmp(tag.bytes, name, tag.len) == 0;
}

/* The partition a partition queue's consumer tag names, or -1. */
static int
tag_partition(amqp_bytes_t tag)
{
	size_t		plen = strlen(OF_TAG_PARTITION);
	int			p = 0;

	if (tag.len <= plen || tag.len > plen + 4 || memcmp(tag.bytes, OF_TAG_PARTITION, plen) != 0)
		return -1;
	for (size_t i = plen; i < tag.len; i++)
	{
		char		c = ((char *) tag.bytes)[i];

		if (c < '0' || c > '9')
			return -1;
		p = p * 10 + (c - '0');
	}
	return p;
}

/*
 * What a delivery is, from the queue it came from (its consumer tag): a
 * partition queue carries both the orders and the user events of its
 * partition, told apart by the routing key.
 */
static void
classify(amqp_basic_deliver_t *d, OfMessage *m)
{
	m->partition = tag_partition(d->consumer_tag);
	if (m->partition >= 0)
	{
		m->kind = strncmp(m->routing_key, "user.", 5) == 0 ? OF_MSG_USER_EVENT : OF_MSG_ORDER;
		m->queue = psprintf("%s.%d", ordflow_orders_queue, m->partition);
	}
	else if (tag_is(d->consumer_tag, OF_TAG_EVENTS))
	{
		m->kind = OF_MSG_USER_EVENT;
		m->queue = ordflow_user_events_queue;
	}
	else if (tag_is(d->consumer_tag, OF_TAG_DEAD))
	{
		m->kind = OF_MSG_BROKER_DEAD;
		m->queue = psprintf("%s.dead", ordflow_exchange);
	}
	else
	{
		m->kind = OF_MSG_ORDER;
		m->queue = ordflow_orders_queue;
	}
}

/* Read the header and body that follow a basic.deliver into m. */
bool
of_read_message(OfAmqp *a, amqp_basic_deliver_t *d, OfMessage *m)
{
	amqp_frame_t frame;

	memset(m, 0, sizeof(*m));
	m->delivery_tag = d->delivery_tag;
	m->redelivered = d->redelivered;
	m->routing_key = wire_text(d->routing_key);
	classify(d, m);

	if (!content_frame(a, &frame))
		return false;
	if (frame.frame_type != AMQP_FRAME_HEADER)
	{
		of_amqp_fail(a, "protocol error: expected a content header");
		return false;
	}
	read_properties(frame.payload.properties.decoded, m);
	return read_body(a, m, frame.payload.properties.body_size);
}
