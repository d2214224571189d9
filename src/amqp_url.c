/*-------------------------------------------------------------------------
 *
 * amqp_url.c
 *	  Checking broker URLs, and showing them without their password.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <amqp.h>

#include "lib/stringinfo.h"

#include "amqp_conn.h"
#include "ordflow.h"

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
	if (strlen(url) > 1000)
	{
		strlcpy(reason, "The URL is longer than 1000 bytes.", len);
		return false;
	}
	copy = strdup(url);
	if (copy == NULL)
	{
		strlcpy(reason, "out of memory", len);
		return false;
	}
	amqp_default_connection_info(&info);
	if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK)
	{
		strlcpy(reason, "It is not a valid amqp:// or amqps:// URL.", len);
		ok = false;
	}
	else if (info.host == NULL || info.host[0] == '\0')
	{
		strlcpy(reason, "The URL names no host.", len);
		ok = false;
	}
	else if (info.port <= 0 || info.port > 65535)
	{
		strlcpy(reason, "The port must be between 1 and 65535.", len);
		ok = false;
	}
	free(copy);
	return ok;
}

/* The URL with its password replaced by "***", palloc'd. */
char *
of_redact_url(const char *url)
{
	const char *scheme_end;
	const char *at;
	const char *colon;
	const char *slash;
	StringInfoData buf;

	if (url == NULL)
		return pstrdup("");
	scheme_end = strstr(url, "://");
	if (scheme_end == NULL)
		return pstrdup("(unparsable URL)");
	scheme_end += 3;
	slash = strchr(scheme_end, '/');
	at = NULL;
	for (const char *p = scheme_end; *p && (slash == NULL || p < slash); p++)
		if (*p == '@')
			at = p;
	if (at == NULL)
		return pstrdup(url);
	colon = memchr(scheme_end, ':', at - scheme_end);
	if (colon == NULL)
		return pstrdup(url);
	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, url, colon - url + 1);
	appendStringInfoString(&buf, "***");
	appendStringInfoString(&buf, at);
	return buf.data;
}


/*
 * Every URL in a text with its password replaced by "***"; NULL when there
 * was nothing to hide.  For log messages, which PostgreSQL itself writes
 * with setting values ("parameter ... changed to ...").
 */
char *
of_redact_urls_in_text(const char *text)
{
	StringInfoData buf;
	const char *p = text;
	bool		changed = false;

	if (text == NULL || strstr(text, "://") == NULL)
		return NULL;
	initStringInfo(&buf);
	while (*p)
	{
		const char *sep = strstr(p, "://");
		const char *auth;
		const char *q;
		const char *colon = NULL;
		const char *at = NULL;

		if (sep == NULL)
			break;
		auth = sep + 3;
		/* the authority ends at '/', whitespace or a quote */
		for (q = auth; *q && *q != '/' && *q != ' ' && *q != '\'' && *q != '"' && *q != '\n'; q++)
		{
			if (*q == ':' && colon == NULL)
				colon = q;
			if (*q == '@')
				at = q;
		}
		if (colon != NULL && at != NULL && colon < at)
		{
			appendBinaryStringInfo(&buf, p, colon + 1 - p);
			appendStringInfoString(&buf, "***");
			p = at;
			changed = true;
		}
		else
		{
			appendBinaryStringInfo(&buf, p, q - p);
			p = q;
		}
	}
	appendStringInfoString(&buf, p);
	if (!changed)
	{
		pfree(buf.data);
		return NULL;
	}
	return buf.data;
}
