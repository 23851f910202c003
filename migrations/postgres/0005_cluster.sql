-- Several replicas on one database (cluster.enabled): who is alive, and which replica polls
-- which meeting. migrations/sqlite/0005_cluster.sql holds the same tables for SQLite, where
-- cluster mode is refused and they stay empty.

-- One row per running replica, upserted by its heartbeat. A row whose heartbeat_at is older
-- than cluster.lease_ttl belongs to a dead replica; any live replica deletes it.
CREATE TABLE cluster_replicas (
    replica_id      uuid PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    version         text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);

-- Fencing tokens: every grant of a lease takes the next value, so a token names one grant.
CREATE SEQUENCE meeting_lease_tokens;

-- The lease on each active meeting. A replica may record a poll of the meeting only while
-- owner is itself, expires_at is in the future and token is the one it was granted; a lease
-- past expires_at (or with no owner) is free to claim.
CREATE TABLE meeting_leases (
    meeting_id      text COLLATE "C" PRIMARY KEY
                    REFERENCES tracked_meetings (meeting_id) ON DELETE CASCADE,
    owner           uuid,
    expires_at      timestamptz NOT NULL DEFAULT '-infinity',
    token           bigint NOT NULL DEFAULT 0,
    -- Pages of the meeting's roster (its snapshot rows / poll.max_results, at least 1), kept
    -- by the owner's heartbeat: replicas balance pages, not meetings.
    pages           integer NOT NULL DEFAULT 1 CHECK (pages >= 1)
);

CREATE INDEX meeting_leases_owner ON meeting_leases (owner) WHERE owner IS NOT NULL;
CREATE INDEX meeting_leases_token ON meeting_leases (token);
