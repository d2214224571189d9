/*-------------------------------------------------------------------------
 *
 * order_message.c
 *	  Order-message decoder on top of PostgreSQL's JSON parser.
 *
 *	  pg_parse_json() does the RFC 8259 syntax, de-escaping, surrogate pairs
 *	  and \u0000; the JsonSemAction callbacks below apply the field rules to
 *	  the top-level object.  What PostgreSQL 15 leaves to us is done here:
 *	  raw UTF-8 validation (its lexer copies non-ASCII bytes unchecked), a
 *	  depth limit (its callbacks cannot stop the recursion, so hostile
 *	  nesting is found by a cheap pre-scan before parsing), error texts that
 *	  do not echo the input (json_errdetail() is backend-only and quotes the
 *	  token) and freeing the lexer (15 has no freeJsonLexContext()).
 *
 *	  A field error is only remembered while parsing and reported once the
 *	  whole body turned out to be valid JSON, so a truncated message is
 *	  always reported as such.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <limits.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "order_fields.h"
#include "order_message.h"

/* The top-level keys we read; the order is the bit order of seen_mask. */
typedef enum
{
	F_ORDER_ID, F_UID, F_SYMBOL, F_QUANTITY, F_AMOUNT, F_CREATED_AT,
	F_NFIELDS
} OrderField;

#define F_NONE (-1)				/* not at a known top-level field's value */

static const char *const field_names[F_NFIELDS] = {
	"order_id", "uid", "symbol", "quantity", "amount", "created_at"
};

/* What the callbacks share. */
typedef struct
{
	OfOrderMsg *out;
	int			depth;			/* containers open around the current token */
	bool		started;		/* the top-level value began */
	int			field;			/* known field whose value comes next, or F_NONE */
	unsigned	seen_mask;		/* known fields present */
	int			nunknown;
	char	   *unknown[OF_MSG_MAX_UNKNOWN_KEYS];	/* their names (palloc'd) */
	bool		field_err;
	char		ferr[OF_MSG_ERR_LEN];	/* the first field error */
} DecodeState;

/* ---------- field rules ---------- */

/* Record a field error; only the first counts. */
static void
field_error(DecodeState *st, const char *msg)
{
	if (!st->field_err)
	{
		st->field_err = true;
		snprintf(st->ferr, sizeof(st->ferr), "%s", msg);
	}
}

/* Copy up to 24 bytes of a key into dst as printable ASCII, for a reason. */
static void
safe_snippet(char *dst, size_t dstlen, const char *src)
{
	size_t		len = strlen(src);
	size_t		o = 0;

	for (size_t i = 0; i < len && i < 24 && o + 1 < dstlen; i++)
	{
		unsigned char c = (unsigned char) src[i];

		dst[o++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char) c : '?';
	}
	if (len > 24 && o + 4 <= dstlen)
	{
		memcpy(dst + o, "...", 3);
		o += 3;
	}
	dst[o] = '\0';
}

/* Code points of a UTF-8 string (the lexer's output is valid UTF-8). */
static size_t
utf8_chars(const char *s)
{
	size_t		n = 0;

	for (; *s; s++)
		if (((unsigned char) *s & 0xC0) != 0x80)
			n++;
	return n;
}

static void
symbol_value(DecodeState *st, const char *tok, JsonTokenType type)
{
	size_t		len;

	if (type == JSON_TOKEN_NULL)
		return;
	if (type != JSON_TOKEN_STRING)
	{
		field_error(st, "symbol must be a string or null");
		return;
	}
	len = strlen(tok);
	if (len == 0 || len >= sizeof(st->out->symbol) || utf8_chars(tok) > OF_SYMBOL_MAX_CHARS)
	{
		field_error(st, "symbol must be 1-12 characters");
		return;
	}
	memcpy(st->out->symbol, tok, len + 1);
	st->out->has_symbol = true;
}

