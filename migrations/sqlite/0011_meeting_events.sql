-- The columns and table of migrations/postgres/0011_meeting_events.sql, so both backends keep
-- the same schema. Timestamps are TEXT in the form described in 0001_initial_schema.sql.

-- NULL: added by an operator or the configuration; 'meeting_events': discovered.
ALTER TABLE tracked_meetings ADD COLUMN added_by TEXT
    CHECK (added_by IS NULL OR added_by = 'meeting_events');

-- When a meeting event last asked for a poll (used by replicas on Postgres).
ALTER TABLE tracked_meetings ADD COLUMN hinted_at TEXT CHECK (hinted_at GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z');

-- Envelope ids of the meeting events already handled (see the Postgres migration).
CREATE TABLE meeting_event_ids (
    event_id        TEXT PRIMARY KEY NOT NULL,
    seen_at         TEXT NOT NULL CHECK (seen_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z')
) STRICT;

CREATE INDEX meeting_event_ids_seen_at ON meeting_event_ids (seen_at);
