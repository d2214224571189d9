/*-------------------------------------------------------------------------
 *
 * amqp_url.c
 *	  Broker URL lists: splitting, checking, and showing them without their
 *	  passwords.
 *
 * ordflow.amqp_url is a comma-separated list of amqp:// or amqps:// URLs,
 * one per broker node.  A password may hold a raw comma (librabbitmq
 * accepts it), so only a comma followed by a scheme starts a new element.
 *
 * Redaction has one rule, used for single URLs, URL lists and any log text
 * alike: a password is whatever lies between the first ':' after a "://"
 * and the last '@' before the next URL (or the end of the text).  That
 * holds whatever characters the password has: spaces, quotes, commas, and
 * even the '@', '/' and '%' of a malformed URL.  When unsure, it hides more
 * than the password, never less.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <amqp.h>

#include "lib/stringinfo.h"

#include "amqp_conn.h"
#include "ordflow.h"

#define OF_URL_MAX_LEN		1000

/* Is p the start of "amqp://" or "amqps://" (any case)? */
static bool
at_amqp_scheme(const char *p)
{
	return pg_strncasecmp(p, "amqp://", 7) == 0 || pg_strncasecmp(p, "amqps://", 8) == 0;
}

/*
 * Split a URL list into its elements, palloc'd, without the blanks around
 * them.  A comma starts a new element only when a scheme follows it (after
 * optional blanks), so a comma inside a password stays where it is.
 */
char	  **
of_amqp_url_split(const char *list, int *count)
{
	int			cap = 4;
	int			n = 0;
	char	  **elems = palloc(sizeof(char *) * cap);
	const char *start = list;
	const char *p = list;

	for (;;)
	{
		const char *q = p + 1;

		while (*q == ' ' || *q == '\t')
			q++;
		if (*p == '\0' || (*p == ',' && at_amqp_scheme(q)))
		{
			const char *b = start;
			const char *e = p;

			while (b < e && isspace((unsigned char) *b))
				b++;
			while (e > b && isspace((unsigned char) e[-1]))
				e--;
			if (n == cap)
			{
				cap *= 2;
				elems = repalloc(elems, sizeof(char *) * cap);
			}
			elems[n++] = pnstrdup(b, e - b);
			if (*p == '\0')
				break;
			start = p + 1;
		}
		p++;
	}
	*count = n;
	return elems;
}

/* Host names and IP addresses (IPv6 without its brackets) only. */
static bool
host_valid(const char *host, char *reason, size_t len)
{
	if (strchr(host, ',') != NULL)
	{
		snprintf(reason, len,
				 "The host \"%s\" holds a comma: write each broker node as a URL of its own, e.g. amqp://user:password@host1:5672/,amqp://user:password@host2:5672/.",
				 host);
		return false;
	}
	for (const char *p = host; *p; p++)
	{
		if (!isalnum((unsigned char) *p) && strchr(".-_:", *p) == NULL)
		{
			strlcpy(reason, "The host name holds a character a host name cannot have.", len);
			return false;
		}
	}
	return true;
}

bool
of_amqp_url_valid(const char *url, char *reason, size_t len)
{
	struct amqp_connection_info info;
	char	   *copy;
	bool		ok = true;

	if (url == NULL || url[0] == '\0')
	{
		strlcpy(reason, "The URL is empty.", len);
		return false;
	}
	if (strlen(url) > OF_URL_MAX_LEN)
	{
		snprintf(reason, len, "The URL is longer than %d bytes.", OF_URL_MAX_LEN);
		return false;
	}
	copy = pstrdup(url);
	amqp_default_connection_info(&info);
	if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK)
	{
		strlcpy(reason, "It is not a valid amqp or amqps URL (write a ':', '@', '/' or '%' in the user name or password as %3A, %40, %2F or %25).", len);
		ok = false;
	}
	else if (info.host == NULL || info.host[0] == '\0')
	{
		strlcpy(reason, "The URL names no host.", len);
		ok = false;
	}
	else if (!host_valid(info.host, reason, len))
		ok = false;
	else if (info.port <= 0 || info.port > 65535)
	{
		strlcpy(reason, "The port must be between 1 and 65535.", len);
		ok = false;
	}
	else if (url[strlen(url) - 1] == ',')
	{
		strlcpy(reason, "The URL ends with a comma: every element of the list must be a complete amqp:// or amqps:// URL.", len);
		ok = false;
	}
	explicit_bzero(copy, strlen(url));	/* the parser cut it up; it held the password */
	pfree(copy);
	return ok;
}

