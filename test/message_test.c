/*
 * message_test.c
 *	  Unit test of the broker message decoder (src/order_message.c).
 *
 *	  cc -std=c99 -Wall -Wextra -Werror -Isrc test/message_test.c \
 *		 src/order_message.c -o message_test && ./message_test
 *
 *	  Every case says whether the body must be accepted and then which fields
 *	  it decodes to, or which reason (a substring) it must be refused with.
 *	  Exits non-zero if any case fails.
 */
#include "postgres_fe.h"

#include <inttypes.h>

#include "order_message.h"

typedef struct Case
{
	const char *name;
	const char *body;
	size_t		len;			/* 0: strlen(body) */
	const char *reason;			/* NULL: must succeed; else a substring of the reason */
	/* expected fields on success (orders); NULL means absent / null */
	const char *order_id;
	const char *uid;
	const char *symbol;
	const char *quantity;
	const char *amount;
	const char *created_at;
} Case;

#define OK_ORDER(n, b, id, u, s, q, a, c) \
	{n, b, 0, NULL, id, u, s, q, a, c}
#define BAD_ORDER(n, b, r) \
	{n, b, 0, r, NULL, NULL, NULL, NULL, NULL, NULL}
#define BAD_ORDER_LEN(n, b, r) \
	{n, b, sizeof(b) - 1, r, NULL, NULL, NULL, NULL, NULL, NULL}

