-- Attendance views for analysts and `roster-sync report`, Postgres flavour.
-- migrations/sqlite/0002_attendance_views.sql defines the same views for SQLite.

-- One row per `joined` event: the attendee's session from that join to the first `left` of the
-- same attendee after it (an attendee has several sessions when tracking was stopped and
-- started again).
--
-- duration_seconds is left_at - joined_at for a closed session. While the attendee is still
-- present (left_at IS NULL) it is now() - joined_at, so it grows each time the view is read;
-- now() is the start of the reading transaction. It never goes below 0, which a database clock
-- behind roster-sync's clock could otherwise produce for a session that just began.
CREATE VIEW attendance_sessions AS
SELECT
    j.meeting_id,
    j.attendee_id,
    j.external_user_id,
    j.observed_at AS joined_at,
    l.observed_at AS left_at,
    l.reason      AS left_reason,
    GREATEST(
        EXTRACT(EPOCH FROM (COALESCE(l.observed_at, now()) - j.observed_at)),
        0
    )::double precision AS duration_seconds
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

-- Per meeting and person (external_user_id): how many sessions, from the first join to the
-- last leave (NULL while any session is still open), and the total time present.
CREATE VIEW meeting_attendance AS
SELECT
    meeting_id,
    external_user_id,
    count(*)       AS sessions,
    min(joined_at) AS first_joined_at,
    CASE WHEN count(left_at) = count(*) THEN max(left_at) END AS last_left_at,
    sum(duration_seconds) AS total_seconds
FROM attendance_sessions
GROUP BY meeting_id, external_user_id;
