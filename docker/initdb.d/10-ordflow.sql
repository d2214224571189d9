-- Runs once, when the container initialises an empty data directory.
-- ordflow.database defaults to 'postgres', the database this runs in.
CREATE EXTENSION IF NOT EXISTS ordflow;
