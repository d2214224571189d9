/*-------------------------------------------------------------------------
 *
 * order_message.c
 *	  Strict, allocation-free JSON decoder for ordflow's broker messages.
 *
 *	  One pass over the buffer.  Nested values are skipped by an iterative
 *	  walker whose open containers live in a 64-bit mask, so hostile nesting
 *	  cannot exhaust the C stack.  Syntax errors win over field errors: the
 *	  first field error is remembered and reported only once the whole body
 *	  turned out to be valid JSON, so a truncated message is always reported
 *	  as such.
 *
 *	  Pure C99 on purpose (no PostgreSQL headers): test/message_test.c and
 *	  fuzz/fuzz_message.c link it directly.
 *
 *-------------------------------------------------------------------------
 */
#include "order_message.h"

#include <stdio.h>
#include <string.h>

typedef enum
{
	V_STRING,
	V_NUMBER,
	V_NULL,
	V_TRUE,
	V_FALSE,
	V_OBJECT,
	V_ARRAY
} ValueKind;

/* Where a decoded string goes and what we learnt about it. */
typedef struct
{
	char	   *buf;			/* may be NULL when cap is 0 */
	size_t		cap;			/* bytes available, excluding the NUL */
	size_t		len;			/* decoded length in bytes (even beyond cap) */
	size_t		nchars;			/* code points */
	bool		has_nul;		/* contained \u0000 */
	bool		want_hash;
	uint64_t	hash;			/* FNV-1a of the decoded bytes */
} StrOut;

/* A JSON number token. */
typedef struct
{
	const unsigned char *start;
	size_t		len;
	bool		neg;
	bool		is_int;			/* no fraction, no exponent */
} NumTok;

typedef struct
{
	const unsigned char *base;
	const unsigned char *p;
	const unsigned char *end;
	const char *syn_err;		/* first syntax error, or NULL */
	size_t		syn_off;
	bool		field_err;		/* a field error was recorded in ferr */
	char		ferr[OF_MSG_ERR_LEN];
	bool		saw_nul;		/* some string held \u0000 */
} Parser;

/* Top-level keys a message kind reads; others are "unknown". */
typedef struct
{
	const char *name;
	size_t		len;
} KeyName;

#define KEY(s) {s, sizeof(s) - 1}

enum
{
	K_ORDER_ID, K_UID, K_SYMBOL, K_QUANTITY, K_AMOUNT, K_CREATED_AT
};
static const KeyName order_keys[] = {
	KEY("order_id"), KEY("uid"), KEY("symbol"), KEY("quantity"),
	KEY("amount"), KEY("created_at")
};

enum
{
	K_TYPE, K_CONDITION, K_NEW_VAL
};
static const KeyName event_keys[] = {
	KEY("type"), KEY("condition"), KEY("new_val")
};

/* Longer than any known key, so a key that does not fit is certainly unknown. */
#define KEYBUF_LEN 16

/* Remembered unknown top-level keys, for the duplicate check. */
typedef struct
{
	uint64_t	hash;
	size_t		len;
	size_t		off;			/* offset of the key's opening quote */
} SeenKey;

typedef struct
{
	int			nseen;
	SeenKey		seen[OF_MSG_MAX_UNKNOWN_KEYS];
} KeySet;

static bool parse_value(Parser *ps, int depth, StrOut *so, ValueKind *kind, NumTok *num);

/* ---------- error reporting ---------- */

static void
set_err(char *err, size_t errlen, const char *msg)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s", msg);
}

/* Record a syntax error; only the first counts. */
static bool
syntax_error(Parser *ps, const unsigned char *at, const char *what)
{
	if (ps->syn_err == NULL)
	{
		ps->syn_err = what;
		ps->syn_off = (size_t) (at - ps->base);
	}
	return false;
}

/* Record a field error; only the first counts. */
static void
field_error(Parser *ps, const char *msg)
{
	if (!ps->field_err)
	{
		ps->field_err = true;
		snprintf(ps->ferr, sizeof(ps->ferr), "%s", msg);
	}
}

/*
 * Copy the first bytes of a key (at most "avail" of them are readable, "len"
 * is its full length) into dst for an error message, as printable ASCII
 * only: the reason lands in a text column and in logs.
 */
static void
safe_snippet(char *dst, size_t dstlen, const char *src, size_t avail, size_t len)
{
	size_t		i,
				o = 0;
	size_t		lim = avail < len ? avail : len;

	for (i = 0; i < lim && o + 1 < dstlen; i++)
	{
		unsigned char c = (unsigned char) src[i];

		dst[o++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char) c : '?';
	}
	if (len > lim && o + 4 <= dstlen)
	{
		memcpy(dst + o, "...", 3);
		o += 3;
	}
	dst[o] = '\0';
}