/*
 * Check a whole URL list.  Returns 0 when every element is valid, else the
 * number (from 1) of the first bad one, with the reason in reason[].
 * *count gets the number of elements.
 */
int
of_amqp_url_list_check(const char *list, int *count, char *reason, size_t len)
{
	char	  **elems;
	int			n;
	int			bad = 0;

	if (list == NULL || list[0] == '\0')
	{
		*count = 0;
		strlcpy(reason, "The URL is empty.", len);
		return 1;
	}
	elems = of_amqp_url_split(list, &n);
	*count = n;
	if (n > OF_MAX_BROKER_URLS)
	{
		snprintf(reason, len, "The list has %d URLs; at most %d are allowed.",
				 n, OF_MAX_BROKER_URLS);
		bad = OF_MAX_BROKER_URLS + 1;
	}
	for (int i = 0; i < n && bad == 0; i++)
		if (!of_amqp_url_valid(elems[i], reason, len))
			bad = i + 1;
	for (int i = 0; i < n; i++)
	{
		explicit_bzero(elems[i], strlen(elems[i]));
		pfree(elems[i]);
	}
	pfree(elems);
	return bad;
}

/* ---- redaction ---- */

/*
 * Where the URL that follows the "://" at sep begins: the scheme's letters
 * before it.
 */
static const char *
scheme_start(const char *text, const char *sep)
{
	while (sep > text && (isalnum((unsigned char) sep[-1]) || strchr("+.-", sep[-1]) != NULL))
		sep--;
	return sep;
}

/* Does a port (digits, then the end or a character a port cannot have) start at p? */
static bool
looks_like_port(const char *p, const char *end)
{
	const char *q = p;

	while (q < end && isdigit((unsigned char) *q))
		q++;
	return q > p && (q == end || !isalnum((unsigned char) *q));
}

/*
 * The text with the password of every URL in it replaced by "***"; NULL
 * when there was nothing to hide.  See the file header for the rule.
 */
char *
of_redact_urls_in_text(const char *text)
{
	StringInfoData buf;
	const char *copied;			/* text before this is in buf */
	const char *auth;
	bool		changed = false;

	if (text == NULL || (auth = strstr(text, "://")) == NULL)
		return NULL;
	initStringInfo(&buf);
	copied = text;
	auth += 3;
	while (auth != NULL)
	{
		const char *next = strstr(auth, "://");
		const char *end = next ? scheme_start(auth, next) : auth + strlen(auth);
		const char *colon = memchr(auth, ':', end - auth);
		const char *at = NULL;

		/*
		 * A colon with no '@' after it is a port, unless what follows is no
		 * port: then the password itself may hold a "://", so the URL runs
		 * on into the next one.
		 */
		while (colon != NULL && next != NULL &&
			   memchr(colon, '@', end - colon) == NULL &&
			   !looks_like_port(colon + 1, end))
		{
			next = strstr(next + 3, "://");
			end = next ? scheme_start(auth, next) : auth + strlen(auth);
		}
		for (const char *p = end - 1; colon != NULL && p > colon; p--)
		{
			if (*p == '@')
			{
				at = p;
				break;
			}
		}
		if (at != NULL)
		{
			appendBinaryStringInfo(&buf, copied, colon + 1 - copied);
			appendStringInfoString(&buf, "***");
			copied = at;
			changed = true;
		}
		auth = next ? next + 3 : NULL;
	}
	if (!changed)
	{
		pfree(buf.data);
		return NULL;
	}
	appendStringInfoString(&buf, copied);
	return buf.data;
}

/*
 * A URL or URL list with its passwords replaced by "***", palloc'd.  Text
 * that is no URL at all is not echoed: it may be a password typed without
 * its scheme.
 */
char *
of_redact_url(const char *url)
{
	char	   *redacted;

	if (url == NULL || url[0] == '\0')
		return pstrdup("(empty)");
	if (strstr(url, "://") == NULL)
		return pstrdup("(not an amqp:// or amqps:// URL)");
	redacted = of_redact_urls_in_text(url);
	return redacted ? redacted : pstrdup(url);
}
