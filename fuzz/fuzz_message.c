/*
 * fuzz_message.c
 *	  libFuzzer harness for the broker message decoder (src/order_message.c).
 *
 *	  Built and run by bench/fuzz.sh:
 *		clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *			fuzz/fuzz_message.c src/order_message.c
 *
 *	  Without libFuzzer, -DOF_FUZZ_STANDALONE adds a main() that replays files
 *	  given on the command line through the same checks (gcc works too):
 *		cc -std=c99 -DOF_FUZZ_STANDALONE -Isrc fuzz/fuzz_message.c \
 *			src/order_message.c -lm -o fuzz_replay && ./fuzz_replay fuzz/corpus/ *
 *	  With OF_FUZZ_VERBOSE set it prints each verdict (fuzz/differential.py
 *	  compares them with an independent implementation).
 *
 *	  Sanitizers catch out-of-bounds reads and undefined behaviour; the checks
 *	  below catch wrong answers: whatever the input, an accepted order must
 *	  satisfy every rule of the contract, a reason must be short printable
 *	  ASCII, both parsers and an independent naive validator (below) must
 *	  agree on whether the body is valid JSON, and parsing must be
 *	  deterministic.
 */
#define _POSIX_C_SOURCE 200809L	/* strnlen */

#include "order_message.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "fuzz_message: invariant failed: %s (line %d)\n", #cond, __LINE__); \
			abort(); \
		} \
	} while (0)

/* Independent UTF-8 check: number of code points, or -1 if malformed. */
static long
utf8_chars(const unsigned char *s, size_t n)
{
	size_t		i = 0;
	long		count = 0;

	while (i < n)
	{
		unsigned long cp;
		int			extra;
		int			k;

		if (s[i] < 0x80)
		{
			i++;
			count++;
			continue;
		}
		if ((s[i] & 0xE0) == 0xC0)
		{
			cp = s[i] & 0x1F;
			extra = 1;
		}
		else if ((s[i] & 0xF0) == 0xE0)
		{
			cp = s[i] & 0x0F;
			extra = 2;
		}
		else if ((s[i] & 0xF8) == 0xF0)
		{
			cp = s[i] & 0x07;
			extra = 3;
		}
		else
			return -1;
		if (i + (size_t) extra >= n)
			return -1;
		for (k = 1; k <= extra; k++)
		{
			if ((s[i + k] & 0xC0) != 0x80)
				return -1;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		/* overlong, surrogate, out of range */
		if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
			(extra == 3 && cp < 0x10000) || cp > 0x10FFFF ||
			(cp >= 0xD800 && cp <= 0xDFFF))
			return -1;
		i += (size_t) extra + 1;
		count++;
	}
	return count;
}

/*
 * An independent, deliberately naive JSON validator (recursive descent;
 * recursion is bounded by the 64-level limit), used as an oracle: the
 * parser must report a syntax error exactly when this one says the body is
 * not one valid JSON value of UTF-8 text nested at most 64 deep.
 */
typedef struct
{
	const unsigned char *p;
	const unsigned char *end;
} Ref;

static bool ref_value(Ref *r, int depth);

static void
ref_ws(Ref *r)
{
	while (r->p < r->end && strchr(" \t\r\n", *r->p) != NULL && *r->p != '\0')
		r->p++;
}