static void
created_at_value(DecodeState *st, const char *tok, JsonTokenType type)
{
	size_t		len;
	const char *why;

	if (type == JSON_TOKEN_NULL)
		return;
	if (type != JSON_TOKEN_STRING)
	{
		field_error(st, "created_at must be an RFC 3339 timestamp string or null");
		return;
	}
	len = strlen(tok);
	why = len >= sizeof(st->out->created_at) ? of_check_rfc3339("", 0) : of_check_rfc3339(tok, len);
	if (why != NULL)
	{
		field_error(st, why);
		return;
	}
	memcpy(st->out->created_at, tok, len + 1);
	st->out->has_created_at = true;
}

/*
 * Apply the rules of a known field to its value: tok is the de-escaped
 * string or the number text for scalars, NULL for an object or array.
 */
static void
field_value(DecodeState *st, int field, const char *tok, JsonTokenType type)
{
	OfOrderMsg *o = st->out;
	bool		isnum = type == JSON_TOKEN_NUMBER;
	int64		v;
	const char *why;

	if (type == JSON_TOKEN_NULL && field != F_ORDER_ID)
		return;
	switch (field)
	{
		case F_ORDER_ID:
			if (!isnum || !of_json_to_int64(tok, 1, PG_INT64_MAX, &v))
				field_error(st, "order_id must be an integer between 1 and 9223372036854775807");
			else
				o->order_id = v;
			break;
		case F_UID:
			if (!isnum || !of_json_is_integer(tok))
				field_error(st, "uid must be an integer or null");
			else if (!of_json_to_int64(tok, PG_INT64_MIN, PG_INT64_MAX, &v))
				field_error(st, "uid is out of range for a 64-bit integer");
			else
			{
				o->has_uid = true;
				o->uid = v;
			}
			break;
		case F_SYMBOL:
			symbol_value(st, tok, type);
			break;
		case F_QUANTITY:
			if (!isnum || !of_json_to_int64(tok, 1, PG_INT32_MAX, &v))
				field_error(st, "quantity must be an integer >= 1 and <= 2147483647, or null");
			else
			{
				o->has_quantity = true;
				o->quantity = (int32) v;
			}
			break;
		case F_AMOUNT:
			if (!isnum)
				field_error(st, "amount must be a number > 0 and <= 1e15, or null");
			else if ((why = of_check_amount(tok)) != NULL)
				field_error(st, why);
			else
			{
				strlcpy(o->amount, tok, sizeof(o->amount));
				o->has_amount = true;
			}
			break;
		case F_CREATED_AT:
			created_at_value(st, tok, type);
			break;
	}
}

/*
 * A top-level key: the known field it names, or F_NONE for an unknown one,
 * which is kept (up to a limit) for the duplicate check.  Takes fname.
 */
static int
top_level_key(DecodeState *st, char *fname)
{
	char		snip[32];
	char		msg[64];

	for (int i = 0; i < F_NFIELDS; i++)
	{
		if (strcmp(fname, field_names[i]) != 0)
			continue;
		pfree(fname);
		if (st->seen_mask & (1u << i))
		{
			snprintf(msg, sizeof(msg), "duplicate key \"%s\"", field_names[i]);
			field_error(st, msg);
		}
		st->seen_mask |= 1u << i;
		return i;
	}
	for (int i = 0; i < st->nunknown; i++)
	{
		if (strcmp(fname, st->unknown[i]) == 0)
		{
			safe_snippet(snip, sizeof(snip), fname);
			snprintf(msg, sizeof(msg), "duplicate key \"%s\"", snip);
			field_error(st, msg);
			pfree(fname);
			return F_NONE;
		}
	}
	if (st->nunknown >= OF_MSG_MAX_UNKNOWN_KEYS)
	{
		field_error(st, "too many fields (more than 128 unknown keys)");
		pfree(fname);
		return F_NONE;
	}
	st->unknown[st->nunknown++] = fname;
	return F_NONE;
}

/* ---------- JsonSemAction callbacks ---------- */

/*
 * A container starts: at depth 0 it is the message itself, at depth 1 the
 * value of a top-level field.
 */
static void
container_start(DecodeState *st, JsonTokenType type)
{
	if (st->depth == 0)
	{
		st->started = true;
		if (type == JSON_TOKEN_ARRAY_START)
			field_error(st, "message must be a JSON object, not an array");
	}
	else if (st->depth == 1 && st->field != F_NONE)
	{
		field_value(st, st->field, NULL, type);
		st->field = F_NONE;
	}
	st->depth++;
}

