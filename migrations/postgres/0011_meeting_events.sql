-- Meeting events (the [meeting_events] intake). migrations/sqlite/0011_meeting_events.sql holds
-- the same columns and table for SQLite.

-- Who started tracking the meeting: NULL for an operator (`meetings add`) or the
-- configuration, 'meeting_events' for discovery (meeting_events.auto_track).
ALTER TABLE tracked_meetings ADD COLUMN added_by text
    CHECK (added_by IS NULL OR added_by = 'meeting_events');

-- When a meeting event last asked for a poll of the meeting. Written by the replica that
-- received the event, with a NOTIFY on channel roster_hints, so the replica holding the
-- meeting's lease polls it.
ALTER TABLE tracked_meetings ADD COLUMN hinted_at timestamptz;

-- Envelope ids of the meeting events already handled: a redelivered or duplicated message is
-- recognised and deleted without effect. Rows older than SQS's longest retention (14 days)
-- are deleted by the intake.
CREATE TABLE meeting_event_ids (
    event_id        text COLLATE "C" PRIMARY KEY,
    seen_at         timestamptz NOT NULL
);

CREATE INDEX meeting_event_ids_seen_at ON meeting_event_ids (seen_at);