/* ---------- lexical helpers ---------- */

static inline void
skip_ws(Parser *ps)
{
	const unsigned char *p = ps->p;
	const unsigned char *end = ps->end;

	while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	ps->p = p;
}

static inline int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Read 4 hex digits at p (bounds already checked); -1 if not hex. */
static inline long
hex4(const unsigned char *p)
{
	int			a = hexval(p[0]),
				b = hexval(p[1]),
				c = hexval(p[2]),
				d = hexval(p[3]);

	if ((a | b | c | d) < 0)
		return -1;
	return ((long) a << 12) | (b << 8) | (c << 4) | d;
}

static inline void
out_byte(StrOut *so, unsigned char c)
{
	if (so->len < so->cap)
		so->buf[so->len] = (char) c;
	so->len++;
	if (so->want_hash)
		so->hash = (so->hash ^ c) * UINT64_C(1099511628211);
}

static void
out_cp(StrOut *so, uint32_t cp)
{
	if (cp < 0x80)
		out_byte(so, (unsigned char) cp);
	else if (cp < 0x800)
	{
		out_byte(so, (unsigned char) (0xC0 | (cp >> 6)));
		out_byte(so, (unsigned char) (0x80 | (cp & 0x3F)));
	}
	else if (cp < 0x10000)
	{
		out_byte(so, (unsigned char) (0xE0 | (cp >> 12)));
		out_byte(so, (unsigned char) (0x80 | ((cp >> 6) & 0x3F)));
		out_byte(so, (unsigned char) (0x80 | (cp & 0x3F)));
	}
	else
	{
		out_byte(so, (unsigned char) (0xF0 | (cp >> 18)));
		out_byte(so, (unsigned char) (0x80 | ((cp >> 12) & 0x3F)));
		out_byte(so, (unsigned char) (0x80 | ((cp >> 6) & 0x3F)));
		out_byte(so, (unsigned char) (0x80 | (cp & 0x3F)));
	}
	so->nchars++;
}

/*
 * Length of the well-formed UTF-8 sequence starting at p (a byte >= 0x80),
 * or 0 if it is malformed: overlong forms, surrogates, values above
 * U+10FFFF and truncated sequences are all refused (RFC 3629 table).
 */
static inline int
utf8_seq_len(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0];
	size_t		avail = (size_t) (end - p);
	unsigned char lo = 0x80,
				hi = 0xBF;
	int			n;
	int			i;

	if (c >= 0xC2 && c <= 0xDF)
		n = 2;
	else if (c >= 0xE0 && c <= 0xEF)
	{
		n = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	}
	else if (c >= 0xF0 && c <= 0xF4)
	{
		n = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	}
	else
		return 0;
	if (avail < (size_t) n)
		return 0;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return n;
}

/*
 * Parse a string starting at the opening quote, decoding it into so.
 * The decoded text is NUL-terminated in so->buf when it fits.
 */
