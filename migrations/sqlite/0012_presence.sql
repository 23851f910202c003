-- Presence: who was connected, from meeting events and polls (see src/presence.rs).
-- migrations/postgres/0012_presence.sql makes the same change for Postgres; its header
-- explains the new kinds and columns.
--
-- SQLite cannot change a CHECK constraint in place, so roster_events is rebuilt: the views on
-- it are dropped first and made again after, every row keeps its event_id, and the
-- AUTOINCREMENT high-water mark is carried over so that no event_id is ever issued twice
-- (webhook cursors and `events --follow` rely on that, even after retention deleted the
-- newest events).

DROP VIEW meeting_attendance;
DROP VIEW attendance_sessions;

CREATE TABLE roster_events_new (
    event_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    meeting_id       TEXT NOT NULL REFERENCES tracked_meetings (meeting_id),
    attendee_id      TEXT NOT NULL,
    external_user_id TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN (
        'joined', 'left', 'capabilities_changed',
        'connected', 'disconnected', 'video_started', 'video_stopped',
        'content_started', 'content_stopped')),
    audio            TEXT CHECK (audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    video            TEXT CHECK (video IN ('SendReceive', 'Send', 'Receive', 'None')),
    content          TEXT CHECK (content IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_audio   TEXT CHECK (previous_audio IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_video   TEXT CHECK (previous_video IN ('SendReceive', 'Send', 'Receive', 'None')),
    previous_content TEXT CHECK (previous_content IN ('SendReceive', 'Send', 'Receive', 'None')),
    reason           TEXT CHECK (reason IN (
        'removed', 'meeting_ended', 'tracking_stopped', 'left', 'dropped')),
    observed_at      TEXT NOT NULL CHECK (observed_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    previous_poll_at TEXT CHECK (previous_poll_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    occurred_at      TEXT CHECK (occurred_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    source           TEXT CHECK (source IN ('meeting_event', 'poll')),
    inferred         INTEGER NOT NULL DEFAULT 0 CHECK (inferred IN (0, 1)),
    inferred_from    TEXT CHECK (inferred_from GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    inferred_to      TEXT CHECK (inferred_to GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    network_type     TEXT,
    CONSTRAINT roster_events_after_is_all_or_nothing
        CHECK ((audio IS NULL) = (video IS NULL) AND (video IS NULL) = (content IS NULL)),
    CONSTRAINT roster_events_before_is_all_or_nothing
        CHECK ((previous_audio IS NULL) = (previous_video IS NULL)
           AND (previous_video IS NULL) = (previous_content IS NULL)),
    CONSTRAINT roster_events_inferred_has_window CHECK (
        inferred = (inferred_from IS NOT NULL)
        AND (inferred_from IS NULL) = (inferred_to IS NULL)
        AND (inferred_from IS NULL OR inferred_from <= inferred_to)),
    CONSTRAINT roster_events_columns_match_kind CHECK (
        CASE kind
            WHEN 'joined' THEN
                audio IS NOT NULL AND previous_audio IS NULL AND reason IS NULL
                AND occurred_at IS NULL AND source IS NULL AND inferred = 0
            WHEN 'left' THEN
                audio IS NULL AND previous_audio IS NOT NULL
                AND reason IN ('removed', 'meeting_ended', 'tracking_stopped')
                AND occurred_at IS NULL AND source IS NULL AND inferred = 0
            WHEN 'capabilities_changed' THEN
                audio IS NOT NULL AND previous_audio IS NOT NULL AND reason IS NULL
                AND occurred_at IS NULL AND source IS NULL AND inferred = 0
            WHEN 'disconnected' THEN
                audio IS NULL AND previous_audio IS NULL AND reason IS NOT NULL
                AND occurred_at IS NOT NULL AND source IS NOT NULL
            ELSE
                audio IS NULL AND previous_audio IS NULL AND reason IS NULL
                AND occurred_at IS NOT NULL AND source IS NOT NULL
        END
    )
) STRICT;

INSERT INTO roster_events_new
    (event_id, meeting_id, attendee_id, external_user_id, kind, audio, video, content,
     previous_audio, previous_video, previous_content, reason, observed_at, previous_poll_at)
SELECT event_id, meeting_id, attendee_id, external_user_id, kind, audio, video, content,
       previous_audio, previous_video, previous_content, reason, observed_at, previous_poll_at
FROM roster_events;

-- The high-water mark: the larger of the old table's and the copied rows' newest id.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'roster_events_new', 0
WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'roster_events_new');
UPDATE sqlite_sequence
SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'roster_events'), 0))
WHERE name = 'roster_events_new';

DROP TABLE roster_events;
ALTER TABLE roster_events_new RENAME TO roster_events;

CREATE INDEX roster_events_meeting_time ON roster_events (meeting_id, observed_at);
CREATE INDEX roster_events_user_time ON roster_events (external_user_id, observed_at);
CREATE INDEX roster_events_attendee_sequence ON roster_events (meeting_id, attendee_id, event_id);
CREATE INDEX roster_events_presence
    ON roster_events (meeting_id, attendee_id, event_id)
    WHERE occurred_at IS NOT NULL;

CREATE TABLE presence_applied (
    envelope_id TEXT PRIMARY KEY,
    meeting_id  TEXT NOT NULL REFERENCES tracked_meetings (meeting_id) ON DELETE CASCADE,
    applied_at  TEXT NOT NULL CHECK (applied_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z')
) STRICT;
CREATE INDEX presence_applied_meeting ON presence_applied (meeting_id, applied_at);

-- As in 0002_attendance_views.sql.
CREATE VIEW attendance_sessions AS
SELECT
    j.meeting_id,
    j.attendee_id,
    j.external_user_id,
    j.observed_at AS joined_at,
    l.observed_at AS left_at,
    l.reason      AS left_reason,
    max(
        round((julianday(coalesce(l.observed_at, 'now')) - julianday(j.observed_at)) * 86400.0, 3),
        0.0
    ) AS duration_seconds
FROM roster_events AS j
LEFT JOIN roster_events AS l
    ON l.event_id = (
        SELECT min(e.event_id)
        FROM roster_events AS e
        WHERE e.meeting_id = j.meeting_id
          AND e.attendee_id = j.attendee_id
          AND e.event_id > j.event_id
          AND e.kind = 'left'
    )
WHERE j.kind = 'joined';

CREATE VIEW presence_sessions AS
SELECT
    c.meeting_id,
    c.attendee_id,
    c.external_user_id,
    c.occurred_at     AS connected_at,
    d.occurred_at     AS disconnected_at,
    d.reason          AS disconnect_reason,
    c.network_type,
    c.inferred        AS start_inferred,
    d.inferred        AS end_inferred,
    max(
        round((julianday(coalesce(d.occurred_at, 'now')) - julianday(c.occurred_at)) * 86400.0, 3),
        0.0
    ) AS duration_seconds
FROM roster_events AS c
LEFT JOIN roster_events AS d
    ON d.event_id = (
        SELECT min(e.event_id)
        FROM roster_events AS e
        WHERE e.meeting_id = c.meeting_id
          AND e.attendee_id = c.attendee_id
          AND e.event_id > c.event_id
          AND e.kind = 'disconnected'
    )
WHERE c.kind = 'connected';

CREATE VIEW presence_media_spans AS
SELECT
    s.meeting_id,
    s.attendee_id,
    s.external_user_id,
    CASE s.kind WHEN 'video_started' THEN 'video' ELSE 'content' END AS medium,
    s.occurred_at AS started_at,
    t.occurred_at AS stopped_at,
    max(
        round((julianday(coalesce(t.occurred_at, 'now')) - julianday(s.occurred_at)) * 86400.0, 3),
        0.0
    ) AS duration_seconds
FROM roster_events AS s
LEFT JOIN roster_events AS t
    ON t.event_id = (
        SELECT min(e.event_id)
        FROM roster_events AS e
        WHERE e.meeting_id = s.meeting_id
          AND e.attendee_id = s.attendee_id
          AND e.event_id > s.event_id
          AND e.kind = CASE s.kind WHEN 'video_started' THEN 'video_stopped'
                                   ELSE 'content_stopped' END
    )
WHERE s.kind IN ('video_started', 'content_started');

CREATE VIEW meeting_attendance AS
SELECT
    a.meeting_id,
    a.external_user_id,
    count(*)         AS sessions,
    min(a.joined_at) AS first_joined_at,
    CASE WHEN count(a.left_at) = count(*) THEN max(a.left_at) END AS last_left_at,
    sum(a.duration_seconds) AS total_seconds,
    (SELECT sum(p.duration_seconds) FROM presence_sessions AS p
      WHERE p.meeting_id = a.meeting_id AND p.external_user_id = a.external_user_id)
        AS connected_seconds,
    (SELECT sum(m.duration_seconds) FROM presence_media_spans AS m
      WHERE m.meeting_id = a.meeting_id AND m.external_user_id = a.external_user_id
        AND m.medium = 'video') AS video_seconds,
    (SELECT sum(m.duration_seconds) FROM presence_media_spans AS m
      WHERE m.meeting_id = a.meeting_id AND m.external_user_id = a.external_user_id
        AND m.medium = 'content') AS content_seconds
FROM attendance_sessions AS a
GROUP BY a.meeting_id, a.external_user_id;
