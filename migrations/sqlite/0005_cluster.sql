-- The cluster tables of migrations/postgres/0005_cluster.sql, so both backends keep the same
-- schema. Cluster mode (cluster.enabled) needs Postgres and is refused on SQLite: these tables
-- stay empty here. Timestamps are TEXT in the form described in 0001_initial_schema.sql.
CREATE TABLE cluster_replicas (
    replica_id      TEXT PRIMARY KEY NOT NULL,
    host            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    version         TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    heartbeat_at    TEXT NOT NULL
) STRICT;

CREATE TABLE meeting_leases (
    meeting_id      TEXT PRIMARY KEY NOT NULL
                    REFERENCES tracked_meetings (meeting_id) ON DELETE CASCADE,
    owner           TEXT,
    expires_at      TEXT NOT NULL DEFAULT '',
    token           INTEGER NOT NULL DEFAULT 0,
    pages           INTEGER NOT NULL DEFAULT 1 CHECK (pages >= 1)
) STRICT;

CREATE INDEX meeting_leases_owner ON meeting_leases (owner) WHERE owner IS NOT NULL;
CREATE INDEX meeting_leases_token ON meeting_leases (token);
