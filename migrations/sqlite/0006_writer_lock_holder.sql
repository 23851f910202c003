-- The table of migrations/postgres/0006_writer_lock_holder.sql, so both backends keep the
-- same schema. On SQLite the lock file (<database>.lock) names the holder, so this table stays
-- empty here. Timestamps are TEXT in the form described in 0001_initial_schema.sql.
CREATE TABLE writer_lock_holder (
    singleton       INTEGER PRIMARY KEY NOT NULL DEFAULT 1 CHECK (singleton = 1),
    host            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    version         TEXT NOT NULL,
    backend_pid     INTEGER NOT NULL,
    locked_at       TEXT NOT NULL
) STRICT;