static int
ref_hex4(const unsigned char *p)
{
	int			v = 0;

	for (int i = 0; i < 4; i++)
	{
		int			c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static bool
ref_string(Ref *r)
{
	r->p++;						/* opening quote */
	for (;;)
	{
		if (r->p >= r->end)
			return false;
		if (*r->p == '"')
		{
			r->p++;
			return true;
		}
		if (*r->p < 0x20)
			return false;
		if (*r->p == '\\')
		{
			if (r->end - r->p < 2)
				return false;
			if (r->p[1] == 'u')
			{
				int			u;

				if (r->end - r->p < 6 || (u = ref_hex4(r->p + 2)) < 0)
					return false;
				r->p += 6;
				if (u >= 0xDC00 && u <= 0xDFFF)
					return false;
				if (u >= 0xD800 && u <= 0xDBFF)
				{
					int			lo;

					if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' ||
						(lo = ref_hex4(r->p + 2)) < 0xDC00 || lo > 0xDFFF)
						return false;
					r->p += 6;
				}
				continue;
			}
			if (strchr("\"\\/bfnrt", r->p[1]) == NULL || r->p[1] == '\0')
				return false;
			r->p += 2;
			continue;
		}
		if (*r->p >= 0x80)
		{
			/* find the sequence's extent and let utf8_chars judge it */
			size_t		n = (*r->p >= 0xF0) ? 4 : (*r->p >= 0xE0) ? 3 : 2;

			if ((size_t) (r->end - r->p) < n || utf8_chars(r->p, n) != 1)
				return false;
			r->p += n;
			continue;
		}
		r->p++;
	}
}

static bool
ref_digits(Ref *r)
{
	const unsigned char *s = r->p;

	while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
		r->p++;
	return r->p > s;
}

static bool
ref_number(Ref *r)
{
	if (*r->p == '-')
		r->p++;
	if (r->p < r->end && *r->p == '0')
		r->p++;
	else if (r->p >= r->end || *r->p < '1' || *r->p > '9' || !ref_digits(r))
		return false;
	if (r->p < r->end && *r->p == '.')
	{
		r->p++;
		if (!ref_digits(r))
			return false;
	}
	if (r->p < r->end && (*r->p == 'e' || *r->p == 'E'))
	{
		r->p++;
		if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
			r->p++;
		if (!ref_digits(r))
			return false;
	}
	return true;
}

static bool
ref_word(Ref *r, const char *w)
{
	size_t		n = strlen(w);

	if ((size_t) (r->end - r->p) < n || memcmp(r->p, w, n) != 0)
		return false;
	r->p += n;
	return true;
}

static bool
ref_container(Ref *r, int depth, bool obj)
{
	if (depth > OF_MSG_MAX_DEPTH)
		return false;
	r->p++;
	ref_ws(r);
	if (r->p < r->end && *r->p == (obj ? '}' : ']'))
	{
		r->p++;
		return true;
	}
	for (;;)
	{
		if (obj)
		{
			if (r->p >= r->end || *r->p != '"' || !ref_string(r))
				return false;
			ref_ws(r);
			if (r->p >= r->end || *r->p != ':')
				return false;
			r->p++;
			ref_ws(r);
		}
		if (!ref_value(r, depth + 1))
			return false;
		ref_ws(r);
		if (r->p >= r->end)
			return false;
		if (*r->p == ',')
		{
			r->p++;
			ref_ws(r);
			continue;
		}
		if (*r->p == (obj ? '}' : ']'))
		{
			r->p++;
			return true;
		}
		return false;
	}
}

/* depth: the depth a container starting here would have */
static bool
ref_value(Ref *r, int depth)
{
	if (r->p >= r->end)
		return false;
	switch (*r->p)
	{
		case '{':
			return ref_container(r, depth, true);
		case '[':
			return ref_container(r, depth, false);
		case '"':
			return ref_string(r);
		case 't':
			return ref_word(r, "true");
		case 'f':
			return ref_word(r, "false");
		case 'n':
			return ref_word(r, "null");
		default:
			return (*r->p == '-' || (*r->p >= '0' && *r->p <= '9')) && ref_number(r);
	}
}

static bool
ref_valid_json(const uint8_t *data, size_t size)
{
	Ref			r = {data, data + size};

	ref_ws(&r);
	if (!ref_value(&r, 1))
		return false;
	ref_ws(&r);
	return r.p == r.end;
}

static void
check_reason(bool ok, const char *err)
{
	size_t		n = 0;

	while (n < OF_MSG_ERR_LEN && err[n] != '\0')
		n++;
	CHECK(n < OF_MSG_ERR_LEN);
	if (ok)
		CHECK(n == 0);
	else
		CHECK(n > 0);
	for (size_t i = 0; i < n; i++)
		CHECK((unsigned char) err[i] >= 0x20 && (unsigned char) err[i] < 0x7f);
}

static bool
is_syntax_reason(const char *err)
{
	return strncmp(err, "invalid JSON", 12) == 0 || strncmp(err, "invalid UTF-8", 13) == 0;
}

static void
check_order(const OfOrderMsg *m)
{
	CHECK(m->order_id >= 1);
	CHECK(m->has_quantity || m->has_amount);
	if (m->has_quantity)
		CHECK(m->quantity >= 1);
	if (m->has_symbol)
	{
		size_t		n = strnlen(m->symbol, sizeof(m->symbol));
		long		chars;

		CHECK(n < sizeof(m->symbol));
		chars = utf8_chars((const unsigned char *) m->symbol, n);
		CHECK(chars >= 1 && chars <= OF_SYMBOL_MAX_CHARS);
	}
	if (m->has_amount)
	{
		size_t		n = strnlen(m->amount, sizeof(m->amount));
		char	   *end;
		double		v;

		CHECK(n > 0 && n < sizeof(m->amount));
		v = strtod(m->amount, &end);
		CHECK(end == m->amount + n);
		CHECK(isfinite(v) && v > 0 && v <= 1e15);
	}
	if (m->has_created_at)
	{
		size_t		n = strnlen(m->created_at, sizeof(m->created_at));

		CHECK(n >= 20 && n <= 32);
		CHECK(m->created_at[4] == '-' && m->created_at[7] == '-');
		CHECK(m->created_at[13] == ':' && m->created_at[16] == ':');
	}
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *) data;
	OfOrderMsg	o1,
				o2;
	OfUserEventMsg e1,
				e2;
	char		err_o[OF_MSG_ERR_LEN],
				err_o2[OF_MSG_ERR_LEN],
				err_e[OF_MSG_ERR_LEN],
				err_e2[OF_MSG_ERR_LEN];
	bool		ok_o,
				ok_e;

	ok_o = of_parse_order(buf, size, &o1, err_o, sizeof(err_o));
	check_reason(ok_o, err_o);
	if (ok_o)
		check_order(&o1);

	ok_e = of_parse_user_event(buf, size, &e1, err_e, sizeof(err_e));
	check_reason(ok_e, err_e);
	if (ok_e)
		CHECK(e1.type == 'C' || e1.type == 'R' || e1.type == 'U' || e1.type == 'D');

	/* the independent validator agrees on what is valid JSON */
	CHECK(ref_valid_json(data, size) == !is_syntax_reason(err_o));
	/* valid JSON is valid UTF-8 throughout */
	if (!is_syntax_reason(err_o))
		CHECK(utf8_chars(data, size) >= 0);

	/* syntax is judged the same way by both parsers (it wins over fields) */
	if (!ok_o && is_syntax_reason(err_o))
		CHECK(!ok_e && strcmp(err_o, err_e) == 0);
	if (!ok_e && is_syntax_reason(err_e))
		CHECK(!ok_o && strcmp(err_o, err_e) == 0);

	/* deterministic, and the result does not depend on err being given */
	CHECK(of_parse_order(buf, size, &o2, err_o2, sizeof(err_o2)) == ok_o);
	CHECK(strcmp(err_o, err_o2) == 0);
	if (ok_o)
		CHECK(memcmp(&o1, &o2, sizeof(o1)) == 0);
	CHECK(of_parse_order(buf, size, &o2, NULL, 0) == ok_o);
	CHECK(of_parse_user_event(buf, size, &e2, err_e2, 8) == ok_e);
	CHECK(strncmp(err_e, err_e2, 7) == 0 && strlen(err_e2) <= 7);
	return 0;
}

