/*-------------------------------------------------------------------------
 *
 * order_fields.c
 *	  The rules of an order message's field values, on their JSON text:
 *	  integers in range, amounts checked digit by digit, RFC 3339 times.
 *	  Pure C on NUL-terminated tokens, so the decoder's unit tests and
 *	  fuzzer use it outside the server too.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <errno.h>

#include "order_fields.h"

/* Number tokens come validated by the lexer: no fraction, no exponent? */
bool
of_json_is_integer(const char *num)
{
	return strpbrk(num, ".eE") == NULL;
}

/*
 * Convert an integer token to int64 within [lo, hi]; false if it is not an
 * integer token or is out of range.
 */
bool
of_json_to_int64(const char *num, int64 lo, int64 hi, int64 *result)
{
	char	   *end;
	int64		v;

	if (!of_json_is_integer(num))
		return false;
	errno = 0;
	v = strtoi64(num, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return false;
	*result = v;
	return true;
}

/*
 * Check an amount on its text: > 0 and <= 1e15, at most 63 characters and
 * not below 1e-307.  Working on the digits (not strtod) keeps "1e999",
 * "1e-400" and 1000000000000000.0000001 exact.  Returns NULL or a reason.
 */
const char *
of_check_amount(const char *num)
{
	const char *range = "amount must be a number > 0 and <= 1e15, or null";
	size_t		len = strlen(num);
	const unsigned char *p = (const unsigned char *) num;
	const unsigned char *end = p + len;
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

	if (len > 63)
		return "amount has more than 63 characters";
	if (*num == '-')
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
const char *
of_check_rfc3339(const char *s, size_t n)
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
