--
-- 09_upgrade: a fresh install of the default version and a 1.0 install
-- brought up with ALTER EXTENSION ordflow UPDATE have the same objects,
-- with the same columns, constraints, indexes, view and function
-- definitions, function attributes, privileges (and the initial privileges
-- pg_dump compares them with), and the same tables in pg_dump's
-- configuration list.  Today the fresh install itself runs ordflow--1.0.sql
-- and then the update script in one command; the check guards the day an
-- ordflow--1.1.sql (or a later base script) ships beside the update path.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS ordflow;
RESET client_min_messages;

-- A fresh install of the default version.
CREATE EXTENSION ordflow;
SELECT extversion AS fresh_version FROM pg_extension WHERE extname = 'ordflow';

-- One text line per property of every object of the extension.  Names,
-- not oids or attnums: the two installs may number things differently
-- (the update script drops and adds columns).
CREATE FUNCTION pg_temp.ordflow_catalog() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
	WITH ext AS (
		SELECT e.oid, e.extconfig, e.extcondition
		  FROM pg_extension AS e WHERE e.extname = 'ordflow'),
	ns AS (SELECT n.oid FROM pg_namespace AS n WHERE n.nspname = 'ordflow')
	-- every object the extension owns (classid/objid/objsubid)
	SELECT format('member: %s (%s)', pg_describe_object(d.classid, d.objid, d.objsubid),
				  d.deptype)
	  FROM pg_depend AS d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
	UNION ALL
	-- pg_dump's list of tables with user data, and their conditions
	SELECT format('config: %s where %s', c.relid::regclass, coalesce(c.cond, '<null>'))
	  FROM ext, unnest(ext.extconfig, ext.extcondition) AS c(relid, cond)
	UNION ALL
	-- relations: kind, options, ACL
	SELECT format('relation: %s kind=%s persistence=%s acl=%s options=%s',
				  c.oid::regclass, c.relkind, c.relpersistence, c.relacl, c.reloptions)
	  FROM pg_class AS c, ns WHERE c.relnamespace = ns.oid
	UNION ALL
	-- columns in their logical order (dropped ones left out)
	SELECT format('column: %s #%s %s %s notnull=%s identity=%s generated=%s default=%s acl=%s',
				  a.attrelid::regclass,
				  row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
				  a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
				  a.attidentity, a.attgenerated,
				  pg_get_expr(ad.adbin, ad.adrelid), a.attacl)
	  FROM pg_attribute AS a
	  JOIN pg_class AS c ON c.oid = a.attrelid
	  JOIN ns ON c.relnamespace = ns.oid
	  LEFT JOIN pg_attrdef AS ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'p', 'c')
	UNION ALL
	SELECT format('constraint: %s %s %s', con.conrelid::regclass, con.conname,
				  pg_get_constraintdef(con.oid))
	  FROM pg_constraint AS con, ns WHERE con.connamespace = ns.oid
	UNION ALL
	SELECT format('index: %s', pg_get_indexdef(i.indexrelid))
	  FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid
	  JOIN ns ON c.relnamespace = ns.oid
	UNION ALL
	SELECT format('view: %s %s', c.oid::regclass, pg_get_viewdef(c.oid))
	  FROM pg_class AS c, ns WHERE c.relnamespace = ns.oid AND c.relkind = 'v'
	UNION ALL
	SELECT format('sequence: %s type=%s start=%s inc=%s min=%s max=%s cache=%s cycle=%s',
				  s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement,
				  s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
	  FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
	  JOIN ns ON c.relnamespace = ns.oid
	UNION ALL
	SELECT format('sequence owned by: %s -> %s', d.objid::regclass,
				  pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid))
	  FROM pg_depend AS d JOIN pg_class AS c ON c.oid = d.objid
	  JOIN ns ON c.relnamespace = ns.oid
	 WHERE d.classid = 'pg_class'::regclass AND c.relkind = 'S' AND d.deptype IN ('a', 'i')
	UNION ALL
	-- functions: signature, result, attributes, body, ACL
	SELECT format('function: %s returns %s kind=%s lang=%s secdef=%s volatile=%s parallel=%s'
				  ' strict=%s leakproof=%s config=%s acl=%s body=%s bin=%s',
				  p.oid::regprocedure, pg_get_function_result(p.oid), p.prokind,
				  l.lanname, p.prosecdef, p.provolatile, p.proparallel, p.proisstrict,
				  p.proleakproof, p.proconfig, p.proacl, md5(p.prosrc), p.probin)
	  FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang, ns
	 WHERE p.pronamespace = ns.oid
	UNION ALL
	SELECT format('function defaults: %s %s', p.oid::regprocedure,
				  pg_get_function_arguments(p.oid))
	  FROM pg_proc AS p, ns WHERE p.pronamespace = ns.oid
	UNION ALL
	SELECT format('type: %s type=%s labels=%s', t.oid::regtype, t.typtype,
				  (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
					 FROM pg_enum AS e WHERE e.enumtypid = t.oid))
	  FROM pg_type AS t, ns WHERE t.typnamespace = ns.oid AND t.typtype IN ('e', 'd', 'c')
	UNION ALL
	SELECT format('trigger: %s', pg_get_triggerdef(tg.oid))
	  FROM pg_trigger AS tg JOIN pg_class AS c ON c.oid = tg.tgrelid
	  JOIN ns ON c.relnamespace = ns.oid
	UNION ALL
	-- the privileges pg_dump takes as the extension's own
	SELECT format('init priv: %s %s %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
				  ip.privtype, ip.initprivs)
	  FROM pg_init_privs AS ip
	  JOIN pg_depend AS d ON d.classid = ip.classoid AND d.objid = ip.objoid
	  JOIN ext ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
	UNION ALL
	SELECT format('schema: owner super=%s acl=%s',
				  (SELECT r.rolsuper FROM pg_roles AS r WHERE r.oid = n.nspowner), n.nspacl)
	  FROM pg_namespace AS n, ns WHERE n.oid = ns.oid
	UNION ALL
	SELECT format('generator_state: rows=%s running=%s', count(*), bool_or(g.running))
	  FROM ordflow.generator_state AS g