static const Case cases[] = {
	/* ---- valid orders of every shape ---- */
	OK_ORDER("spec example",
			 "{\"order_id\": 123, \"uid\": 7, \"symbol\": \"AB3\", \"quantity\": 4, \"amount\": null,\n"
			 " \"created_at\": \"2026-11-21T12:00:00.123456Z\"}",
			 "123", "7", "AB3", "4", NULL, "2026-11-21T12:00:00.123456Z"),
	OK_ORDER("quantity only", "{\"order_id\":1,\"quantity\":1}", "1", NULL, NULL, "1", NULL, NULL),
	OK_ORDER("amount only", "{\"order_id\":2,\"amount\":12.50}", "2", NULL, NULL, NULL, "12.50", NULL),
	OK_ORDER("all nulls but amount",
			 "{\"order_id\":3,\"uid\":null,\"symbol\":null,\"quantity\":null,\"amount\":0.01,\"created_at\":null}",
			 "3", NULL, NULL, NULL, "0.01", NULL),
	OK_ORDER("quantity and amount", "{\"order_id\":4,\"uid\":9,\"quantity\":10,\"amount\":99.5}",
			 "4", "9", NULL, "10", "99.5", NULL),
	OK_ORDER("fields in any order", "{\"amount\":5,\"symbol\":\"X\",\"order_id\":5}",
			 "5", NULL, "X", NULL, "5", NULL),
	OK_ORDER("order_id INT64_MAX", "{\"order_id\":9223372036854775807,\"quantity\":1}",
			 "9223372036854775807", NULL, NULL, "1", NULL, NULL),
	OK_ORDER("uid INT64_MIN", "{\"order_id\":6,\"uid\":-9223372036854775808,\"quantity\":1}",
			 "6", "-9223372036854775808", NULL, "1", NULL, NULL),
	OK_ORDER("uid zero and -0", "{\"order_id\":7,\"uid\":-0,\"quantity\":1}", "7", "0", NULL, "1", NULL, NULL),
	OK_ORDER("uid INT64_MAX", "{\"order_id\":7,\"uid\":9223372036854775807,\"quantity\":1}",
			 "7", "9223372036854775807", NULL, "1", NULL, NULL),
	OK_ORDER("quantity INT32_MAX", "{\"order_id\":8,\"quantity\":2147483647}",
			 "8", NULL, NULL, "2147483647", NULL, NULL),
	OK_ORDER("amount exactly 1e15", "{\"order_id\":9,\"amount\":1e15}", "9", NULL, NULL, NULL, "1e15", NULL),
	OK_ORDER("amount 1E+15", "{\"order_id\":9,\"amount\":1E+15}", "9", NULL, NULL, NULL, "1E+15", NULL),
	OK_ORDER("amount 1000000000000000.000", "{\"order_id\":9,\"amount\":1000000000000000.000}",
			 "9", NULL, NULL, NULL, "1000000000000000.000", NULL),
	OK_ORDER("amount 999999999999999.99", "{\"order_id\":9,\"amount\":999999999999999.99}",
			 "9", NULL, NULL, NULL, "999999999999999.99", NULL),
	OK_ORDER("amount 0.000001e21 (=1e15)", "{\"order_id\":9,\"amount\":0.000001e21}",
			 "9", NULL, NULL, NULL, "0.000001e21", NULL),
	OK_ORDER("amount 1e-307 smallest", "{\"order_id\":9,\"amount\":1e-307}", "9", NULL, NULL, NULL, "1e-307", NULL),
	OK_ORDER("amount 0.5e0", "{\"order_id\":9,\"amount\":0.5e0}", "9", NULL, NULL, NULL, "0.5e0", NULL),
	OK_ORDER("symbol 12 ASCII", "{\"order_id\":10,\"symbol\":\"ABCDEFGHIJKL\",\"quantity\":1}",
			 "10", NULL, "ABCDEFGHIJKL", "1", NULL, NULL),
	OK_ORDER("symbol 12 two-byte chars",
			 "{\"order_id\":11,\"symbol\":\"\xc3\x84\xc3\x96\xc3\x9c\xc3\xa4\xc3\xb6\xc3\xbc\xc3\x9f\xc3\xa9\xc3\xa8\xc3\xaa\xc3\xab\xc3\xaf\",\"quantity\":1}",
			 "11", NULL, "\xc3\x84\xc3\x96\xc3\x9c\xc3\xa4\xc3\xb6\xc3\xbc\xc3\x9f\xc3\xa9\xc3\xa8\xc3\xaa\xc3\xab\xc3\xaf", "1", NULL, NULL),
	OK_ORDER("symbol 12 four-byte chars raw",
			 "{\"order_id\":12,\"quantity\":1,\"symbol\":\"\xf0\x9f\x98\x80\xf0\x9f\x98\x81\xf0\x9f\x98\x82\xf0\x9f\x98\x83\xf0\x9f\x98\x84\xf0\x9f\x98\x85\xf0\x9f\x98\x86\xf0\x9f\x98\x87\xf0\x9f\x98\x88\xf0\x9f\x98\x89\xf0\x9f\x98\x8a\xf0\x9f\x98\x8b\"}",
			 "12", NULL, "\xf0\x9f\x98\x80\xf0\x9f\x98\x81\xf0\x9f\x98\x82\xf0\x9f\x98\x83\xf0\x9f\x98\x84\xf0\x9f\x98\x85\xf0\x9f\x98\x86\xf0\x9f\x98\x87\xf0\x9f\x98\x88\xf0\x9f\x98\x89\xf0\x9f\x98\x8a\xf0\x9f\x98\x8b", "1", NULL, NULL),
	OK_ORDER("symbol 12 surrogate pairs escaped",
			 "{\"order_id\":13,\"quantity\":1,\"symbol\":\"\\ud83d\\ude00\\uD83D\\uDE00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\\ud83d\\ude00\"}",
			 "13", NULL, "\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80", "1", NULL, NULL),
	OK_ORDER("symbol escapes decoded", "{\"order_id\":14,\"quantity\":1,\"symbol\":\"A\\\"B\\\\C\\/\\u00e9\\n\"}",
			 "14", NULL, "A\"B\\C/\xc3\xa9\n", "1", NULL, NULL),
	OK_ORDER("created_at offset +05:30", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00+05:30\"}",
			 "15", NULL, NULL, "1", NULL, "2026-11-21T12:00:00+05:30"),
	OK_ORDER("created_at lower t/z", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"2026-11-21t12:00:00.5z\"}",
			 "15", NULL, NULL, "1", NULL, "2026-11-21t12:00:00.5z"),
	OK_ORDER("created_at space separator, -15:59", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"2026-11-21 12:00:00-15:59\"}",
			 "15", NULL, NULL, "1", NULL, "2026-11-21 12:00:00-15:59"),
	OK_ORDER("created_at leap day 2024", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"2024-02-29T00:00:00Z\"}",
			 "15", NULL, NULL, "1", NULL, "2024-02-29T00:00:00Z"),
	OK_ORDER("created_at leap day 2000", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"2000-02-29T23:59:59.999999Z\"}",
			 "15", NULL, NULL, "1", NULL, "2000-02-29T23:59:59.999999Z"),
	OK_ORDER("created_at leap second", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"2016-12-31T23:59:60Z\"}",
			 "15", NULL, NULL, "1", NULL, "2016-12-31T23:59:60Z"),
	OK_ORDER("created_at escaped digits", "{\"order_id\":15,\"quantity\":1,\"created_at\":\"\\u0032026-01-31T00:00:00Z\"}",
			 "15", NULL, NULL, "1", NULL, "2026-01-31T00:00:00Z"),
	OK_ORDER("unknown fields ignored",
			 "{\"order_id\":16,\"quantity\":2,\"note\":{\"a\":[1,2,{\"b\":null}],\"c\":true},\"tags\":[],\"o\":{},\"x\":false,\"n\":-1.5e-3,\"z\":\"\\u0041\"}",
			 "16", NULL, NULL, "2", NULL, NULL),
	OK_ORDER("escaped key order\\u005fid", "{\"order\\u005fid\":17,\"quantity\":1}", "17", NULL, NULL, "1", NULL, NULL),
	OK_ORDER("whitespace everywhere", " \t\r\n{ \"order_id\" :\n18 ,\t\"quantity\"\r: 3 } \n\t ",
			 "18", NULL, NULL, "3", NULL, NULL),
	OK_ORDER("unknown key that is a prefix of a known one", "{\"order\":\"x\",\"order_id\":19,\"quantit\":1,\"quantity\":1}",
			 "19", NULL, NULL, "1", NULL, NULL),

	/* ---- not JSON / wrong top level ---- */
	BAD_ORDER("empty body", "", "empty body"),
	BAD_ORDER("only whitespace", "  \n\t ", "empty body"),
	BAD_ORDER("plain text", "hello world", "invalid JSON at byte 0"),
	BAD_ORDER("top-level array", "[{\"order_id\":1,\"quantity\":1}]", "must be a JSON object, not an array"),
	BAD_ORDER("top-level null", "null", "must be a JSON object"),
	BAD_ORDER("top-level number", "42", "must be a JSON object"),
	BAD_ORDER("top-level string", "\"order\"", "must be a JSON object"),
	BAD_ORDER("truncated after key", "{\"order_id\"", "invalid JSON at byte 11: unexpected end of input"),
	BAD_ORDER("truncated after value", "{\"order_id\":1,\"quantity\":1", "invalid JSON at byte 26: unexpected end of input"),
	BAD_ORDER("truncated inside string", "{\"order_id\":1,\"symbol\":\"AB", "unterminated string"),
	BAD_ORDER("truncated inside number", "{\"order_id\":1,\"amount\":1.", "invalid JSON at byte 23: invalid number"),
	BAD_ORDER("truncated inside literal", "{\"order_id\":1,\"uid\":nul", "invalid JSON at byte 20: invalid token"),
	BAD_ORDER("trailing comma", "{\"order_id\":1,\"quantity\":1,}", "expected a string key"),
	BAD_ORDER("trailing garbage", "{\"order_id\":1,\"quantity\":1} x", "invalid JSON at byte 28: invalid token"),
	BAD_ORDER("two objects", "{\"order_id\":1,\"quantity\":1}{\"order_id\":2,\"quantity\":1}", "trailing data"),
	BAD_ORDER("extra brace", "{\"order_id\":1,\"quantity\":1}}", "trailing data"),
	BAD_ORDER("single quotes", "{'order_id':1}", "invalid JSON at byte 1: invalid token"),
	BAD_ORDER("unquoted key", "{order_id:1}", "invalid JSON at byte 1: invalid token"),
	BAD_ORDER("comment", "{\"order_id\":1,/*c*/\"quantity\":1}", "invalid JSON at byte 14: invalid token"),
	BAD_ORDER("missing colon", "{\"order_id\" 1}", "expected ':'"),
	BAD_ORDER("missing comma", "{\"order_id\":1 \"quantity\":1}", "expected ',' or '}'"),
	BAD_ORDER("NaN amount", "{\"order_id\":1,\"amount\":NaN}", "invalid JSON at byte 23: invalid token"),
	BAD_ORDER("Infinity amount", "{\"order_id\":1,\"amount\":Infinity}", "invalid JSON at byte 23: invalid token"),
	BAD_ORDER("leading zero", "{\"order_id\":01,\"quantity\":1}", "invalid JSON at byte 12: invalid number"),
	BAD_ORDER("plus sign", "{\"order_id\":+1,\"quantity\":1}", "invalid JSON at byte 12: invalid token"),
	BAD_ORDER("leading dot", "{\"order_id\":1,\"amount\":.5}", "invalid JSON at byte 23: invalid token"),
	BAD_ORDER("empty exponent", "{\"order_id\":1,\"amount\":1e}", "invalid JSON at byte 23: invalid number"),
	BAD_ORDER("hex number", "{\"order_id\":0x10,\"quantity\":1}", "invalid JSON at byte 12: invalid number"),
	BAD_ORDER("True capitalised", "{\"order_id\":1,\"quantity\":1,\"x\":True}", "invalid JSON at byte 31: invalid token"),
	BAD_ORDER("unclosed nested array", "{\"order_id\":1,\"quantity\":1,\"x\":[1,2}", "expected ',' or ']'"),
	BAD_ORDER("array trailing comma", "{\"order_id\":1,\"quantity\":1,\"x\":[1,]}", "invalid JSON at byte 34: expected a value"),
	BAD_ORDER_LEN("raw NUL byte outside string", "{\"order_id\":1,\0\"quantity\":1}", "invalid JSON at byte 14"),
	BAD_ORDER_LEN("raw NUL byte inside string", "{\"order_id\":1,\"quantity\":1,\"x\":\"a\0b\"}", "control character in string"),
	BAD_ORDER("raw newline inside string", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"A\nB\"}", "control character in string"),
	BAD_ORDER("\\u0000 in an unknown field", "{\"order_id\":1,\"quantity\":1,\"z\":\"\\u0000\"}", "invalid JSON at byte 31: \\u0000 is not allowed"),
	BAD_ORDER("\\u0000 in an unknown key", "{\"order_id\":1,\"quantity\":1,\"a\\u0000\":1}", "invalid JSON at byte 27: \\u0000 is not allowed"),
	BAD_ORDER("\\u0000 nested", "{\"order_id\":1,\"quantity\":1,\"x\":[{\"a\":\"\\u0000\"}]}", "invalid JSON at byte 37: \\u0000 is not allowed"),
	BAD_ORDER("object: neither key nor '}'", "{,\"order_id\":1}", "invalid JSON at byte 1: expected a string key or '}'"),
	BAD_ORDER("array: neither value nor ']'", "{\"order_id\":1,\"x\":[}", "invalid JSON at byte 19: expected a value"),
	BAD_ORDER("value expected after ':'", "{\"order_id\":}", "invalid JSON at byte 12: expected a value"),
	BAD_ORDER("key expected after ','", "{\"order_id\":1,1:2}", "invalid JSON at byte 14: expected a string key"),
	BAD_ORDER("control character offset", "{\"order_id\":1,\"s\":\"ab\tc\"}", "invalid JSON at byte 21: control character in string"),
	BAD_ORDER("invalid escape offset", "{\"order_id\":1,\"s\":\"ab\\qc\"}", "invalid JSON at byte 22: invalid escape in string"),
	BAD_ORDER("unterminated string offset", "{\"order_id\":1,\"s\":\"abc", "invalid JSON at byte 18: unterminated string"),
	BAD_ORDER("end inside an escape", "{\"order_id\":1,\"s\":\"ab\\", "invalid JSON at byte 18: unterminated string"),
	BAD_ORDER("second top-level value", "{\"order_id\":1,\"quantity\":1} {}", "invalid JSON at byte 28: trailing data after the JSON value"),
	BAD_ORDER("top-level scalar then garbage", "42 x", "invalid JSON at byte 3: invalid token"),
	BAD_ORDER("invalid UTF-8 wins over a JSON error before it", "x \xff", "invalid UTF-8 at byte 2"),
	BAD_ORDER("syntax error wins over field error", "{\"order_id\":\"x\",\"quantity\":", "unexpected end of input"),

	/* ---- order_id ---- */
	BAD_ORDER("missing order_id", "{\"uid\":1,\"quantity\":1}", "missing order_id"),
	BAD_ORDER("empty object", "{}", "missing order_id"),
	BAD_ORDER("order_id null", "{\"order_id\":null,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id as string", "{\"order_id\":\"7\",\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id zero", "{\"order_id\":0,\"quantity\":1}", "order_id must be an integer between 1"),
	BAD_ORDER("order_id negative", "{\"order_id\":-1,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id fractional", "{\"order_id\":1.0,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id exponent", "{\"order_id\":1e3,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id INT64_MAX+1", "{\"order_id\":9223372036854775808,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id 20 digits", "{\"order_id\":12345678901234567890,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id 40 digits", "{\"order_id\":1234567890123456789012345678901234567890,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id boolean", "{\"order_id\":true,\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id object", "{\"order_id\":{\"v\":1},\"quantity\":1}", "order_id must be an integer"),
	BAD_ORDER("order_id array", "{\"order_id\":[1],\"quantity\":1}", "order_id must be an integer"),

	/* ---- uid ---- */
	BAD_ORDER("uid as string", "{\"order_id\":1,\"uid\":\"7\",\"quantity\":1}", "uid must be an integer or null"),
	BAD_ORDER("uid fractional", "{\"order_id\":1,\"uid\":1.5,\"quantity\":1}", "uid must be an integer or null"),
	BAD_ORDER("uid exponent", "{\"order_id\":1,\"uid\":7e0,\"quantity\":1}", "uid must be an integer or null"),
	BAD_ORDER("uid boolean", "{\"order_id\":1,\"uid\":false,\"quantity\":1}", "uid must be an integer or null"),
	BAD_ORDER("uid overflow", "{\"order_id\":1,\"uid\":9223372036854775808,\"quantity\":1}", "uid is out of range"),
	BAD_ORDER("uid underflow", "{\"order_id\":1,\"uid\":-9223372036854775809,\"quantity\":1}", "uid is out of range"),

	/* ---- symbol ---- */
	BAD_ORDER("symbol empty", "{\"order_id\":1,\"symbol\":\"\",\"quantity\":1}", "symbol must be 1-12 characters"),
	BAD_ORDER("symbol 13 ASCII", "{\"order_id\":1,\"symbol\":\"ABCDEFGHIJKLM\",\"quantity\":1}", "symbol must be 1-12 characters"),
	BAD_ORDER("symbol 13 four-byte chars",
			  "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xf0\x9f\x98\x80\xf0\x9f\x98\x81\xf0\x9f\x98\x82\xf0\x9f\x98\x83\xf0\x9f\x98\x84\xf0\x9f\x98\x85\xf0\x9f\x98\x86\xf0\x9f\x98\x87\xf0\x9f\x98\x88\xf0\x9f\x98\x89\xf0\x9f\x98\x8a\xf0\x9f\x98\x8b\xf0\x9f\x98\x8c\"}",
			  "symbol must be 1-12 characters"),
	BAD_ORDER("symbol 13 two-byte chars",
			  "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}",
			  "symbol must be 1-12 characters"),
	BAD_ORDER("symbol number", "{\"order_id\":1,\"symbol\":123,\"quantity\":1}", "symbol must be a string or null"),
	BAD_ORDER("symbol array", "{\"order_id\":1,\"symbol\":[\"A\"],\"quantity\":1}", "symbol must be a string or null"),
	BAD_ORDER("symbol with \\u0000", "{\"order_id\":1,\"symbol\":\"A\\u0000B\",\"quantity\":1}", "invalid JSON at byte 23: \\u0000 is not allowed"),

	/* ---- quantity ---- */
	BAD_ORDER("quantity zero", "{\"order_id\":1,\"quantity\":0}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity negative", "{\"order_id\":1,\"quantity\":-3}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity fractional", "{\"order_id\":1,\"quantity\":1.5}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity 2.0", "{\"order_id\":1,\"quantity\":2.0}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity exponent", "{\"order_id\":1,\"quantity\":1e2}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity INT32_MAX+1", "{\"order_id\":1,\"quantity\":2147483648}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity as string", "{\"order_id\":1,\"quantity\":\"4\"}", "quantity must be an integer >= 1"),
	BAD_ORDER("quantity boolean", "{\"order_id\":1,\"quantity\":true}", "quantity must be an integer >= 1"),

	/* ---- amount ---- */
	BAD_ORDER("amount zero", "{\"order_id\":1,\"amount\":0}", "amount must be a number > 0 and <= 1e15"),
	BAD_ORDER("amount 0.000e5", "{\"order_id\":1,\"amount\":0.000e5}", "amount must be a number > 0"),
	BAD_ORDER("amount negative", "{\"order_id\":1,\"amount\":-1}", "amount must be a number > 0"),
	BAD_ORDER("amount -0", "{\"order_id\":1,\"amount\":-0}", "amount must be a number > 0"),
	BAD_ORDER("amount as string", "{\"order_id\":1,\"amount\":\"10\"}", "amount must be a number > 0"),
	BAD_ORDER("amount 1e16", "{\"order_id\":1,\"amount\":1e16}", "amount must be a number > 0 and <= 1e15"),
	BAD_ORDER("amount 1e15+1", "{\"order_id\":1,\"amount\":1000000000000001}", "<= 1e15"),
	BAD_ORDER("amount 1e15 + tiny fraction", "{\"order_id\":1,\"amount\":1000000000000000.0000001}", "<= 1e15"),
	BAD_ORDER("amount 2e15", "{\"order_id\":1,\"amount\":2e15}", "<= 1e15"),
	BAD_ORDER("amount 1e999", "{\"order_id\":1,\"amount\":1e999}", "<= 1e15"),
	BAD_ORDER("amount huge exponent", "{\"order_id\":1,\"amount\":1e99999999999999999999999}", "<= 1e15"),
	BAD_ORDER("amount 1e-400", "{\"order_id\":1,\"amount\":1e-400}", "amount is too small"),
	BAD_ORDER("amount 5e-324", "{\"order_id\":1,\"amount\":5e-324}", "amount is too small"),
	BAD_ORDER("amount tiny huge negative exponent", "{\"order_id\":1,\"amount\":1e-99999999999999999999999}", "amount is too small"),
	BAD_ORDER("amount 64 characters",
			  "{\"order_id\":1,\"amount\":1.000000000000000000000000000000000000000000000000000000000000001}",
			  "amount has more than 63 characters"),
	BAD_ORDER("amount object", "{\"order_id\":1,\"amount\":{}}", "amount must be a number"),

	/* ---- quantity/amount together ---- */
	BAD_ORDER("neither quantity nor amount", "{\"order_id\":1,\"uid\":2}", "quantity or amount must be given"),
	BAD_ORDER("both null", "{\"order_id\":1,\"quantity\":null,\"amount\":null}", "quantity or amount must be given"),

	/* ---- created_at ---- */
	BAD_ORDER("created_at 2026-02-30", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-02-30T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at 2025-02-29 not leap", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2025-02-29T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at 1900-02-29 not leap", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"1900-02-29T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at April 31", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-04-31T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at month 13", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-13-01T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at month 00", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-00-01T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at day 00", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-01-00T00:00:00Z\"}", "not a valid calendar date"),
	BAD_ORDER("created_at hour 24", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T24:00:00Z\"}", "not a valid time of day"),
	BAD_ORDER("created_at minute 60", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:60:00Z\"}", "not a valid time of day"),
	BAD_ORDER("created_at second 61", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:61Z\"}", "not a valid time of day"),
	BAD_ORDER("created_at year 0000", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"0000-01-01T00:00:00Z\"}", "year must be between 0001 and 9999"),
	BAD_ORDER("created_at without offset", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00\"}", "RFC 3339"),
	BAD_ORDER("created_at date only", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21\"}", "RFC 3339"),
	BAD_ORDER("created_at 7 fraction digits", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00.1234567Z\"}", "at most 6 fraction digits"),
	BAD_ORDER("created_at empty fraction", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00.Z\"}", "RFC 3339"),
	BAD_ORDER("created_at offset +16:00", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00+16:00\"}", "offset must be within"),
	BAD_ORDER("created_at offset minutes 60", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00+01:60\"}", "offset must be within"),
	BAD_ORDER("created_at offset without colon", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00+0100\"}", "RFC 3339"),
	BAD_ORDER("created_at trailing char", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00Zx\"}", "RFC 3339"),
	BAD_ORDER("created_at slash separators", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026/11/21T12:00:00Z\"}", "RFC 3339"),
	BAD_ORDER("created_at epoch number", "{\"order_id\":1,\"quantity\":1,\"created_at\":1763726400}", "created_at must be an RFC 3339"),
	BAD_ORDER("created_at too long", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00.123456+01:00 and much more text\"}", "RFC 3339"),
	BAD_ORDER("created_at with \\u0000", "{\"order_id\":1,\"quantity\":1,\"created_at\":\"2026-11-21T12:00:00Z\\u0000\"}", "\\u0000 is not allowed"),

	/* ---- invalid UTF-8 and escapes ---- */
	BAD_ORDER("raw 0xFF in string", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"A\xff\"}", "invalid UTF-8 at byte 38"),
	BAD_ORDER("raw 0xFF outside string", "{\"order_id\":1,\"quantity\":1}\xff", "invalid UTF-8 at byte 27"),
	BAD_ORDER("overlong 2-byte slash", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xc0\xaf\"}", "invalid UTF-8"),
	BAD_ORDER("overlong 3-byte", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xe0\x80\xaf\"}", "invalid UTF-8"),
	BAD_ORDER("overlong 4-byte", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xf0\x80\x80\xaf\"}", "invalid UTF-8"),
	BAD_ORDER("UTF-8 encoded surrogate", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xed\xa0\x80\"}", "invalid UTF-8"),
	BAD_ORDER("above U+10FFFF", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xf4\x90\x80\x80\"}", "invalid UTF-8"),
	BAD_ORDER("truncated sequence", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\xe2\x82\"}", "invalid UTF-8"),
	BAD_ORDER("lone continuation byte", "{\"order_id\":1,\"quantity\":1,\"x\":\"\x80\"}", "invalid UTF-8"),
	BAD_ORDER("invalid UTF-8 in unknown key", "{\"order_id\":1,\"quantity\":1,\"\xfe\":1}", "invalid UTF-8"),
	BAD_ORDER("lone high surrogate", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\\ud800\"}", "lone surrogate in \\u escape"),
	BAD_ORDER("high surrogate then letter", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\\ud800\\u0041\"}", "lone surrogate in \\u escape"),
	BAD_ORDER("lone low surrogate", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\\udc00\"}", "lone surrogate in \\u escape"),
	BAD_ORDER("two high surrogates", "{\"order_id\":1,\"quantity\":1,\"x\":\"\\ud800\\ud800\"}", "lone surrogate in \\u escape"),
	BAD_ORDER("invalid escape \\x", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\\x41\"}", "invalid escape"),
	BAD_ORDER("short \\u escape", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\\u12\"}", "invalid \\u escape"),
	BAD_ORDER("non-hex \\u escape", "{\"order_id\":1,\"quantity\":1,\"symbol\":\"\\u12G4\"}", "invalid \\u escape"),

	/* ---- duplicate keys ---- */
	BAD_ORDER("duplicate order_id", "{\"order_id\":1,\"quantity\":1,\"order_id\":2}", "duplicate key \"order_id\""),
	BAD_ORDER("duplicate order_id same value", "{\"order_id\":1,\"order_id\":1,\"quantity\":1}", "duplicate key \"order_id\""),
	BAD_ORDER("duplicate via escape", "{\"order_id\":1,\"quantity\":1,\"quantit\\u0079\":2}", "duplicate key \"quantity\""),
	BAD_ORDER("duplicate null amount", "{\"order_id\":1,\"amount\":null,\"quantity\":1,\"amount\":5}", "duplicate key \"amount\""),
	BAD_ORDER("duplicate unknown key", "{\"order_id\":1,\"quantity\":1,\"note\":1,\"note\":2}", "duplicate key \"note\""),
	BAD_ORDER("duplicate unknown key escaped", "{\"order_id\":1,\"quantity\":1,\"\\u00e9t\\u00E9\":1,\"\xc3\xa9t\xc3\xa9\":2}", "duplicate key"),
	OK_ORDER("nested duplicate keys are not top-level", "{\"order_id\":20,\"quantity\":1,\"x\":{\"a\":1,\"a\":2}}",
			 "20", NULL, NULL, "1", NULL, NULL),
	OK_ORDER("similar unknown keys are distinct", "{\"order_id\":21,\"quantity\":1,\"ab\":1,\"ba\":2,\"a\":3,\"b\":4,\"\\u00e9\":5,\"e\":6}",
			 "21", NULL, NULL, "1", NULL, NULL),
};