static bool
parse_string(Parser *ps, StrOut *so)
{
	const unsigned char *p = ps->p + 1;
	const unsigned char *end = ps->end;

	so->len = 0;
	so->nchars = 0;
	so->has_nul = false;
	so->hash = UINT64_C(14695981039346656037);

	for (;;)
	{
		unsigned char c;

		/* fast path: a run of plain ASCII */
		while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
		{
			out_byte(so, *p++);
			so->nchars++;
		}
		if (p >= end)
			return syntax_error(ps, p, "unterminated string");
		c = *p;
		if (c == '"')
		{
			p++;
			break;
		}
		if (c < 0x20)
			return syntax_error(ps, p, "control character in string");
		if (c == '\\')
		{
			if (end - p < 2)
				return syntax_error(ps, p, "unterminated string");
			switch (p[1])
			{
				case '"':
				case '\\':
				case '/':
					out_byte(so, p[1]);
					so->nchars++;
					p += 2;
					break;
				case 'b':
					out_cp(so, '\b');
					p += 2;
					break;
				case 'f':
					out_cp(so, '\f');
					p += 2;
					break;
				case 'n':
					out_cp(so, '\n');
					p += 2;
					break;
				case 'r':
					out_cp(so, '\r');
					p += 2;
					break;
				case 't':
					out_cp(so, '\t');
					p += 2;
					break;
				case 'u':
					{
						long		u;
						uint32_t	cp;

						if (end - p < 6 || (u = hex4(p + 2)) < 0)
							return syntax_error(ps, p, "invalid \\u escape");
						p += 6;
						if (u >= 0xDC00 && u <= 0xDFFF)
							return syntax_error(ps, p - 6, "lone low surrogate in \\u escape");
						if (u >= 0xD800 && u <= 0xDBFF)
						{
							long		lo;

							if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
								(lo = hex4(p + 2)) < 0 || lo < 0xDC00 || lo > 0xDFFF)
								return syntax_error(ps, p - 6, "lone high surrogate in \\u escape");
							p += 6;
							cp = 0x10000 + (((uint32_t) u - 0xD800) << 10) + ((uint32_t) lo - 0xDC00);
						}
						else
							cp = (uint32_t) u;
						if (cp == 0)
						{
							so->has_nul = true;
							ps->saw_nul = true;
						}
						out_cp(so, cp);
						break;
					}
				default:
					return syntax_error(ps, p, "invalid escape in string");
			}
			continue;
		}
		/* c >= 0x80: a multi-byte UTF-8 sequence, copied as is */
		{
			int			n = utf8_seq_len(p, end);
			int			i;

			if (n == 0)
				return syntax_error(ps, p, "invalid UTF-8");
			for (i = 0; i < n; i++)
				out_byte(so, p[i]);
			so->nchars++;
			p += n;
		}
	}
	if (so->cap > 0)
		so->buf[so->len < so->cap ? so->len : so->cap] = '\0';
	ps->p = p;
	return true;
}