$$;

CREATE TEMP TABLE fresh AS SELECT * FROM pg_temp.ordflow_catalog() AS l(line);
DROP EXTENSION ordflow;

-- 1.0, then the update.
CREATE EXTENSION ordflow VERSION '1.0';
SELECT extversion AS installed_version FROM pg_extension WHERE extname = 'ordflow';
ALTER EXTENSION ordflow UPDATE;
SELECT extversion AS updated_version FROM pg_extension WHERE extname = 'ordflow';
CREATE TEMP TABLE upgraded AS SELECT * FROM pg_temp.ordflow_catalog() AS l(line);

-- The comparison covers every kind of object (a query that found nothing
-- would compare nothing).
SELECT split_part(line, ':', 1) AS what, count(*) > 0 AS present
  FROM fresh GROUP BY 1 ORDER BY 1;
SELECT (SELECT count(*) FROM fresh) = (SELECT count(*) FROM upgraded) AS same_count,
       (SELECT count(*) FROM fresh WHERE line LIKE 'member: %') >= 30 AS many_members;

-- The symmetric difference: no row.
(SELECT 'only fresh' AS side, line FROM fresh EXCEPT ALL SELECT 'only fresh', line FROM upgraded)
UNION ALL
(SELECT 'only upgraded', line FROM upgraded EXCEPT ALL SELECT 'only upgraded', line FROM fresh)
ORDER BY 1, 2;

-- The comparison sees a change of volatility and of a privilege.
BEGIN;
ALTER FUNCTION ordflow.metrics() VOLATILE;
GRANT SELECT ON ordflow.orders TO PUBLIC;
SELECT left(line, 40) AS changed
  FROM (SELECT line FROM pg_temp.ordflow_catalog() AS l(line)
		EXCEPT SELECT line FROM fresh) AS x
 ORDER BY 1;
ROLLBACK;

-- Leave a fresh install for the next file.
DROP EXTENSION ordflow;
CREATE EXTENSION ordflow;
