/*-------------------------------------------------------------------------
 *
 * order_message.h
 *	  Strict decoder for the JSON messages ordflow consumes from the broker:
 *	  orders (routing key order.created) and user events (user.<type>).
 *
 *	  Pure C99, no PostgreSQL headers and no allocation: the parsers fill
 *	  caller-provided structs and use a small bounded stack, so the code can
 *	  be unit-tested and fuzzed outside the server.
 *
 *	  Rules (see SPEC.md "Order messages", "User events over the broker"):
 *	  the body must be valid UTF-8 holding exactly one JSON value (RFC 8259,
 *	  whitespace around it allowed) that is an object; nesting deeper than
 *	  OF_MSG_MAX_DEPTH is refused; duplicate top-level keys are refused;
 *	  unknown fields are ignored (at most OF_MSG_MAX_UNKNOWN_KEYS of them, so
 *	  that the duplicate check stays bounded).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDER_MESSAGE_H
#define ORDER_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OF_SYMBOL_MAX_CHARS 12
#define OF_MSG_ERR_LEN 160

/* An object or array nested deeper than this (top-level object = 1) is refused. */
#define OF_MSG_MAX_DEPTH 64
/* Top-level keys a message may carry besides the ones we read. */
#define OF_MSG_MAX_UNKNOWN_KEYS 128

typedef struct OfOrderMsg
{
	int64_t		order_id;			/* required, >= 1 */
	bool		has_uid;			/* false: absent or null -> no credit check */
	int64_t		uid;
	bool		has_symbol;
	char		symbol[OF_SYMBOL_MAX_CHARS * 4 + 1];	/* decoded UTF-8, NUL-terminated */
	bool		has_quantity;
	int32_t		quantity;			/* >= 1 */
	bool		has_amount;
	char		amount[64];			/* the JSON number text, validated > 0 and <= 1e15 */
	bool		has_created_at;
	char		created_at[40];		/* validated RFC 3339 text, as received */
} OfOrderMsg;

typedef struct OfUserEventMsg
{
	char		type;				/* 'C', 'R', 'U' or 'D' */
} OfUserEventMsg;

/*
 * Return true on success; on failure false and a short English reason in err
 * (e.g. "invalid JSON at byte 17: ...", "missing order_id",
 * "quantity must be an integer >= 1 ...", "symbol must be 1-12 characters",
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
 * User events: "type" must be exactly one of "C", "R", "U", "D"; "condition"
 * and "new_val", when present, must be objects; R/U/D need "condition" and U
 * needs "new_val".  Since the whole body is later cast to jsonb, \u0000 is
 * refused anywhere in it.  Everything else is checked in SQL by
 * ordflow.user_event().
 */
extern bool of_parse_order(const char *buf, size_t len, OfOrderMsg *out,
						   char *err, size_t errlen);
extern bool of_parse_user_event(const char *buf, size_t len, OfUserEventMsg *out,
								char *err, size_t errlen);

#endif							/* ORDER_MESSAGE_H */
