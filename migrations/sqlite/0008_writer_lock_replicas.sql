-- The table of migrations/postgres/0008_writer_lock_replicas.sql, so both backends keep the
-- same schema. Cluster mode is refused on SQLite, so this table stays empty here. Timestamps
-- are TEXT in the form described in 0001_initial_schema.sql.
CREATE TABLE writer_lock_replicas (
    backend_pid     INTEGER PRIMARY KEY NOT NULL,
    host            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    version         TEXT NOT NULL,
    locked_at       TEXT NOT NULL
) STRICT;