static void
on_object_start(void *state)
{
	container_start(state, JSON_TOKEN_OBJECT_START);
}

static void
on_array_start(void *state)
{
	container_start(state, JSON_TOKEN_ARRAY_START);
}

static void
on_container_end(void *state)
{
	((DecodeState *) state)->depth--;
}

/* fname is ours to keep or free (PostgreSQL 15 passes ownership). */
static void
on_field_start(void *state, char *fname, bool isnull)
{
	DecodeState *st = state;

	if (st->depth == 1)
		st->field = top_level_key(st, fname);
	else
		pfree(fname);
}

static void
on_scalar(void *state, char *token, JsonTokenType type)
{
	DecodeState *st = state;

	if (st->depth == 0)
	{
		st->started = true;
		field_error(st, "message must be a JSON object");
	}
	else if (st->depth == 1 && st->field != F_NONE)
	{
		field_value(st, st->field, token, type);
		st->field = F_NONE;
	}
	pfree(token);
}

/* ---------- what PostgreSQL 15's parser leaves to the caller ---------- */

/*
 * Offset of the first byte that is not valid UTF-8, or -1.  NUL bytes are
 * skipped (pg_encoding_verifymbstr() stops at them): they are valid UTF-8,
 * and the JSON parser refuses them with a better reason.
 */
static int
invalid_utf8_at(const char *buf, int len)
{
	int			off = 0;

	while (off < len)
	{
		off += pg_encoding_verifymbstr(PG_UTF8, buf + off, len - off);
		if (off < len && buf[off] != '\0')
			return off;
		off++;
	}
	return -1;
}

/*
 * Offset of the first '{' or '[' nested deeper than OF_MSG_MAX_DEPTH, or
 * -1.  Up to the first syntax error this reads strings the way the lexer
 * does, and the parser stops there, so its recursion stays within the limit.
 */