/* Parse a number token per RFC 8259 section 6. */
static bool
parse_number(Parser *ps, NumTok *num)
{
	const unsigned char *p = ps->p;
	const unsigned char *end = ps->end;

	num->start = p;
	num->neg = false;
	num->is_int = true;
	if (*p == '-')
	{
		num->neg = true;
		p++;
	}
	if (p >= end || *p < '0' || *p > '9')
		return syntax_error(ps, p, "invalid number");
	if (*p == '0')
		p++;
	else
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	if (p < end && *p == '.')
	{
		p++;
		num->is_int = false;
		if (p >= end || *p < '0' || *p > '9')
			return syntax_error(ps, p, "invalid number: digit expected after '.'");
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E'))
	{
		p++;
		num->is_int = false;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || *p < '0' || *p > '9')
			return syntax_error(ps, p, "invalid number: digit expected in exponent");
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	num->len = (size_t) (p - num->start);
	ps->p = p;
	return true;
}

static bool
parse_literal(Parser *ps, const char *word, size_t n)
{
	if ((size_t) (ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
		return syntax_error(ps, ps->p, "invalid literal");
	ps->p += n;
	return true;
}

/*
 * Skip one object or array starting at ps->p ('{' or '['), whose own depth
 * is "depth".  Iterative: bit i of "isobj" says whether the container at
 * relative level i is an object.  depth <= OF_MSG_MAX_DEPTH keeps the level
 * below 64.
 */
static bool
skip_container(Parser *ps, int depth)
{
	uint64_t	isobj = 0;
	int			level = -1;		/* relative level of the innermost open container */
	StrOut		scratch;

	memset(&scratch, 0, sizeof(scratch));

	for (;;)
	{
		unsigned char c;

		/* at the start of a value */
		skip_ws(ps);
		if (ps->p >= ps->end)
			return syntax_error(ps, ps->p, "unexpected end of input");
		c = *ps->p;
		if (c == '{' || c == '[')
		{
			level++;
			if (depth + level > OF_MSG_MAX_DEPTH)
				return syntax_error(ps, ps->p, "nesting deeper than 64");
			if (c == '{')
				isobj |= UINT64_C(1) << level;
			else
				isobj &= ~(UINT64_C(1) << level);
			ps->p++;
			skip_ws(ps);
			if (ps->p < ps->end && *ps->p == (c == '{' ? '}' : ']'))
			{
				ps->p++;
				level--;
				goto after_value;
			}
			if (c == '{')
				goto expect_key;
			continue;
		}
		else
		{
			ValueKind	k;
			NumTok		num;

			if (!parse_value(ps, depth + level + 1, &scratch, &k, &num))
				return false;
		}

after_value:
		if (level < 0)
			return true;
		skip_ws(ps);
		if (ps->p >= ps->end)
			return syntax_error(ps, ps->p, "unexpected end of input");
		c = *ps->p;
		if (c == ',')
		{
			ps->p++;
			skip_ws(ps);
			if (isobj & (UINT64_C(1) << level))
				goto expect_key;
			continue;
		}
		if (c == ((isobj & (UINT64_C(1) << level)) ? '}' : ']'))
		{
			ps->p++;
			level--;
			goto after_value;
		}
		return syntax_error(ps, ps->p, (isobj & (UINT64_C(1) << level)) ?
							"expected ',' or '}'" : "expected ',' or ']'");

expect_key:
		if (ps->p >= ps->end || *ps->p != '"')
			return syntax_error(ps, ps->p, "expected a string key");
		if (!parse_string(ps, &scratch))
			return false;
		skip_ws(ps);
		if (ps->p >= ps->end || *ps->p != ':')
			return syntax_error(ps, ps->p, "expected ':'");
		ps->p++;
	}
}

/*
 * Parse any value at ps->p (after whitespace).  Strings are decoded into so,
 * numbers described in num, containers skipped.  "depth" is the depth a
 * container starting here would have.
 */
static bool
parse_value(Parser *ps, int depth, StrOut *so, ValueKind *kind, NumTok *num)
{
	unsigned char c;

	if (ps->p >= ps->end)
		return syntax_error(ps, ps->p, "unexpected end of input");
	c = *ps->p;
	switch (c)
	{
		case '"':
			*kind = V_STRING;
			return parse_string(ps, so);
		case '{':
			*kind = V_OBJECT;
			return skip_container(ps, depth);
		case '[':
			*kind = V_ARRAY;
			return skip_container(ps, depth);
		case 't':
			*kind = V_TRUE;
			return parse_literal(ps, "true", 4);
		case 'f':
			*kind = V_FALSE;
			return parse_literal(ps, "false", 5);
		case 'n':
			*kind = V_NULL;
			return parse_literal(ps, "null", 4);
		default:
			if (c == '-' || (c >= '0' && c <= '9'))
			{
				*kind = V_NUMBER;
				return parse_number(ps, num);
			}
			return syntax_error(ps, ps->p, "unexpected character");
	}
}

/* ---------- field checks ---------- */

/*
 * Convert an integer token to int64 within [lo, hi]; false if it is not an
 * integer token or is out of range.
 */
static bool
num_to_int64(const NumTok *num, int64_t lo, int64_t hi, int64_t *result)
{
	const unsigned char *p = num->start;
	const unsigned char *end = num->start + num->len;
	uint64_t	v = 0;
	uint64_t	limit;

	if (!num->is_int)
		return false;
	if (num->neg)
		p++;
	/* magnitude limit: |INT64_MIN| for negatives */
	limit = num->neg ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;
	for (; p < end; p++)
	{
		unsigned	d = (unsigned) (*p - '0');

		if (v > (limit - d) / 10)
			return false;
		v = v * 10 + d;
	}
	if (num->neg)
	{
		int64_t		s = (v == (uint64_t) INT64_MAX + 1) ? INT64_MIN : -(int64_t) v;

		if (s < lo || s > hi)
			return false;
		*result = s;
	}
	else
	{
		if ((int64_t) v < lo || (int64_t) v > hi)
			return false;
		*result = (int64_t) v;
	}
	return true;
}

/*
 * Check an amount on its text: > 0 and <= 1e15, at most 63 characters and
 * not below 1e-307.  Working on the digits (not strtod) keeps "1e999",
 * "1e-400" and 1000000000000000.0000001 exact.  Returns NULL or a reason.
 */
static const char *
check_amount(const NumTok *num)
{
	const char *range = "amount must be a number > 0 and <= 1e15, or null";
	const unsigned char *p = num->start;
	const unsigned char *end = num->start + num->len;
	long		nint = 0;		/* digits before the decimal point */
	long		nfrac = 0;		/* digits after it */
	bool		in_frac = false;
	bool		have_nz = false;
	bool		nz_in_frac = false;
	long		nz_index = 0;	/* 1-based index of the first nonzero digit in its part */
	unsigned char first_nz = 0;
	bool		more_nz = false;	/* another nonzero digit follows */
	long		weight;			/* decimal weight of the first nonzero digit */
	long		expo = 0;

	if (num->len > 63)
		return "amount has more than 63 characters";
	if (num->neg)
		return range;
	for (; p < end && *p != 'e' && *p != 'E'; p++)
	{
		if (*p == '.')
		{
			in_frac = true;
			continue;
		}
		if (in_frac)
			nfrac++;
		else
			nint++;
		if (*p == '0')
			continue;
		if (have_nz)
			more_nz = true;
		else
		{
			have_nz = true;
			first_nz = *p;
			nz_in_frac = in_frac;
			nz_index = in_frac ? nfrac : nint;
		}
	}
	if (!have_nz)
		return range;
	weight = nz_in_frac ? -nz_index : nint - nz_index;
	if (p < end)
	{
		bool		eneg = false;

		p++;
		if (*p == '+' || *p == '-')
		{
			eneg = (*p == '-');
			p++;
		}
		/* saturate: 63 characters of text cannot come back from 100000 */
		for (; p < end; p++)
			if (expo < 100000)
				expo = expo * 10 + (*p - '0');
		if (eneg)
			expo = -expo;
	}
	weight += expo;
	if (weight > 15 || (weight == 15 && (first_nz != '1' || more_nz)))
		return range;
	if (weight < -307)
		return "amount is too small (below 1e-307)";
	return NULL;
}

static inline int
two_digits(const char *s)
{
	return (s[0] - '0') * 10 + (s[1] - '0');
}

static bool
all_digits(const char *s, size_t n)
{
	size_t		i;

	for (i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/*
 * Validate an RFC 3339 date-time (section 5.6), restricted to what
 * PostgreSQL's timestamptz accepts: year 0001-9999, at most 6 fraction
 * digits, offsets within +-15:59.  Returns NULL or a reason.
 */
static const char *
check_rfc3339(const char *s, size_t n)
{
	static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	const char *fmt = "created_at must be an RFC 3339 timestamp (YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+HH:MM)) or null";
	int			year,
				month,
				day,
				hour,
				minute,
				second;
	size_t		i;

	if (n < 20 || n > 32)
		return fmt;
	if (!all_digits(s, 4) || s[4] != '-' || !all_digits(s + 5, 2) || s[7] != '-' ||
		!all_digits(s + 8, 2) ||
		(s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
		!all_digits(s + 11, 2) || s[13] != ':' || !all_digits(s + 14, 2) ||
		s[16] != ':' || !all_digits(s + 17, 2))
		return fmt;
	i = 19;
	if (s[i] == '.')
	{
		size_t		f = 0;

		i++;
		while (i < n && s[i] >= '0' && s[i] <= '9')
		{
			i++;
			f++;
		}
		if (f == 0)
			return fmt;
		if (f > 6)
			return "created_at may have at most 6 fraction digits";
	}
	if (i >= n)
		return fmt;
	if (s[i] == 'Z' || s[i] == 'z')
	{
		if (i + 1 != n)
			return fmt;
	}
	else if (s[i] == '+' || s[i] == '-')
	{
		if (i + 6 != n || !all_digits(s + i + 1, 2) || s[i + 3] != ':' ||
			!all_digits(s + i + 4, 2))
			return fmt;
		if (two_digits(s + i + 1) > 15 || two_digits(s + i + 4) > 59)
			return "created_at offset must be within -15:59..+15:59";
	}
	else
		return fmt;

	year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + two_digits(s + 2);
	month = two_digits(s + 5);
	day = two_digits(s + 8);
	hour = two_digits(s + 11);
	minute = two_digits(s + 14);
	second = two_digits(s + 17);
	if (year < 1)
		return "created_at year must be between 0001 and 9999";
	if (month < 1 || month > 12 || day < 1 || day > mdays[month - 1] ||
		(month == 2 && day == 29 &&
		 !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))))
		return "created_at is not a valid calendar date";
	if (hour > 23 || minute > 59 || second > 60)
		return "created_at is not a valid time of day";
	return NULL;
}

/* ---------- top-level object ---------- */

/* Index of a known key, or -1. */
static int
find_key(const KeyName *keys, int nkeys, const StrOut *ks)
{
	int			i;

	if (ks->len >= KEYBUF_LEN)
		return -1;
	for (i = 0; i < nkeys; i++)
		if (keys[i].len == ks->len && memcmp(keys[i].name, ks->buf, ks->len) == 0)
			return i;
	return -1;
}

/*
 * Decode the next code point of an already validated string at *pp,
 * advancing it; -1 at the closing quote.
 */
static long
next_cp(const unsigned char **pp)
{
	const unsigned char *p = *pp;
	long		cp;

	if (*p == '"')
		return -1;
	if (*p == '\\')
	{
		switch (p[1])
		{
			case 'b':
				cp = '\b';
				break;
			case 'f':
				cp = '\f';
				break;
			case 'n':
				cp = '\n';
				break;
			case 'r':
				cp = '\r';
				break;
			case 't':
				cp = '\t';
				break;
			case 'u':
				cp = hex4(p + 2);
				if (cp >= 0xD800 && cp <= 0xDBFF)
				{
					cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(p + 8) - 0xDC00);
					*pp = p + 12;
					return cp;
				}
				*pp = p + 6;
				return cp;
			default:
				cp = p[1];
				break;
		}
		*pp = p + 2;
		return cp;
	}
	if (*p < 0x80)
	{
		*pp = p + 1;
		return *p;
	}
	/* raw UTF-8 (already validated) */
	if (*p < 0xE0)
	{
		*pp = p + 2;
		return ((long) (p[0] & 0x1F) << 6) | (p[1] & 0x3F);
	}
	if (*p < 0xF0)
	{
		*pp = p + 3;
		return ((long) (p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
	}
	*pp = p + 4;
	return ((long) (p[0] & 0x07) << 18) | ((long) (p[1] & 0x3F) << 12) |
		((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

/* Do two validated strings (offsets of their opening quotes) decode equal? */
static bool
same_string(const unsigned char *base, size_t a, size_t b)
{
	const unsigned char *pa = base + a + 1;
	const unsigned char *pb = base + b + 1;

	for (;;)
	{
		long		ca = next_cp(&pa);
		long		cb = next_cp(&pb);

		if (ca != cb)
			return false;
		if (ca < 0)
			return true;
	}
}

/*
 * Note an unknown key; false (with a field error) if it repeats an earlier
 * one or there are too many.
 */
static void
note_unknown_key(Parser *ps, KeySet *ks, const StrOut *key, size_t off)
{
	int			i;

	for (i = 0; i < ks->nseen; i++)
	{
		if (ks->seen[i].hash == key->hash && ks->seen[i].len == key->len &&
			same_string(ps->base, ks->seen[i].off, off))
		{
			char		snip[32];
			char		msg[64];

			safe_snippet(snip, sizeof(snip), key->buf, key->cap, key->len);
			snprintf(msg, sizeof(msg), "duplicate key \"%s\"", snip);
			field_error(ps, msg);
			return;
		}
	}
	if (ks->nseen >= OF_MSG_MAX_UNKNOWN_KEYS)
	{
		field_error(ps, "too many fields (more than 128 unknown keys)");
		return;
	}
	ks->seen[ks->nseen].hash = key->hash;
	ks->seen[ks->nseen].len = key->len;
	ks->seen[ks->nseen].off = off;
	ks->nseen++;
}

typedef enum
{
	MSG_ORDER,
	MSG_USER_EVENT
} MsgKind;

/* Per-message state the field handlers fill. */
typedef struct
{
	MsgKind		kind;
	OfOrderMsg *order;
	OfUserEventMsg *event;
	unsigned	seen_mask;		/* known keys present */
} MsgState;

/* Handle the value of a known order key. */
static bool
order_field(Parser *ps, MsgState *ms, int key)
{
	OfOrderMsg *o = ms->order;
	StrOut		so;
	ValueKind	k;
	NumTok		num;
	char		tsbuf[40];
	int64_t		v;
	const char *why;

	memset(&so, 0, sizeof(so));
	if (key == K_SYMBOL)
	{
		so.buf = o->symbol;
		so.cap = sizeof(o->symbol) - 1;
	}
	else if (key == K_CREATED_AT)
	{
		so.buf = tsbuf;
		so.cap = sizeof(tsbuf) - 1;
	}
	if (!parse_value(ps, 2, &so, &k, &num))
		return false;

	switch (key)
	{
		case K_ORDER_ID:
			if (k != V_NUMBER || !num_to_int64(&num, 1, INT64_MAX, &v))
				field_error(ps, "order_id must be an integer between 1 and 9223372036854775807");
			else
				o->order_id = v;
			break;
		case K_UID:
			if (k == V_NULL)
				break;
			if (k != V_NUMBER || !num.is_int)
				field_error(ps, "uid must be an integer or null");
			else if (!num_to_int64(&num, INT64_MIN, INT64_MAX, &v))
				field_error(ps, "uid is out of range for a 64-bit integer");
			else
			{
				o->has_uid = true;
				o->uid = v;
			}
			break;
		case K_SYMBOL:
			if (k == V_NULL)
				break;
			if (k != V_STRING)
				field_error(ps, "symbol must be a string or null");
			else if (so.has_nul)
				field_error(ps, "symbol must not contain \\u0000");
			else if (so.nchars < 1 || so.nchars > OF_SYMBOL_MAX_CHARS)
				field_error(ps, "symbol must be 1-12 characters");
			else
				o->has_symbol = true;
			break;
		case K_QUANTITY:
			if (k == V_NULL)
				break;
			if (k != V_NUMBER || !num_to_int64(&num, 1, INT32_MAX, &v))
				field_error(ps, "quantity must be an integer >= 1 and <= 2147483647, or null");
			else
			{
				o->has_quantity = true;
				o->quantity = (int32_t) v;
			}
			break;
		case K_AMOUNT:
			if (k == V_NULL)
				break;
			if (k != V_NUMBER)
				field_error(ps, "amount must be a number > 0 and <= 1e15, or null");
			else if ((why = check_amount(&num)) != NULL)
				field_error(ps, why);
			else
			{
				memcpy(o->amount, num.start, num.len);
				o->amount[num.len] = '\0';
				o->has_amount = true;
			}
			break;
		case K_CREATED_AT:
			if (k == V_NULL)
				break;
			if (k != V_STRING)
				field_error(ps, "created_at must be an RFC 3339 timestamp string or null");
			else if (so.len > so.cap || so.has_nul)
				field_error(ps, check_rfc3339("", 0));
			else if ((why = check_rfc3339(tsbuf, so.len)) != NULL)
				field_error(ps, why);
			else
			{
				memcpy(o->created_at, tsbuf, so.len + 1);
				o->has_created_at = true;
			}
			break;
	}
	return true;
}

/* Handle the value of a known user-event key. */
static bool
event_field(Parser *ps, MsgState *ms, int key)
{
	StrOut		so;
	ValueKind	k;
	NumTok		num;
	char		tbuf[4];

	memset(&so, 0, sizeof(so));
	so.buf = tbuf;
	so.cap = sizeof(tbuf) - 1;
	if (!parse_value(ps, 2, &so, &k, &num))
		return false;

	switch (key)
	{
		case K_TYPE:
			if (k != V_STRING)
				field_error(ps, "type must be a string: \"C\", \"R\", \"U\" or \"D\"");
			else if (so.len != 1 ||
					 (tbuf[0] != 'C' && tbuf[0] != 'R' && tbuf[0] != 'U' && tbuf[0] != 'D'))
				field_error(ps, "type must be one of \"C\", \"R\", \"U\", \"D\" (upper case)");
			else
				ms->event->type = tbuf[0];
			break;
		case K_CONDITION:
			if (k != V_OBJECT)
				field_error(ps, "condition must be an object");
			break;
		case K_NEW_VAL:
			if (k != V_OBJECT)
				field_error(ps, "new_val must be an object");
			break;
	}
	return true;
}

/*
 * Parse the whole body as one top-level object.  Returns false on a syntax
 * error; field errors are left in ps.
 */
static bool
parse_message(Parser *ps, MsgState *ms)
{
	const KeyName *keys = ms->kind == MSG_ORDER ? order_keys : event_keys;
	int			nkeys = ms->kind == MSG_ORDER ? 6 : 3;
	KeySet		unknown;
	char		keybuf[KEYBUF_LEN];
	StrOut		ks;

	unknown.nseen = 0;
	memset(&ks, 0, sizeof(ks));
	ks.buf = keybuf;
	ks.cap = sizeof(keybuf) - 1;
	ks.want_hash = true;

	skip_ws(ps);
	if (ps->p >= ps->end)
		return syntax_error(ps, ps->p, "empty body");
	if (*ps->p != '{')
	{
		ValueKind	k;
		NumTok		num;
		StrOut		scratch;

		/* still a syntax check first, so garbage is reported as such */
		memset(&scratch, 0, sizeof(scratch));
		if (!parse_value(ps, 1, &scratch, &k, &num))
			return false;
		skip_ws(ps);
		if (ps->p != ps->end)
			return syntax_error(ps, ps->p, "trailing data after the JSON value");
		field_error(ps, k == V_ARRAY ? "message must be a JSON object, not an array" :
					"message must be a JSON object");
		return true;
	}
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == '}')
		ps->p++;
	else
	{
		for (;;)
		{
			size_t		keyoff;
			int			key;

			if (ps->p >= ps->end)
				return syntax_error(ps, ps->p, "unexpected end of input");
			if (*ps->p != '"')
				return syntax_error(ps, ps->p, "expected a string key");
			keyoff = (size_t) (ps->p - ps->base);
			if (!parse_string(ps, &ks))
				return false;
			skip_ws(ps);
			if (ps->p >= ps->end || *ps->p != ':')
				return syntax_error(ps, ps->p, "expected ':'");
			ps->p++;
			skip_ws(ps);

			key = find_key(keys, nkeys, &ks);
			if (key >= 0)
			{
				if (ms->seen_mask & (1u << key))
				{
					char		msg[64];

					snprintf(msg, sizeof(msg), "duplicate key \"%s\"", keys[key].name);
					field_error(ps, msg);
				}
				ms->seen_mask |= 1u << key;
				if (!(ms->kind == MSG_ORDER ? order_field(ps, ms, key) :
					  event_field(ps, ms, key)))
					return false;
			}
			else
			{
				ValueKind	k;
				NumTok		num;
				StrOut		scratch;

				note_unknown_key(ps, &unknown, &ks, keyoff);
				memset(&scratch, 0, sizeof(scratch));
				if (!parse_value(ps, 2, &scratch, &k, &num))
					return false;
			}

			skip_ws(ps);
			if (ps->p >= ps->end)
				return syntax_error(ps, ps->p, "unexpected end of input");
			if (*ps->p == ',')
			{
				ps->p++;
				skip_ws(ps);
				continue;
			}
			if (*ps->p == '}')
			{
				ps->p++;
				break;
			}
			return syntax_error(ps, ps->p, "expected ',' or '}'");
		}
	}
	skip_ws(ps);
	if (ps->p != ps->end)
		return syntax_error(ps, ps->p, "trailing data after the JSON value");
	return true;
}

static void
parser_init(Parser *ps, const char *buf, size_t len)
{
	ps->base = (const unsigned char *) buf;
	ps->p = ps->base;
	ps->end = ps->base + len;
	ps->syn_err = NULL;
	ps->syn_off = 0;
	ps->field_err = false;
	ps->ferr[0] = '\0';
	ps->saw_nul = false;
}

/* Turn the parser's outcome into the reason text; false if there is one. */
static bool
report(Parser *ps, char *err, size_t errlen)
{
	if (ps->syn_err != NULL)
	{
		if (err != NULL && errlen > 0)
		{
			if (strcmp(ps->syn_err, "invalid UTF-8") == 0)
				snprintf(err, errlen, "invalid UTF-8 at byte %zu", ps->syn_off);
			else
				snprintf(err, errlen, "invalid JSON at byte %zu: %s", ps->syn_off, ps->syn_err);
		}
		return false;
	}
	if (ps->field_err)
	{
		set_err(err, errlen, ps->ferr);
		return false;
	}
	return true;
}

bool
of_parse_order(const char *buf, size_t len, OfOrderMsg *out, char *err, size_t errlen)
{
	Parser		ps;
	MsgState	ms;

	memset(out, 0, sizeof(*out));
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (buf == NULL)
	{
		/* NULL + 0 is undefined behaviour in C */
		buf = "";
		len = 0;
	}
	parser_init(&ps, buf, len);
	memset(&ms, 0, sizeof(ms));
	ms.kind = MSG_ORDER;
	ms.order = out;

	if (parse_message(&ps, &ms) && !ps.field_err)
	{
		if (!(ms.seen_mask & (1u << K_ORDER_ID)))
			field_error(&ps, "missing order_id");
		else if (!out->has_quantity && !out->has_amount)
			field_error(&ps, "quantity or amount must be given (both are missing or null)");
	}
	return report(&ps, err, errlen);
}

bool
of_parse_user_event(const char *buf, size_t len, OfUserEventMsg *out, char *err, size_t errlen)
{
	Parser		ps;
	MsgState	ms;

	memset(out, 0, sizeof(*out));
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (buf == NULL)
	{
		/* NULL + 0 is undefined behaviour in C */
		buf = "";
		len = 0;
	}
	parser_init(&ps, buf, len);
	memset(&ms, 0, sizeof(ms));
	ms.kind = MSG_USER_EVENT;
	ms.event = out;

	if (parse_message(&ps, &ms) && !ps.field_err)
	{
		if (ps.saw_nul)
			field_error(&ps, "\\u0000 is not allowed in a user event (jsonb cannot hold it)");
		else if (!(ms.seen_mask & (1u << K_TYPE)))
			field_error(&ps, "missing type");
		else if (out->type != 'C' && !(ms.seen_mask & (1u << K_CONDITION)))
			field_error(&ps, "a user event of type R, U or D needs a condition object");
		else if (out->type == 'U' && !(ms.seen_mask & (1u << K_NEW_VAL)))
			field_error(&ps, "a user event of type U needs a new_val object");
	}
	return report(&ps, err, errlen);
}