static int	failures = 0;
static int	checks = 0;

static void
fail(const char *name, const char *fmt, const char *a, const char *b)
{
	failures++;
	printf("FAIL %s: ", name);
	printf(fmt, a ? a : "(null)", b ? b : "(null)");
	printf("\n");
}

/* The reason must be short, printable ASCII and NUL-terminated. */
static void
check_reason_shape(const char *name, const char *err)
{
	size_t		n = 0;
	size_t		i;

	while (n < OF_MSG_ERR_LEN && err[n] != '\0')	/* strnlen is not C99 */
		n++;

	if (n >= OF_MSG_ERR_LEN)
		fail(name, "reason not terminated within %s%s", "OF_MSG_ERR_LEN", "");
	for (i = 0; i < n; i++)
		if ((unsigned char) err[i] < 0x20 || (unsigned char) err[i] >= 0x7f)
		{
			fail(name, "reason has a non-printable byte: %s%s", err, "");
			break;
		}
}

static void
expect_field(const char *name, const char *field, bool has, const char *got, const char *want)
{
	char		msg[128];

	if (want == NULL && !has)
		return;
	snprintf(msg, sizeof(msg), "%s: got %%s, want %%s", field);
	if (want == NULL)
		fail(name, msg, got, "absent");
	else if (!has)
		fail(name, msg, "absent", want);
	else if (strcmp(got, want) != 0)
		fail(name, msg, got, want);
}

