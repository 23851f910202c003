-- Attendance views for analysts and `roster-sync report`, SQLite flavour.
-- migrations/postgres/0002_attendance_views.sql defines the same views for Postgres.

-- One row per `joined` event: the attendee's session from that join to the first `left` of the
-- same attendee after it (an attendee has several sessions when tracking was stopped and
-- started again).
--
-- duration_seconds is left_at - joined_at for a closed session. While the attendee is still
-- present (left_at IS NULL) it is now - joined_at, so it grows each time the view is read.
-- julianday() works in whole milliseconds, so the difference is rounded to 3 decimals (Postgres
-- keeps microseconds). It never goes below 0, which a clock step backwards could otherwise
-- produce.
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

-- Per meeting and person (external_user_id): how many sessions, from the first join to the
-- last leave (NULL while any session is still open), and the total time present.
-- min() and max() compare the timestamps as text, which is time order for their fixed form.
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
