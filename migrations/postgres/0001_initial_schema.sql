-- roster-sync schema, Postgres flavour. migrations/sqlite/0001_initial_schema.sql holds the same
-- tables, columns and constraints for SQLite; change both together (DESIGN.md §4).
--
-- Identifiers (meeting, attendee, external user) use the "C" collation: byte order, the order
-- Rust sorts them in and SQLite's default, so `ORDER BY` agrees on both backends and with the
-- diff's merge pass whatever the database's default locale is.

-- Meetings roster-sync polls, and the bookkeeping of those polls.
CREATE TABLE tracked_meetings (
    meeting_id           text COLLATE "C" PRIMARY KEY,
    region               text NOT NULL,
    label                text,
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'ended', 'stopped')),
    added_at             timestamptz NOT NULL,
    -- When the service said the meeting is gone (ended) or an operator stopped tracking it.
    ended_at             timestamptz,
    -- Start of the last recorded poll: the lower end of the next poll's change window.
    last_polled_at       timestamptz,
    -- Fencing counter: every recorded poll bumps it, and a poll is only recorded if it still
    -- holds the value the poll's diff was computed against.
    poll_seq             bigint NOT NULL DEFAULT 0 CHECK (poll_seq >= 0),
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_error           text,
    last_error_at        timestamptz,
    CONSTRAINT tracked_meetings_ended_at_iff_not_active
        CHECK ((status = 'active') = (ended_at IS NULL)),
    CONSTRAINT tracked_meetings_last_error_with_time
        CHECK ((last_error IS NULL) = (last_error_at IS NULL))
);

-- The roster as the last recorded poll saw it: one row per attendee present.
CREATE TABLE roster_attendees (
    meeting_id       text COLLATE "C" NOT NULL REFERENCES tracked_meetings (meeting_id),
    attendee_id      text COLLATE "C" NOT NULL,
    external_user_id text COLLATE "C" NOT NULL,
    audio            text NOT NULL CHECK (audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    video            text NOT NULL CHECK (video IN ('SendReceive', 'Send', 'Receive', 'None')),
    content          text NOT NULL CHECK (content IN ('SendReceive', 'Send', 'Receive', 'None')),
    -- observed_at of the poll that first saw the attendee.
    joined_at        timestamptz NOT NULL,
    PRIMARY KEY (meeting_id, attendee_id)
);

-- Every change ever recorded, append-only. event_id is monotonic per database: consumers
-- (webhook outbox, NOTIFY listeners) read it with a cursor over event_id.
CREATE TABLE roster_events (
    event_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meeting_id       text COLLATE "C" NOT NULL REFERENCES tracked_meetings (meeting_id),
    attendee_id      text COLLATE "C" NOT NULL,
    external_user_id text COLLATE "C" NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('joined', 'left', 'capabilities_changed')),
    -- Capabilities after the change (joined, capabilities_changed).
    audio            text CHECK (audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    video            text CHECK (video IN ('SendReceive', 'Send', 'Receive', 'None')),
    content          text CHECK (content IN ('SendReceive', 'Send', 'Receive', 'None')),
    -- Capabilities before the change (left, capabilities_changed).
    previous_audio   text CHECK (previous_audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_video   text CHECK (previous_video IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_content text CHECK (previous_content IN ('SendReceive', 'Send', 'Receive', 'None')),
    reason           text CHECK (reason IN ('removed', 'meeting_ended', 'tracking_stopped')),
    -- The change happened after previous_poll_at (NULL: no earlier poll) and before observed_at.
    observed_at      timestamptz NOT NULL,
    previous_poll_at timestamptz,
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
);

-- "What happened in this meeting, in time order".
CREATE INDEX roster_events_meeting_time ON roster_events (meeting_id, observed_at);
-- "Where was this person, and when".
CREATE INDEX roster_events_user_time ON roster_events (external_user_id, observed_at);
-- Pairs each join with the next leave of the same attendee (attendance_sessions).
CREATE INDEX roster_events_attendee_sequence ON roster_events (meeting_id, attendee_id, event_id);