static void
run_case(const Case *c)
{
	char		err[OF_MSG_ERR_LEN];
	size_t		len = c->len ? c->len : strlen(c->body);
	bool		ok;
	int			before = failures;
	OfOrderMsg	m;
	char		num[32];

	checks++;
	memset(err, 'X', sizeof(err));

	ok = of_parse_order(c->body, len, &m, err, sizeof(err));
	check_reason_shape(c->name, err);
	if (ok && c->reason)
		fail(c->name, "accepted, expected reason containing \"%s\"%s", c->reason, "");
	else if (!ok && !c->reason)
		fail(c->name, "refused: %s%s", err, "");
	else if (!ok && strstr(err, c->reason) == NULL)
		fail(c->name, "reason \"%s\" lacks \"%s\"", err, c->reason);
	else if (ok)
	{
		if (err[0] != '\0')
			fail(c->name, "success left a reason: %s%s", err, "");
		snprintf(num, sizeof(num), "%" PRId64, m.order_id);
		expect_field(c->name, "order_id", true, num, c->order_id);
		snprintf(num, sizeof(num), "%" PRId64, m.uid);
		expect_field(c->name, "uid", m.has_uid, num, c->uid);
		expect_field(c->name, "symbol", m.has_symbol, m.symbol, c->symbol);
		snprintf(num, sizeof(num), "%" PRId32, m.quantity);
		expect_field(c->name, "quantity", m.has_quantity, num, c->quantity);
		expect_field(c->name, "amount", m.has_amount, m.amount, c->amount);
		expect_field(c->name, "created_at", m.has_created_at, m.created_at, c->created_at);
	}
	if (failures == before && getenv("VERBOSE"))
		printf("ok   %s%s%s\n", c->name, ok ? "" : " -> ", ok ? "" : err);
}

