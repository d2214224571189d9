--
-- 01_install: the extension installs, has the objects the workers rely on,
-- refuses the wrong database, and drops cleanly.
--
CREATE EXTENSION ordflow;
\set SHOW_CONTEXT never

SELECT e.extversion, e.extnamespace::regnamespace AS schema, e.extrelocatable
  FROM pg_extension AS e WHERE e.extname = 'ordflow';

-- Every member object (a rename here breaks the C workers).
SELECT pg_describe_object(d.classid, d.objid, 0) AS member
  FROM pg_depend AS d
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ordflow')
   AND d.deptype = 'e'
 ORDER BY 1;

-- Columns, types and NOT NULL of every table.
SELECT a.attrelid::regclass AS tab, a.attname,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       a.attidentity
  FROM pg_attribute AS a
  JOIN pg_class AS c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'ordflow'::regnamespace AND c.relkind = 'r'
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum;

-- Indexes (primary keys and the event lookup by order).
SELECT i.indrelid::regclass AS tab, i.indexrelid::regclass AS index,
       pg_get_indexdef(i.indexrelid, 0, false) LIKE '%UNIQUE%' AS is_unique
  FROM pg_index AS i
  JOIN pg_class AS c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'ordflow'::regnamespace
 ORDER BY 1, 2;

SELECT enum_range(NULL::ordflow.order_status);

-- Tables whose data pg_dump keeps.
SELECT unnest(extconfig)::regclass AS dumped
  FROM pg_extension WHERE extname = 'ordflow' ORDER BY 1;

-- Function properties: volatility, parallel safety, security definer,
-- pinned search_path, and whether PUBLIC may execute.
SELECT p.oid::regprocedure AS function, l.lanname AS lang, p.provolatile, p.proparallel, p.prosecdef,
       p.proconfig,
       (p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) AS a
                                    WHERE a.grantee = 0
                                      AND a.privilege_type = 'EXECUTE')) AS public_exec
  FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
 WHERE p.pronamespace = 'ordflow'::regnamespace
 ORDER BY p.proname, 1::text;

-- Exactly one generator_state row, stopped, no stored rate.
SELECT id, running, rate FROM ordflow.generator_state;
SELECT regress_util.err($$INSERT INTO ordflow.generator_state (id) VALUES (true)$$);
SELECT regress_util.err($$INSERT INTO ordflow.generator_state (id) VALUES (false)$$);
SELECT count(*) FROM ordflow.generator_state;

-- Table constraints back up the API checks.
SELECT regress_util.err($$INSERT INTO ordflow.orders (quantity) VALUES (0)$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (amount) VALUES ('NaN')$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (amount) VALUES ('Infinity')$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (symbol) VALUES ('ABC')$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (quantity, symbol) VALUES (1, '')$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (quantity, symbol) VALUES (1, 'ABCDEFGHIJKLM')$$);
SELECT regress_util.err($$INSERT INTO ordflow.orders (quantity, source) VALUES (1, 'elsewhere')$$);
SELECT regress_util.err($$INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance) VALUES ('a', 'b', 10, 11)$$);
SELECT regress_util.err($$INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance) VALUES ('a', 'b', -1, 0)$$);
SELECT regress_util.err($$INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance) VALUES ('a', 'b', 'NaN', 0)$$);
SELECT regress_util.err($$INSERT INTO ordflow.users (name, lname, credit_limit, credit_balance) VALUES ('a', 'b', 10, -1)$$);
SELECT (SELECT count(*) FROM ordflow.orders) AS orders, (SELECT count(*) FROM ordflow.users) AS users;

-- Refused in a database other than ordflow.database.
CREATE DATABASE ordflow_regress_other;
\c ordflow_regress_other
\set SHOW_CONTEXT never
SELECT current_setting('ordflow.database');
CREATE EXTENSION ordflow;
SELECT count(*) FROM pg_extension WHERE extname = 'ordflow';
\c contrib_regression
DROP DATABASE ordflow_regress_other;
\set SHOW_CONTEXT never

-- DROP EXTENSION leaves no object behind in the schema.
DROP EXTENSION ordflow;
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid) AS relations,
       (SELECT count(*) FROM pg_proc WHERE pronamespace = n.oid) AS functions,
       (SELECT count(*) FROM pg_type WHERE typnamespace = n.oid) AS types
  FROM pg_namespace AS n WHERE n.nspname = 'ordflow';

-- Something planted in a leftover schema would capture the install script's
-- expressions, so installation refuses a non-empty schema ...
CREATE SCHEMA IF NOT EXISTS ordflow;
CREATE FUNCTION ordflow.planted() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE EXTENSION ordflow;
DROP FUNCTION ordflow.planted();

-- ... and installs again in an empty one.
CREATE EXTENSION ordflow;
SELECT id, running, rate FROM ordflow.generator_state;
SELECT count(*) AS functions FROM pg_proc WHERE pronamespace = 'ordflow'::regnamespace;
SELECT count(*) AS tables FROM pg_class
 WHERE relnamespace = 'ordflow'::regnamespace AND relkind = 'r';
