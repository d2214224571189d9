/*
 * fuzz_message.c
 *	  libFuzzer harness for the order-message decoder (src/order_message.c)
 *	  on top of PostgreSQL's JSON parser.  Built and run by fuzz/run.sh
 *	  (clang, -fsanitize=fuzzer,address,undefined, -DFRONTEND, linked with
 *	  -lpgcommon -lpgport).
 *
 *	  With -DOF_FUZZ_STANDALONE (no libFuzzer) main() replays the files
 *	  given on the command line through the same checks and prints one
 *	  verdict per file, for fuzz/differential.py.
 *
 *	  Sanitizers catch out-of-bounds reads and undefined behaviour; the checks
 *	  below catch wrong answers and leaks: an accepted order satisfies every
 *	  rule of the contract, a reason is short printable ASCII, valid JSON is
 *	  valid UTF-8, parsing is deterministic and does not depend on err, and
 *	  the decoder frees everything it allocates.
 */
#include "postgres_fe.h"

#include <math.h>

#include "mb/pg_wchar.h"
#include "order_message.h"

#define CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "fuzz_message: invariant failed: %s (line %d)\n", #cond, __LINE__); \
			abort(); \
		} \
	} while (0)

/*
 * The frontend palloc family, replaced (so libpgcommon's fe_memutils.o is
 * not linked) to count live allocations.  PostgreSQL 15's parser drops a
 * field name and a scalar it pstrdup'd when the token after them fails to
 * lex (the server's memory contexts reclaim them; 17 fixed it), so a
 * failed parse may leave two blocks behind: they are freed here, anything
 * more is a leak of ours.
 */
typedef struct Block
{
	struct Block *prev,
			   *next;
	size_t		size;
	int64		pad[];			/* MAXALIGN (8) on the platforms we fuzz on */
} Block;

static Block live = {&live, &live, 0};
static int	nlive;

void *
palloc(Size size)
{
	Block	   *b = malloc(sizeof(Block) + (size ? size : 1));

	CHECK(b != NULL);
	b->size = size;
	b->next = live.next;
	b->prev = &live;
	live.next->prev = b;
	live.next = b;
	nlive++;
	return b->pad;
}

void *
palloc0(Size size)
{
	return memset(palloc(size), 0, size);
}

void
pfree(void *p)
{
	Block	   *b = (Block *) ((char *) p - offsetof(Block, pad));

	b->prev->next = b->next;
	b->next->prev = b->prev;
	nlive--;
	free(b);
}

void *
repalloc(void *p, Size size)
{
	Block	   *b = (Block *) ((char *) p - offsetof(Block, pad));
	void	   *n = palloc(size);

	memcpy(n, p, Min(size, b->size));
	pfree(p);
	return n;
}

char *
pstrdup(const char *s)
{
	size_t		n = strlen(s) + 1;

	return memcpy(palloc(n), s, n);
}

static void
free_all(void)
{
	while (live.next != &live)
		pfree(live.next->pad);
}

static void
check_reason(bool ok, const char *err)
{
	size_t		n = strnlen(err, OF_MSG_ERR_LEN);

	CHECK(n < OF_MSG_ERR_LEN);
	CHECK(ok ? n == 0 : n > 0);
	for (size_t i = 0; i < n; i++)
		CHECK((unsigned char) err[i] >= 0x20 && (unsigned char) err[i] < 0x7f);
}

static bool
is_syntax_reason(const char *err)
{
	return strncmp(err, "invalid JSON", 12) == 0 || strncmp(err, "invalid UTF-8", 13) == 0;
}

static bool
valid_utf8(const char *s, size_t n)
{
	return memchr(s, '\0', n) == NULL &&
		pg_encoding_verifymbstr(PG_UTF8, s, (int) n) == (int) n;
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
		int			chars = 0;

		CHECK(n >= 1 && n < sizeof(m->symbol) && valid_utf8(m->symbol, n));
		for (size_t i = 0; i < n; i++)
			chars += ((unsigned char) m->symbol[i] & 0xC0) != 0x80;
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

/* Parse, then account for every allocation. */
static bool
parse(const char *buf, size_t size, OfOrderMsg *m, char *err, size_t errlen)
{
	bool		ok = of_parse_order(buf, size, m, err, errlen);

	CHECK(ok ? nlive == 0 : nlive <= 2);
	free_all();
	return ok;
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *) data;
	OfOrderMsg	m1,
				m2;
	char		err1[OF_MSG_ERR_LEN],
				err2[OF_MSG_ERR_LEN];
	bool		ok;

	ok = parse(buf, size, &m1, err1, sizeof(err1));
	check_reason(ok, err1);
	if (ok)
		check_order(&m1);
	/* valid JSON is valid UTF-8 throughout */
	if (!is_syntax_reason(err1))
		CHECK(valid_utf8(buf, size));
	/* deterministic, and the result does not depend on err being given */
	CHECK(parse(buf, size, &m2, err2, sizeof(err2)) == ok);
	CHECK(strcmp(err1, err2) == 0);
	if (ok)
		CHECK(memcmp(&m1, &m2, sizeof(m1)) == 0);
	CHECK(parse(buf, size, &m2, NULL, 0) == ok);
	CHECK(parse(buf, size, &m2, err2, 8) == ok);
	CHECK(strncmp(err1, err2, 7) == 0 && strlen(err2) <= 7);
	return 0;
}

#ifdef OF_FUZZ_STANDALONE
/*
 * Replay files: "<file>\tOK\t<order_id>" or "<file>\tERR\t<reason>" per
 * file; exits non-zero (abort) on the first broken invariant.
 */
int
main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
	{
		FILE	   *f = fopen(argv[i], "rb");
		static char buf[1024 * 1024];
		size_t		len;
		char	   *copy;
		OfOrderMsg	m;
		char		err[OF_MSG_ERR_LEN];

		if (f == NULL)
		{
			perror(argv[i]);
			return 2;
		}
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		/* an exact-size copy, so a sanitizer sees any overread */
		copy = malloc(len ? len : 1);
		CHECK(copy != NULL);
		memcpy(copy, buf, len);
		LLVMFuzzerTestOneInput((const uint8_t *) copy, len);
		if (parse(copy, len, &m, err, sizeof(err)))
			printf("%s\tOK\t" INT64_FORMAT "\n", argv[i], m.order_id);
		else
			printf("%s\tERR\t%s\n", argv[i], err);
		free(copy);
	}
	return 0;
}
#endif