/* A generated order body; checks the outcome like run_case. */
static void
run_generated(const char *name, const char *body, size_t len, const char *reason)
{
	char		err[OF_MSG_ERR_LEN];
	OfOrderMsg	m;
	bool		ok;

	checks++;
	ok = of_parse_order(body, len, &m, err, sizeof(err));
	check_reason_shape(name, err);
	if (ok && reason)
		fail(name, "accepted, expected reason containing \"%s\"%s", reason, "");
	else if (!ok && !reason)
		fail(name, "refused: %s%s", err, "");
	else if (!ok && strstr(err, reason) == NULL)
		fail(name, "reason \"%s\" lacks \"%s\"", err, reason);
	else if (ok && (m.order_id != 77 || !m.has_quantity || m.quantity != 5))
		fail(name, "wrong fields decoded%s%s", "", "");
	else if (getenv("VERBOSE"))
		printf("ok   %s%s%s\n", name, ok ? "" : " -> ", ok ? "" : err);
}

/* {"order_id":77,"quantity":5,"x":<depth-1 nested arrays>} : total depth "depth" */
static size_t
nested(char *buf, int depth, char open, char close)
{
	size_t		n = 0;
	int			i;

	n += (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5,\"x\":");
	for (i = 0; i < depth - 1; i++)
	{
		buf[n++] = open;
		if (open == '{')
			n += (size_t) sprintf(buf + n, "\"k\":");
	}
	buf[n++] = '0';
	for (i = 0; i < depth - 1; i++)
		buf[n++] = close;
	buf[n++] = '}';
	buf[n] = '\0';
	return n;
}

