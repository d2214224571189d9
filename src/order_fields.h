/*-------------------------------------------------------------------------
 *
 * order_fields.h
 *	  Rules of an order message's field values (src/order_fields.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ORDFLOW_ORDER_FIELDS_H
#define ORDFLOW_ORDER_FIELDS_H

/* A JSON number token without fraction or exponent? */
extern bool of_json_is_integer(const char *num);
/* The integer token as int64 within [lo, hi]; false if not one. */
extern bool of_json_to_int64(const char *num, int64 lo, int64 hi, int64 *result);
/* NULL, or why the number token is not a valid amount. */
extern const char *of_check_amount(const char *num);
/* NULL, or why the n bytes are not an RFC 3339 date-time. */
extern const char *of_check_rfc3339(const char *s, size_t n);

#endif							/* ORDFLOW_ORDER_FIELDS_H */
