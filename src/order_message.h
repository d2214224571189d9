/*-------------------------------------------------------------------------
 *
 * order_message.h
 *	  Decoder for the order messages ordflow consumes from the broker
 *	  (routing key order.created), built on PostgreSQL's JSON parser
 *	  (common/jsonapi.h).  User-event bodies are not decoded here: they are
 *	  validated once, in SQL, by ordflow.user_event().
 *
 *	  Rules (README.md, "Messages"): the body must be valid UTF-8
 *	  holding exactly one JSON value (RFC 8259, whitespace around it allowed)
 *	  that is an object; nesting deeper than OF_MSG_MAX_DEPTH is refused, and
 *	  so are \u0000 and lone surrogates anywhere in it; duplicate top-level
 *	  keys are refused; unknown fields are ignored (at most
 *	  OF_MSG_MAX_UNKNOWN_KEYS of them, so that the duplicate check stays
 *	  bounded).
 *
 *	  The same source builds into the server and, with -DFRONTEND and
 *	  -lpgcommon -lpgport, into the unit tests and the fuzzer.  Include
 *	  postgres.h (or postgres_fe.h) first.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDER_MESSAGE_H
#define ORDER_MESSAGE_H

#define OF_SYMBOL_MAX_CHARS 12
#define OF_MSG_ERR_LEN 160

/* An object or array nested deeper than this (top-level object = 1) is refused. */
#define OF_MSG_MAX_DEPTH 64
/* Top-level keys a message may carry besides the ones we read. */
#define OF_MSG_MAX_UNKNOWN_KEYS 128

typedef struct OfOrderMsg
{
	int64		order_id;			/* required, >= 1 */
	bool		has_uid;			/* false: absent or null -> no credit check */
	int64		uid;
	bool		has_symbol;
	char		symbol[OF_SYMBOL_MAX_CHARS * 4 + 1];	/* decoded UTF-8, NUL-terminated */
	bool		has_quantity;
	int32		quantity;			/* >= 1 */
	bool		has_amount;
	char		amount[64];			/* the JSON number text, validated > 0 and <= 1e15 */
	bool		has_created_at;
	char		created_at[40];		/* validated RFC 3339 text, as received */
} OfOrderMsg;

/*
 * Return true on success; on failure false and a short English reason in err
 * (e.g. "invalid JSON at byte 17: expected ',' or '}'", "invalid UTF-8 at
 * byte 3", "missing order_id", "symbol must be 1-12 characters",
 * "duplicate key \"order_id\"", "amount must be a number > 0 and <= 1e15 ...").
 * Byte offsets in reasons count from 0.  The reason is always valid ASCII and
 * never echoes more than a few bytes of input.  A syntax error is reported in
 * preference to any field error.  err may be NULL (or errlen 0).
 *
 * On failure the contents of *out are unspecified.
 *
 * Amounts: at most 63 characters of JSON number text; values below 1e-307
 * (which would underflow a double) are refused as too small.
 *
 * In the server: call it inside a per-message error boundary (a
 * subtransaction or PG_TRY with a memory context reset).  pg_parse_json may
 * raise an ERROR: out of memory, stack depth (54001; the depth pre-check
 * makes it unlikely, but the parser does not promise anything), or, in a
 * database whose encoding is not UTF8, a \u escape the server encoding
 * cannot represent.  In such a database PostgreSQL 15's lexer also converts
 * \u escapes above U+007F to the server encoding, so a symbol written that
 * way is not UTF-8 (every test database is UTF8; raw UTF-8 text is fine).
 * It allocates in CurrentMemoryContext and frees what it allocates, except
 * on some syntax errors where PostgreSQL 15 leaks a field name or a scalar
 * (fixed in 17): use a short-lived context.
 */
extern bool of_parse_order(const char *buf, size_t len, OfOrderMsg *out,
						   char *err, size_t errlen);

#endif							/* ORDER_MESSAGE_H */