static void
generated_cases(void)
{
	static char buf[4 * 1024 * 1024];
	size_t		n;
	int			i;
	char		err[OF_MSG_ERR_LEN];
	OfOrderMsg	m;

	/* depth limit: 64 levels fine, 65 refused, for arrays and objects */
	n = nested(buf, 64, '[', ']');
	run_generated("depth 64 arrays", buf, n, NULL);
	n = nested(buf, 65, '[', ']');
	run_generated("depth 65 arrays", buf, n, "nesting deeper than 64");
	n = nested(buf, 64, '{', '}');
	run_generated("depth 64 objects", buf, n, NULL);
	n = nested(buf, 65, '{', '}');
	run_generated("depth 65 objects", buf, n, "nesting deeper than 64");

	/* 1,000,000 unclosed brackets: refused without deep recursion */
	memset(buf, '[', 1000000);
	run_generated("a million '['", buf, 1000000, "nesting deeper than 64");
	memcpy(buf, "{\"order_id\":77,\"quantity\":5,\"x\":", 32);
	memset(buf + 32, '{', 1000000);
	run_generated("a million '{' under a key", buf, 1000032, "expected a string key");

	/* an error before the too-deep container wins; one after it does not */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5,\"y\":nul,\"x\":");
	memset(buf + n, '[', 100);
	run_generated("syntax error before deep nesting", buf, n + 100, "invalid JSON at byte 32: invalid token");
	n = nested(buf, 65, '[', ']');
	memcpy(buf + n - 1, "x}", 2);
	run_generated("deep nesting before a syntax error", buf, n + 1, "invalid JSON at byte 95: nesting deeper than 64");
	/* brackets inside strings (and escaped quotes) are not nesting */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5,\"x\":\"\\\"");
	memset(buf + n, '[', 100);
	n += 100;
	n += (size_t) sprintf(buf + n, "\",\"\\\\\":[[]]}");
	run_generated("brackets inside strings", buf, n, NULL);

	/* top-level array at exactly depth 64 is still refused for its type */
	n = 0;
	for (i = 0; i < 64; i++)
		buf[n++] = '[';
	for (i = 0; i < 64; i++)
		buf[n++] = ']';
	run_generated("top-level array depth 64", buf, n, "not an array");

	/* huge whitespace around and inside */
	memset(buf, ' ', 1500000);
	n = 1500000;
	n += (size_t) sprintf(buf + n, "{\"order_id\":77,");
	memset(buf + n, '\n', 1000000);
	n += 1000000;
	n += (size_t) sprintf(buf + n, "\"quantity\":5}");
	memset(buf + n, '\t', 1000000);
	n += 1000000;
	run_generated("3.5 MB of whitespace", buf, n, NULL);

	/* a 1 MB unknown string value */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5,\"blob\":\"");
	memset(buf + n, 'a', 1000000);
	n += 1000000;
	n += (size_t) sprintf(buf + n, "\"}");
	run_generated("1 MB unknown string", buf, n, NULL);

	/* a 1 MB symbol: refused, reason short */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5,\"symbol\":\"");
	memset(buf + n, 'S', 1000000);
	n += 1000000;
	n += (size_t) sprintf(buf + n, "\"}");
	run_generated("1 MB symbol", buf, n, "symbol must be 1-12 characters");

	/* duplicate 5000-byte unknown key: the reason echoes only a few bytes */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5,\"");
	memset(buf + n, 'k', 5000);
	n += 5000;
	n += (size_t) sprintf(buf + n, "\":1,\"");
	memset(buf + n, 'k', 5000);
	n += 5000;
	n += (size_t) sprintf(buf + n, "\":2}");
	run_generated("duplicate long key", buf, n, "duplicate key \"kkkkkkkkkkkkkkkkkkkkkkkk...\"");
	checks++;
	if (of_parse_order(buf, n, &m, err, sizeof(err)) || strlen(err) > 60)
		fail("duplicate long key reason length", "reason too long: %s%s", err, "");

	/* same long keys differing in the last byte are not duplicates */
	buf[n - 7] = 'j';
	run_generated("long keys differing at the end", buf, n, NULL);

	/* 128 unknown keys fine, 129 refused */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5");
	for (i = 0; i < 128; i++)
		n += (size_t) sprintf(buf + n, ",\"f%d\":%d", i, i);
	buf[n] = '}';
	run_generated("128 unknown keys", buf, n + 1, NULL);
	n += (size_t) sprintf(buf + n, ",\"f128\":0");
	buf[n] = '}';
	run_generated("129 unknown keys", buf, n + 1, "too many fields");

	/* a duplicate beyond many distinct keys is still found */
	n = (size_t) sprintf(buf, "{\"order_id\":77,\"quantity\":5");
	for (i = 0; i < 100; i++)
		n += (size_t) sprintf(buf + n, ",\"f%d\":%d", i, i);
	n += (size_t) sprintf(buf + n, ",\"f3\":0}");
	run_generated("duplicate among 100 keys", buf, n, "duplicate key \"f3\"");

	/* every prefix of a valid message is refused, never crashes */
	{
		const char *full = "{\"order_id\":77,\"uid\":1,\"symbol\":\"\xc3\xa9\\u00e9\",\"quantity\":5,"
			"\"amount\":1.5e2,\"created_at\":\"2026-11-21T12:00:00Z\"}";
		size_t		flen = strlen(full);
		size_t		k;
		int			bad = 0;

		for (k = 0; k < flen; k++)
		{
			memcpy(buf, full, k);	/* exact-size view: a sanitizer catches overreads */
			if (of_parse_order(buf, k, &m, err, sizeof(err)))
				bad++;
		}
		checks++;
		if (bad)
			fail("all prefixes refused", "%s prefixes accepted%s", "some", "");
		run_generated("the full message", full, flen, NULL);
	}

	/* err handling: NULL err, tiny errlen */
	checks++;
	if (of_parse_order("{}", 2, &m, NULL, 0))
		fail("NULL err", "accepted {}%s%s", "", "");
	checks++;
	memset(err, 'X', sizeof(err));
	if (of_parse_order("{}", 2, &m, err, 5) || strcmp(err, "miss") != 0 || err[5] != 'X')
		fail("errlen 5", "reason truncated wrong: %s%s", err, "");
	checks++;
	if (!of_parse_order("{\"order_id\":1,\"quantity\":1}", 27, &m, NULL, 0))
		fail("success without err", "refused%s%s", "", "");
	checks++;
	if (of_parse_order(NULL, 0, &m, err, sizeof(err)) || strstr(err, "empty body") == NULL)
		fail("NULL buffer", "reason: %s%s", err, "");
	/* a length jsonapi's int cannot count is refused before anything is read */
	checks++;
	if (of_parse_order("{}", (size_t) PG_INT32_MAX, &m, err, sizeof(err)) || strstr(err, "larger than 1 GB") == NULL)
		fail("huge len", "reason: %s%s", err, "");
	/* buffer not NUL-terminated: only len bytes are read */
	checks++;
	memcpy(buf, "{\"order_id\":1,\"quantity\":1}999", 30);
	if (!of_parse_order(buf, 27, &m, err, sizeof(err)))
		fail("len respected", "refused: %s%s", err, "");
}

int
main(void)
{
	size_t		i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_case(&cases[i]);
	generated_cases();
	printf("message_test: %d checks, %d passed, %d failed\n", checks, checks - failures, failures);
	return failures ? 1 : 0;
}
