-- Presence: who was connected, from meeting events and polls (see src/presence.rs).
-- Presence changes are rows of roster_events, so they take event_ids in the same order as the
-- roster's changes and reach NOTIFY, webhooks, `events --follow`, retention and `forget` by
-- the same paths.
--
-- New kinds: connected, disconnected, video_started, video_stopped, content_started,
-- content_stopped. Their columns:
--   occurred_at    when it happened (the Chime timestamp, or inside the window when inferred);
--   source         meeting_event, or poll for a boundary a poll proved;
--   inferred       true when no event gave the boundary; inferred_from..inferred_to is the
--                  window in which it happened;
--   network_type   on connected, from the event (e.g. Voip);
--   reason         on disconnected: left, dropped, removed, meeting_ended, tracking_stopped.
-- observed_at is when roster-sync recorded the row; previous_poll_at is the poll window's
-- start for a boundary a poll proved and NULL otherwise.

ALTER TABLE roster_events
    DROP CONSTRAINT roster_events_kind_check,
    DROP CONSTRAINT roster_events_reason_check,
    DROP CONSTRAINT roster_events_columns_match_kind,
    ADD COLUMN occurred_at   timestamptz,
    ADD COLUMN source        text CHECK (source IN ('meeting_event', 'poll')),
    ADD COLUMN inferred      boolean NOT NULL DEFAULT false,
    ADD COLUMN inferred_from timestamptz,
    ADD COLUMN inferred_to   timestamptz,
    ADD COLUMN network_type  text,
    ADD CONSTRAINT roster_events_kind_check CHECK (kind IN (
        'joined', 'left', 'capabilities_changed',
        'connected', 'disconnected', 'video_started', 'video_stopped',
        'content_started', 'content_stopped')),
    ADD CONSTRAINT roster_events_reason_check CHECK (reason IN (
        'removed', 'meeting_ended', 'tracking_stopped', 'left', 'dropped')),
    ADD CONSTRAINT roster_events_inferred_has_window CHECK (
        inferred = (inferred_from IS NOT NULL)
        AND (inferred_from IS NULL) = (inferred_to IS NULL)
        AND (inferred_from IS NULL OR inferred_from <= inferred_to)),
    ADD CONSTRAINT roster_events_columns_match_kind CHECK (
        CASE kind
            WHEN 'joined' THEN
                audio IS NOT NULL AND previous_audio IS NULL AND reason IS NULL
                AND occurred_at IS NULL AND source IS NULL AND NOT inferred
            WHEN 'left' THEN
                audio IS NULL AND previous_audio IS NOT NULL
                AND reason IN ('removed', 'meeting_ended', 'tracking_stopped')
                AND occurred_at IS NULL AND source IS NULL AND NOT inferred
            WHEN 'capabilities_changed' THEN
                audio IS NOT NULL AND previous_audio IS NOT NULL AND reason IS NULL
                AND occurred_at IS NULL AND source IS NULL AND NOT inferred
            WHEN 'disconnected' THEN
                audio IS NULL AND previous_audio IS NULL AND reason IS NOT NULL
                AND occurred_at IS NOT NULL AND source IS NOT NULL
            ELSE
                audio IS NULL AND previous_audio IS NULL AND reason IS NULL
                AND occurred_at IS NOT NULL AND source IS NOT NULL
        END
    );

-- Envelope ids of the meeting events already applied to presence: each event counts once,
-- however often the queue delivers it. Deleted with their meeting's events by retention.
CREATE TABLE presence_applied (
    envelope_id text COLLATE "C" PRIMARY KEY,
    meeting_id  text COLLATE "C" NOT NULL REFERENCES tracked_meetings (meeting_id) ON DELETE CASCADE,
    applied_at  timestamptz NOT NULL
);
CREATE INDEX presence_applied_meeting ON presence_applied (meeting_id, applied_at);

-- Presence rows of one attendee in order (reconciler state, the views below).
CREATE INDEX roster_events_presence
    ON roster_events (meeting_id, attendee_id, event_id)
    WHERE occurred_at IS NOT NULL;

-- One row per `connected`: the session from it to the next `disconnected` of the same
-- attendee. start_inferred/end_inferred say which ends no event gave; end_inferred is NULL
-- while the session is open, and then duration_seconds grows with now().
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
    GREATEST(
        EXTRACT(EPOCH FROM (COALESCE(d.occurred_at, now()) - c.occurred_at)),
        0
    )::double precision AS duration_seconds
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

-- One row per video or content span: from a *_started to the next *_stopped.
CREATE VIEW presence_media_spans AS
SELECT
    s.meeting_id,
    s.attendee_id,
    s.external_user_id,
    CASE s.kind WHEN 'video_started' THEN 'video' ELSE 'content' END AS medium,
    s.occurred_at AS started_at,
    t.occurred_at AS stopped_at,
    GREATEST(
        EXTRACT(EPOCH FROM (COALESCE(t.occurred_at, now()) - s.occurred_at)),
        0
    )::double precision AS duration_seconds
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

-- meeting_attendance gains the connected, video and content time (NULL where the meeting has
-- no presence for that person: no meeting events were read for it).
DROP VIEW meeting_attendance;
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