#ifdef OF_FUZZ_STANDALONE
#include <inttypes.h>

static const char *
u64text(int64_t v)
{
	static char b[4][24];
	static int	k;

	k = (k + 1) % 4;
	snprintf(b[k], sizeof(b[k]), "%" PRId64, v);
	return b[k];
}

/* Replay files through the checks above; exits non-zero on the first failure (abort). */
int
main(int argc, char **argv)
{
	static uint8_t buf[16 * 1024 * 1024];
	int			i;
	int			n = 0;
	bool		verbose = getenv("OF_FUZZ_VERBOSE") != NULL;

	for (i = 1; i < argc; i++)
	{
		FILE	   *f = fopen(argv[i], "rb");
		size_t		len;
		uint8_t    *copy;

		if (f == NULL)
		{
			perror(argv[i]);
			return 2;
		}
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		/* an exact-size copy, so a sanitizer sees any overread */
		copy = malloc(len ? len : 1);
		if (copy == NULL)
			return 2;
		memcpy(copy, buf, len);
		LLVMFuzzerTestOneInput(copy, len);
		if (verbose)
		{
			/* one line per input, for fuzz/differential.py */
			OfOrderMsg	m;
			OfUserEventMsg ev;
			char		err[OF_MSG_ERR_LEN];

			if (of_parse_order((const char *) copy, len, &m, err, sizeof(err)))
				printf("%s\torder\tOK\t%" PRId64 "\t%s\t%s\t%s\t%s\t%s\n", argv[i], m.order_id,
					   m.has_uid ? u64text(m.uid) : "-", m.has_symbol ? "S" : "-",
					   m.has_quantity ? u64text(m.quantity) : "-",
					   m.has_amount ? m.amount : "-", m.has_created_at ? m.created_at : "-");
			else
				printf("%s\torder\tERR\t%s\n", argv[i], err);
			if (of_parse_user_event((const char *) copy, len, &ev, err, sizeof(err)))
				printf("%s\tevent\tOK\t%c\n", argv[i], ev.type);
			else
				printf("%s\tevent\tERR\t%s\n", argv[i], err);
		}
		free(copy);
		n++;
	}
	printf("fuzz_replay: %d inputs, all invariants held\n", n);
	return 0;
}
#endif
