-- monitoring/exporter_role.sql - the role prometheus-postgres-exporter logs in as.
--
--   psql -d DBNAME -f monitoring/exporter_role.sql          (as a superuser)
--   psql -d DBNAME -c '\password ordflow_exporter'
--
-- Run it in the database where ordflow is installed (again in each such
-- database: the role is created once, the grants are per database).
-- Least privilege: pg_monitor for the exporter's built-in metrics, and on
-- ordflow's objects exactly what monitoring/postgres_exporter.yaml reads:
-- metrics() and the two metrics tables it sums (it runs with the caller's
-- rights), status(), and one or two columns of the outbox and of the dead
-- letters, enough to count them and to find the oldest outbox row.  The
-- role cannot read order payloads, dead-letter bodies, orders or users,
-- and cannot call start(), stop() or truncate().

DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ordflow_exporter') THEN
		CREATE ROLE ordflow_exporter LOGIN;
	END IF;
END
$$;
GRANT pg_monitor TO ordflow_exporter;
GRANT USAGE ON SCHEMA ordflow TO ordflow_exporter;
GRANT EXECUTE ON FUNCTION ordflow.metrics(), ordflow.status() TO ordflow_exporter;
GRANT SELECT ON ordflow.metrics_totals, ordflow.metrics_minute TO ordflow_exporter;
GRANT SELECT (id, created_at) ON ordflow.outbox TO ordflow_exporter;
GRANT SELECT (id) ON ordflow.dead_letters TO ordflow_exporter;