static int
too_deep_at(const char *buf, int len)
{
	int			depth = 0;
	bool		in_string = false;

	for (int i = 0; i < len; i++)
	{
		char		c = buf[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
		{
			if (++depth > OF_MSG_MAX_DEPTH)
				return i;
		}
		else if (c == '}' || c == ']')
			depth--;
	}
	return -1;
}

/* Our own short texts: json_errdetail() is backend-only and quotes the input. */
static const char *const json_error_texts[] = {
	[JSON_ESCAPING_INVALID] = "invalid escape in string",
	[JSON_ESCAPING_REQUIRED] = "control character in string",
	[JSON_EXPECTED_ARRAY_FIRST] = "expected a value or ']'",
	[JSON_EXPECTED_ARRAY_NEXT] = "expected ',' or ']'",
	[JSON_EXPECTED_COLON] = "expected ':'",
	[JSON_EXPECTED_END] = "trailing data after the JSON value",
	[JSON_EXPECTED_JSON] = "expected a value",
	[JSON_EXPECTED_MORE] = "unexpected end of input",
	[JSON_EXPECTED_OBJECT_FIRST] = "expected a string key or '}'",
	[JSON_EXPECTED_OBJECT_NEXT] = "expected ',' or '}'",
	[JSON_EXPECTED_STRING] = "expected a string key",
	[JSON_INVALID_TOKEN] = "invalid token",
	[JSON_UNICODE_CODE_POINT_ZERO] = "\\u0000 is not allowed",
	[JSON_UNICODE_ESCAPE_FORMAT] = "invalid \\u escape",
	[JSON_UNICODE_HIGH_ESCAPE] = "\\u escape not representable",
	[JSON_UNICODE_HIGH_SURROGATE] = "lone surrogate in \\u escape",
	[JSON_UNICODE_LOW_SURROGATE] = "lone surrogate in \\u escape",
};

static const char *
json_error_text(JsonParseErrorType error, const char *at)
{
	if (error == JSON_INVALID_TOKEN && at != NULL)
	{
		/* a string token is only invalid when the input ends inside it */
		if (*at == '"')
			return "unterminated string";
		if (*at == '-' || (*at >= '0' && *at <= '9'))
			return "invalid number";
	}
	if ((int) error < 0 || error >= lengthof(json_error_texts) || json_error_texts[error] == NULL)
		return "invalid JSON";
	return json_error_texts[error];
}

/*
 * Where the error is: the start of the offending token (a string's opening
 * quote for errors inside it), the control character itself, or the end of
 * the input.
 */
static int
json_error_offset(JsonLexContext *lex, JsonParseErrorType error)
{
	if (error == JSON_ESCAPING_REQUIRED || lex->token_start == NULL)
		return (int) (lex->token_terminator - lex->input);
	return (int) (lex->token_start - lex->input);
}

/* ---------- entry point ---------- */

static void set_err(char *err, size_t errlen, const char *fmt,...) pg_attribute_printf(3, 4);

static void
set_err(char *err, size_t errlen, const char *fmt,...)
{
	va_list		ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/*
 * Parse the first "len" bytes of buf through the callbacks; on a syntax
 * error false, with where and what.
 */
static bool
parse_json(const char *buf, int len, DecodeState *st, int *off, const char **what)
{
	JsonSemAction sem;
	JsonLexContext *lex;
	JsonParseErrorType rc;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = st;
	sem.object_start = on_object_start;
	sem.object_end = on_container_end;
	sem.array_start = on_array_start;
	sem.array_end = on_container_end;
	sem.object_field_start = on_field_start;
	sem.scalar = on_scalar;

	/* need_escapes: de-escaped names and values; also refuses \u0000 and lone surrogates */
	lex = makeJsonLexContextCstringLen(unconstify(char *, buf), len, PG_UTF8, true);
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		*off = json_error_offset(lex, rc);
		*what = (rc == JSON_EXPECTED_MORE && !st->started) ? "empty body" :
			json_error_text(rc, lex->token_start);
	}
	pfree(lex->strval->data);
	pfree(lex->strval);
	pfree(lex);
	return rc == JSON_SUCCESS;
}

/* Check and parse the whole body; false with the reason in err. */
static bool
decode(const char *buf, int len, DecodeState *st, char *err, size_t errlen)
{
	int			bad = invalid_utf8_at(buf, len);
	int			deep = too_deep_at(buf, len);
	int			off;
	const char *what;

	if (bad >= 0)
	{
		set_err(err, errlen, "invalid UTF-8 at byte %d", bad);
		return false;
	}

	/*
	 * Only the part before a too-deep container is parsed: an error there
	 * comes first, otherwise that part ends early, at the container.
	 */
	if (!parse_json(buf, deep >= 0 ? deep : len, st, &off, &what) &&
		(deep < 0 || off < deep))
	{
		set_err(err, errlen, "invalid JSON at byte %d: %s", off, what);
		return false;
	}
	if (deep >= 0)
	{
		set_err(err, errlen, "invalid JSON at byte %d: nesting deeper than %d",
				deep, OF_MSG_MAX_DEPTH);
		return false;
	}
	if (!st->field_err)
	{
		if (!(st->seen_mask & (1u << F_ORDER_ID)))
			field_error(st, "missing order_id");
		else if (!st->out->has_quantity && !st->out->has_amount)
			field_error(st, "quantity or amount must be given (both are missing or null)");
	}
	if (st->field_err)
	{
		set_err(err, errlen, "%s", st->ferr);
		return false;
	}
	return true;
}

bool
of_parse_order(const char *buf, size_t len, OfOrderMsg *out, char *err, size_t errlen)
{
	DecodeState st;
	bool		ok;

	memset(out, 0, sizeof(*out));
	set_err(err, errlen, "%s", "");
	if (len > (size_t) (INT_MAX / 2))
	{
		/* jsonapi counts bytes in an int; broker frames are far smaller */
		set_err(err, errlen, "message is larger than 1 GB");
		return false;
	}
	if (buf == NULL)
		buf = "";
	memset(&st, 0, sizeof(st));
	st.out = out;
	st.field = F_NONE;
	ok = decode(buf, (int) len, &st, err, errlen);
	for (int i = 0; i < st.nunknown; i++)
		pfree(st.unknown[i]);
	return ok;
}
