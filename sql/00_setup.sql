--
-- 00_setup: helpers every regression file uses, made once for the test
-- database (each file runs in a session of its own).
--
-- regress_util.err(sql): runs sql and returns 'ok', or "SQLSTATE: message"
-- with a message longer than 120 characters cut and its length shown, so an
-- input echoed back in full stands out.
CREATE SCHEMA regress_util;
CREATE FUNCTION regress_util.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || CASE WHEN length(SQLERRM) > 120
		THEN left(SQLERRM, 120) || '... (' || length(SQLERRM) || ' chars)' ELSE SQLERRM END;
END $$;
GRANT USAGE ON SCHEMA regress_util TO PUBLIC;
GRANT EXECUTE ON FUNCTION regress_util.err(text) TO PUBLIC;
