-- roster-sync schema, SQLite flavour. migrations/postgres/0001_initial_schema.sql holds the same
-- tables, columns and constraints for Postgres; change both together (DESIGN.md §4).
--
-- Timestamps are TEXT in one fixed form, UTC with exactly six fractional digits:
--     2025-01-31T09:05:07.250000Z
-- - Fixed width, so text order is time order: min(), max(), ORDER BY and range scans work.
-- - RFC 3339, so sqlx decodes it into chrono's DateTime<Utc> directly.
-- - julianday() and unixepoch() read it (they accept the trailing Z), so views can do arithmetic.
-- - Microseconds, as in Postgres, so a value read back equals the value written.
-- store/sqlite.rs writes this form (sqlx's own DateTime encoding has a variable number of
-- fractional digits and "+00:00", which sorts differently); the CHECKs refuse any other form.
--
-- Tables are STRICT so a value of the wrong type is refused rather than stored as is.

-- Meetings roster-sync polls, and the bookkeeping of those polls.
CREATE TABLE tracked_meetings (
    meeting_id           TEXT PRIMARY KEY NOT NULL,
    region               TEXT NOT NULL,
    label                TEXT,
    status               TEXT NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'ended', 'stopped')),
    added_at             TEXT NOT NULL CHECK (added_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    -- When the service said the meeting is gone (ended) or an operator stopped tracking it.
    ended_at             TEXT CHECK (ended_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    -- Start of the last recorded poll: the lower end of the next poll's change window.
    last_polled_at       TEXT CHECK (last_polled_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    -- Fencing counter: every recorded poll bumps it, and a poll is only recorded if it still
    -- holds the value the poll's diff was computed against.
    poll_seq             INTEGER NOT NULL DEFAULT 0 CHECK (poll_seq >= 0),
    consecutive_failures INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_error           TEXT,
    last_error_at        TEXT CHECK (last_error_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    CONSTRAINT tracked_meetings_ended_at_iff_not_active
        CHECK ((status = 'active') = (ended_at IS NULL)),
    CONSTRAINT tracked_meetings_last_error_with_time
        CHECK ((last_error IS NULL) = (last_error_at IS NULL))
) STRICT;

-- The roster as the last recorded poll saw it: one row per attendee present.
CREATE TABLE roster_attendees (
    meeting_id       TEXT NOT NULL REFERENCES tracked_meetings (meeting_id),
    attendee_id      TEXT NOT NULL,
    external_user_id TEXT NOT NULL,
    audio            TEXT NOT NULL CHECK (audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    video            TEXT NOT NULL CHECK (video IN ('SendReceive', 'Send', 'Receive', 'None')),
    content          TEXT NOT NULL CHECK (content IN ('SendReceive', 'Send', 'Receive', 'None')),
    -- observed_at of the poll that first saw the attendee.
    joined_at        TEXT NOT NULL CHECK (joined_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    PRIMARY KEY (meeting_id, attendee_id)
) STRICT;

-- Every change ever recorded, append-only. event_id is monotonic per database: consumers
-- (webhook outbox) read it with a cursor over event_id. AUTOINCREMENT so that an id is never
-- reused, even after the newest events are deleted (retention).
CREATE TABLE roster_events (
    event_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    meeting_id       TEXT NOT NULL REFERENCES tracked_meetings (meeting_id),
    attendee_id      TEXT NOT NULL,
    external_user_id TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('joined', 'left', 'capabilities_changed')),
    -- Capabilities after the change (joined, capabilities_changed).
    audio            TEXT CHECK (audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    video            TEXT CHECK (video IN ('SendReceive', 'Send', 'Receive', 'None')),
    content          TEXT CHECK (content IN ('SendReceive', 'Send', 'Receive', 'None')),
    -- Capabilities before the change (left, capabilities_changed).
    previous_audio   TEXT CHECK (previous_audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_video   TEXT CHECK (previous_video IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_content TEXT CHECK (previous_content IN ('SendReceive', 'Send', 'Receive', 'None')),
    reason           TEXT CHECK (reason IN ('removed', 'meeting_ended', 'tracking_stopped')),
    -- The change happened after previous_poll_at (NULL: no earlier poll) and before observed_at.
    observed_at      TEXT NOT NULL CHECK (observed_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    previous_poll_at TEXT CHECK (previous_poll_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    CONSTRAINT roster_events_after_is_all_or_nothing
        CHECK ((audio IS NULL) = (video IS NULL) AND (video IS NULL) = (content IS NULL)),
    CONSTRAINT roster_events_before_is_all_or_nothing
        CHECK ((previous_audio IS NULL) = (previous_video IS NULL)
           AND (previous_video IS NULL) = (previous_content IS NULL)),
    CONSTRAINT roster_events_columns_match_kind CHECK (
        CASE kind
            WHEN 'joined' THEN
                audio IS NOT NULL AND previous_audio IS NULL AND reason IS NULL
            WHEN 'left' THEN
                audio IS NULL AND previous_audio IS NOT NULL AND reason IS NOT NULL
            WHEN 'capabilities_changed' THEN
                audio IS NOT NULL AND previous_audio IS NOT NULL AND reason IS NULL
        END
    )
) STRICT;

-- "What happened in this meeting, in time order".
CREATE INDEX roster_events_meeting_time ON roster_events (meeting_id, observed_at);
-- "Where was this person, and when".
CREATE INDEX roster_events_user_time ON roster_events (external_user_id, observed_at);
-- Pairs each join with the next leave of the same attendee (attendance_sessions).
CREATE INDEX roster_events_attendee_sequence ON roster_events (meeting_id, attendee_id, event_id);
