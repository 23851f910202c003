//! SQL whose text is the same on Postgres and SQLite, written once and compiled for each.
//!
//! `shared_queries!` expands to a `queries` module inside `store/postgres.rs` and
//! `store/sqlite.rs`. Parameters are written `$1`, `$2`, … which both backends accept. What
//! differs is supplied by the expanding module, as items of its own:
//!
//! - `fn ts(DateTime<Utc>) -> impl Encode`: a timestamp in the backend's column encoding;
//! - `async fn begin_write(&Pool) -> Result<Transaction>`: a transaction that will write;
//! - `async fn serialize_event_writers(&mut Connection) -> Result<()>`: called before any
//!   event insert, so that event ids become visible in commit order;
//! - `async fn insert_events(&mut Connection, &PollRecord) -> Result<Vec<StoredEvent>>`: the
//!   bulk insert of a poll's changes, in order, returning the stored events by `event_id`
//!   (and announcing them, as below);
//! - `async fn announce_events(&mut Connection, &[StoredEvent]) -> Result<()>`: called inside
//!   the transaction that inserted events (Postgres `NOTIFY`, see `store/alerting.rs`);
//!
//! and the `for_update` suffix that locks the row a read will update (empty on SQLite, whose
//! write transactions are exclusive from their start), and the `lease_fence` condition that a
//! fenced write (cluster mode, see `store/leases.rs`) adds to its bookkeeping `UPDATE` of
//! `tracked_meetings`, with the lease token as `$4`.

/// The columns of `roster_events` in the order [`queries::event_from_row`] reads them.
macro_rules! event_columns {
    () => {
        "event_id, meeting_id, attendee_id, external_user_id, kind, audio, video, content, \
         previous_audio, previous_video, previous_content, reason, observed_at, previous_poll_at, \
         occurred_at, source, inferred, inferred_from, inferred_to, network_type"
    };
}
pub(super) use event_columns;

/// The columns of `tracked_meetings` that [`TrackedMeeting`](super::TrackedMeeting) holds.
macro_rules! meeting_columns {
    () => {
        "meeting_id, region, label, status, added_at, ended_at, last_polled_at, poll_seq, \
         consecutive_failures, last_error_code, last_error, last_error_at"
    };
}
pub(super) use meeting_columns;

macro_rules! shared_queries {
    (database = $db:ty, for_update = $for_update:literal, lease_fence = $lease_fence:literal) => {
        /// The queries whose SQL is the same on every backend (see `store/shared.rs`).
        pub(in crate::store) mod queries {
            use chrono::{DateTime, Utc};
            use sqlx::Row as _;

            use super::{announce_events, begin_write, insert_events, serialize_event_writers, ts};
            use crate::domain::{
                Attendee, AttendeeId, EventKind, ExternalUserId, LeftReason, MeetingId, Region,
            };
            use crate::store::shared::{event_columns, meeting_columns};
            use crate::store::{
                decode, AddOutcome, ApplyOutcome, AttendanceRow, MeetingStatus, MeetingsVersion,
                LeaseToken, PollRecord, PresenceRecord, Result, SessionRow,
                Snapshot, StoreError, StoredEvent, TrackedMeeting,
            };

            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type Connection = <Db as sqlx::Database>::Connection;
            type DbRow = <Db as sqlx::Database>::Row;

            fn get<'r, T>(row: &'r DbRow, column: &'static str) -> Result<T>
            where
                T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
            {
                row.try_get(column).map_err(|e| decode::column_error(column, e))
            }

            pub(in crate::store) async fn add_meeting(
                pool: &Pool,
                id: &MeetingId,
                region: &Region,
                label: Option<&str>,
                now: DateTime<Utc>,
                force: bool,
            ) -> Result<AddOutcome> {
                let mut tx = begin_write(pool).await?;
                let inserted = sqlx::query(
                    "INSERT INTO tracked_meetings (meeting_id, region, label, status, added_at) \
                     VALUES ($1, $2, $3, 'active', $4) \
                     ON CONFLICT (meeting_id) DO NOTHING",
                )
                .bind(id.as_str())
                .bind(region.as_str())
                .bind(label)
                .bind(ts(now))
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 {
                    tx.commit().await?;
                    return Ok(AddOutcome::Added);
                }
                let row = sqlx::query(concat!(
                    "SELECT status, region FROM tracked_meetings WHERE meeting_id = $1",
                    $for_update
                ))
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
                let status = decode::parse::<MeetingStatus>("status", &get::<String>(&row, "status")?)?;
                let current = decode::region(&get::<String>(&row, "region")?)?;
                if label.is_some() && status == MeetingStatus::Active {
                    sqlx::query("UPDATE tracked_meetings SET label = $2 WHERE meeting_id = $1")
                        .bind(id.as_str())
                        .bind(label)
                        .execute(&mut *tx)
                        .await?;
                }
                let outcome = match status {
                    MeetingStatus::Active if current == *region => AddOutcome::AlreadyTracked,
                    MeetingStatus::Active if !force => AddOutcome::RegionDiffers { current },
                    MeetingStatus::Active => {
                        // The snapshot stays: it is the same meeting, called elsewhere. The
                        // bumped poll_seq fences a poll in flight in the old region.
                        sqlx::query(
                            "UPDATE tracked_meetings \
                             SET region = $2, region_changed_at = $3, poll_seq = poll_seq + 1, \
                                 consecutive_failures = 0, last_error = NULL, \
                                 last_error_code = NULL, last_error_at = NULL \
                             WHERE meeting_id = $1",
                        )
                        .bind(id.as_str())
                        .bind(region.as_str())
                        .bind(ts(now))
                        .execute(&mut *tx)
                        .await?;
                        AddOutcome::Moved { from: current }
                    }
                    MeetingStatus::Ended if !force => AddOutcome::AlreadyEnded,
                    MeetingStatus::Stopped | MeetingStatus::Ended => {
                        // The snapshot was emptied when tracking stopped or the meeting ended,
                        // so the first poll reports everyone as joined; clearing last_polled_at
                        // makes it the first poll (no lower bound for the change window) and
                        // due at once.
                        sqlx::query(
                            "UPDATE tracked_meetings \
                             SET status = 'active', ended_at = NULL, region = $2, \
                                 label = COALESCE($3, label), last_polled_at = NULL, \
                                 poll_seq = poll_seq + 1, \
                                 consecutive_failures = 0, last_error = NULL, \
                                 last_error_code = NULL, last_error_at = NULL \
                             WHERE meeting_id = $1",
                        )
                        .bind(id.as_str())
                        .bind(region.as_str())
                        .bind(label)
                        .execute(&mut *tx)
                        .await?;
                        if status == MeetingStatus::Ended {
                            AddOutcome::Revived
                        } else {
                            AddOutcome::Reactivated
                        }
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }

            pub(in crate::store) async fn remove_meeting(
                pool: &Pool,
                id: &MeetingId,
                now: DateTime<Utc>,
            ) -> Result<Option<Vec<StoredEvent>>> {
                let mut tx = begin_write(pool).await?;
                let stopped: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
                    "UPDATE tracked_meetings \
                     SET status = 'stopped', ended_at = $2, poll_seq = poll_seq + 1 \
                     WHERE meeting_id = $1 AND status = 'active' \
                     RETURNING last_polled_at",
                )
                .bind(id.as_str())
                .bind(ts(now))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(last_polled_at) = stopped else {
                    let known: Option<String> = sqlx::query_scalar(
                        "SELECT meeting_id FROM tracked_meetings WHERE meeting_id = $1",
                    )
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    return Ok(known.map(|_| Vec::new()));
                };
                let events = leave_everyone(
                    &mut tx,
                    id,
                    LeftReason::TrackingStopped,
                    now,
                    last_polled_at,
                )
                .await?;
                tx.commit().await?;
                Ok(Some(events))
            }

            pub(in crate::store) async fn meetings_version(
                pool: &Pool,
            ) -> Result<MeetingsVersion> {
                let row = sqlx::query(
                    "SELECT (SELECT count(*) FROM tracked_meetings WHERE status = 'active') \
                                AS active, \
                            (SELECT max(added_at) FROM tracked_meetings) AS last_added, \
                            (SELECT max(ended_at) FROM tracked_meetings) AS last_ended, \
                            (SELECT max(region_changed_at) FROM tracked_meetings) \
                                AS last_moved",
                )
                .fetch_one(pool)
                .await?;
                Ok(MeetingsVersion {
                    active: get(&row, "active")?,
                    last_added: get(&row, "last_added")?,
                    last_ended: get(&row, "last_ended")?,
                    last_moved: get(&row, "last_moved")?,
                })
            }

            pub(in crate::store) async fn active_meeting_keys(
                pool: &Pool,
            ) -> Result<Vec<(MeetingId, Region)>> {
                let rows = sqlx::query(
                    "SELECT meeting_id, region FROM tracked_meetings WHERE status = 'active' \
                     ORDER BY added_at, meeting_id",
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            decode::meeting_id(&get::<String>(row, "meeting_id")?)?,
                            decode::region(&get::<String>(row, "region")?)?,
                        ))
                    })
                    .collect()
            }

            pub(in crate::store) async fn list_meetings(
                pool: &Pool,
                active_only: bool,
            ) -> Result<Vec<TrackedMeeting>> {
                let sql = if active_only {
                    concat!(
                        "SELECT ",
                        meeting_columns!(),
                        " FROM tracked_meetings WHERE status = 'active' \
                         ORDER BY added_at, meeting_id"
                    )
                } else {
                    concat!(
                        "SELECT ",
                        meeting_columns!(),
                        " FROM tracked_meetings ORDER BY added_at, meeting_id"
                    )
                };
                let rows = sqlx::query(sql).fetch_all(pool).await?;
                rows.iter().map(meeting_from_row).collect()
            }

            pub(in crate::store) async fn get_meeting(
                pool: &Pool,
                id: &MeetingId,
            ) -> Result<Option<TrackedMeeting>> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    meeting_columns!(),
                    " FROM tracked_meetings WHERE meeting_id = $1"
                ))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(meeting_from_row).transpose()
            }

            pub(in crate::store) async fn snapshot(
                pool: &Pool,
                id: &MeetingId,
            ) -> Result<Snapshot> {
                // One statement, so the attendees and poll_seq come from the same commit.
                let rows = sqlx::query(
                    "SELECT m.poll_seq, m.last_polled_at, m.region_changed_at, \
                            a.attendee_id, a.external_user_id, a.audio, a.video, a.content \
                     FROM tracked_meetings AS m \
                     LEFT JOIN roster_attendees AS a ON a.meeting_id = m.meeting_id \
                     WHERE m.meeting_id = $1 \
                     ORDER BY a.attendee_id",
                )
                .bind(id.as_str())
                .fetch_all(pool)
                .await?;
                let Some(first) = rows.first() else {
                    return Err(StoreError::UnknownMeeting(id.clone()));
                };
                let mut snapshot = Snapshot {
                    attendees: Vec::with_capacity(rows.len()),
                    poll_seq: get(first, "poll_seq")?,
                    last_polled_at: get(first, "last_polled_at")?,
                    region_changed_at: get(first, "region_changed_at")?,
                };
                for row in &rows {
                    let Some(attendee_id) = get::<Option<String>>(row, "attendee_id")? else {
                        continue;
                    };
                    let capabilities = decode::capabilities(
                        ["audio", "video", "content"],
                        [get(row, "audio")?, get(row, "video")?, get(row, "content")?],
                    )?
                    .ok_or_else(|| {
                        StoreError::Corrupt("roster_attendees without capabilities".into())
                    })?;
                    snapshot.attendees.push(Attendee {
                        attendee_id: decode::attendee_id(&attendee_id)?,
                        external_user_id: ExternalUserId::new(get::<String>(
                            row,
                            "external_user_id",
                        )?),
                        capabilities,
                    });
                }
                // The diff merges two lists sorted by Rust's order; do not depend on the
                // database's collation for that.
                snapshot.attendees.sort_by(|a, b| a.attendee_id.cmp(&b.attendee_id));
                Ok(snapshot)
            }

            /// The poll bookkeeping, fenced: it matches no row unless the meeting is active and
            /// still at the `poll_seq` the diff was computed against, and (with a lease token)
            /// unless this replica still holds the meeting's lease under that token.
            fn record_poll(
                rec: &PollRecord<'_>,
                fence: Option<LeaseToken>,
            ) -> sqlx::query::Query<'static, Db, <Db as sqlx::Database>::Arguments> {
                macro_rules! record_poll_sql {
                    () => {
                        "UPDATE tracked_meetings \
                         SET last_polled_at = $3, poll_seq = poll_seq + 1, \
                             consecutive_failures = 0, last_error = NULL, last_error_code = NULL, last_error_at = NULL \
                         WHERE meeting_id = $1 AND poll_seq = $2 AND status = 'active'"
                    };
                }
                let query = match fence {
                    None => sqlx::query(record_poll_sql!()),
                    Some(_) => sqlx::query(concat!(record_poll_sql!(), $lease_fence)),
                };
                let query = query
                    .bind(rec.meeting_id.as_str())
                    .bind(rec.expected_seq)
                    .bind(ts(rec.started_at));
                match fence {
                    None => query,
                    Some(token) => query.bind(token.0),
                }
            }

            pub(in crate::store) async fn apply(
                pool: &Pool,
                rec: &PollRecord<'_>,
                fence: Option<LeaseToken>,
            ) -> Result<ApplyOutcome> {
                if rec.changes.is_empty() {
                    // An unchanged roster: one statement, no snapshot or event rows.
                    let done = record_poll(rec, fence).execute(pool).await?;
                    return Ok(if done.rows_affected() == 1 {
                        ApplyOutcome::Applied {
                            events: Vec::new(),
                            poll_seq: rec.expected_seq + 1,
                        }
                    } else {
                        ApplyOutcome::Conflict
                    });
                }
                // Test-only: ROSTER_SYNC_FAULT=stop_before_write stops the process here once.
                crate::fault::inject(crate::fault::Fault::StopBeforeWrite);
                let mut tx = begin_write(pool).await?;
                if record_poll(rec, fence).execute(&mut *tx).await?.rows_affected() != 1 {
                    // Dropping the transaction rolls it back; nothing was written anyway.
                    return Ok(ApplyOutcome::Conflict);
                }
                let mut events = insert_events(&mut tx, rec).await?;
                update_snapshot(&mut tx, rec.meeting_id, &events).await?;
                let closed = close_presence(&mut tx, rec.meeting_id, &events).await?;
                events.extend(closed);
                // Test-only: ROSTER_SYNC_FAULT=crash_before_commit ends the process here, and
                // stop_before_commit stops it here once.
                crate::fault::inject(crate::fault::Fault::CrashBeforeCommit);
                crate::fault::inject(crate::fault::Fault::StopBeforeCommit);
                tx.commit().await?;
                Ok(ApplyOutcome::Applied {
                    events,
                    poll_seq: rec.expected_seq + 1,
                })
            }

            /// Applies a poll's freshly inserted events to the snapshot, each kind in one
            /// statement that reads them back from `roster_events`, and checks that every event
            /// found the snapshot row it expected. The meeting's events between the first and
            /// last id are exactly this poll's: the fenced update holds the meeting's row (and
            /// SQLite the whole database) until commit, so no other writer adds any meanwhile.
            async fn update_snapshot(
                conn: &mut Connection,
                meeting: &MeetingId,
                events: &[StoredEvent],
            ) -> Result<()> {
                let (Some(first), Some(last)) = (events.first(), events.last()) else {
                    return Ok(());
                };
                let steps: [(EventKind, &'static str, &str); 3] = [
                    (
                        EventKind::Left,
                        "DELETE FROM roster_attendees \
                         WHERE meeting_id = $1 AND attendee_id IN ( \
                             SELECT attendee_id FROM roster_events \
                             WHERE meeting_id = $1 AND event_id BETWEEN $2 AND $3 \
                               AND kind = 'left')",
                        "name attendees that are not in the snapshot",
                    ),
                    (
                        EventKind::CapabilitiesChanged,
                        "UPDATE roster_attendees \
                         SET audio = e.audio, video = e.video, content = e.content \
                         FROM roster_events AS e \
                         WHERE e.meeting_id = $1 AND e.event_id BETWEEN $2 AND $3 \
                           AND e.kind = 'capabilities_changed' \
                           AND roster_attendees.meeting_id = e.meeting_id \
                           AND roster_attendees.attendee_id = e.attendee_id",
                        "name attendees that are not in the snapshot",
                    ),
                    (
                        EventKind::Joined,
                        "INSERT INTO roster_attendees \
                             (meeting_id, attendee_id, external_user_id, audio, video, content, \
                              joined_at) \
                         SELECT meeting_id, attendee_id, external_user_id, audio, video, content, \
                                observed_at \
                         FROM roster_events \
                         WHERE meeting_id = $1 AND event_id BETWEEN $2 AND $3 \
                           AND kind = 'joined' \
                         ON CONFLICT (meeting_id, attendee_id) DO NOTHING",
                        "name attendees that are already in the snapshot",
                    ),
                ];
                for (kind, sql, problem) in steps {
                    let expected = events.iter().filter(|e| e.kind == kind).count() as u64;
                    if expected == 0 {
                        continue;
                    }
                    let done = sqlx::query(sql)
                        .bind(meeting.as_str())
                        .bind(first.event_id)
                        .bind(last.event_id)
                        .execute(&mut *conn)
                        .await?;
                    if done.rows_affected() != expected {
                        return Err(StoreError::InvalidRecord(format!(
                            "{} of {expected} {kind} changes of meeting {meeting} {problem}",
                            expected - done.rows_affected().min(expected),
                        )));
                    }
                }
                Ok(())
            }

            pub(in crate::store) async fn end_meeting(
                pool: &Pool,
                id: &MeetingId,
                expected_seq: i64,
                observed_at: DateTime<Utc>,
                previous_poll_at: Option<DateTime<Utc>>,
                fence: Option<LeaseToken>,
            ) -> Result<ApplyOutcome> {
                let mut tx = begin_write(pool).await?;
                macro_rules! end_meeting_sql {
                    () => {
                        "UPDATE tracked_meetings \
                         SET status = 'ended', ended_at = $3, last_polled_at = $3, \
                             poll_seq = poll_seq + 1, consecutive_failures = 0, \
                             last_error = NULL, last_error_code = NULL, last_error_at = NULL \
                         WHERE meeting_id = $1 AND poll_seq = $2 AND status = 'active'"
                    };
                }
                let query = match fence {
                    None => sqlx::query(end_meeting_sql!()),
                    Some(_) => sqlx::query(concat!(end_meeting_sql!(), $lease_fence)),
                };
                let query = query
                    .bind(id.as_str())
                    .bind(expected_seq)
                    .bind(ts(observed_at));
                let query = match fence {
                    None => query,
                    Some(token) => query.bind(token.0),
                };
                let done = query.execute(&mut *tx).await?;
                if done.rows_affected() != 1 {
                    return Ok(ApplyOutcome::Conflict);
                }
                let events = leave_everyone(
                    &mut tx,
                    id,
                    LeftReason::MeetingEnded,
                    observed_at,
                    previous_poll_at,
                )
                .await?;
                tx.commit().await?;
                Ok(ApplyOutcome::Applied {
                    events,
                    poll_seq: expected_seq + 1,
                })
            }

            /// A `left` event for every attendee of the snapshot (ids in attendee order, their
            /// last capabilities as `before`), then an empty snapshot.
            async fn leave_everyone(
                conn: &mut Connection,
                id: &MeetingId,
                reason: LeftReason,
                observed_at: DateTime<Utc>,
                previous_poll_at: Option<DateTime<Utc>>,
            ) -> Result<Vec<StoredEvent>> {
                let observed_at = crate::store::not_before(id, observed_at, previous_poll_at);
                serialize_event_writers(&mut *conn).await?;
                let rows = sqlx::query(concat!(
                    "INSERT INTO roster_events \
                         (meeting_id, attendee_id, external_user_id, kind, \
                          previous_audio, previous_video, previous_content, reason, \
                          observed_at, previous_poll_at) \
                     SELECT meeting_id, attendee_id, external_user_id, 'left', \
                            audio, video, content, $2, $3, $4 \
                     FROM roster_attendees WHERE meeting_id = $1 \
                     ORDER BY attendee_id \
                     RETURNING ",
                    event_columns!()
                ))
                .bind(id.as_str())
                .bind(reason.as_str())
                .bind(ts(observed_at))
                .bind(previous_poll_at.map(ts))
                .fetch_all(&mut *conn)
                .await?;
                let mut events = events_from_rows(&rows)?;
                announce_events(&mut *conn, &events).await?;
                let closed = close_presence(&mut *conn, id, &events).await?;
                events.extend(closed);
                sqlx::query("DELETE FROM roster_attendees WHERE meeting_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *conn)
                    .await?;
                Ok(events)
            }

            pub(in crate::store) async fn record_failure(
                pool: &Pool,
                id: &MeetingId,
                code: Option<&str>,
                error: &str,
                at: DateTime<Utc>,
                fence: Option<LeaseToken>,
            ) -> Result<bool> {
                macro_rules! record_failure_sql {
                    ($code:literal) => {
                        concat!(
                            "UPDATE tracked_meetings \
                             SET consecutive_failures = consecutive_failures + 1, \
                                 last_error = $2, last_error_at = $3, last_error_code = ",
                            $code,
                            " WHERE meeting_id = $1"
                        )
                    };
                }
                let query = match fence {
                    None => sqlx::query(record_failure_sql!("$4"))
                        .bind(id.as_str())
                        .bind(error)
                        .bind(ts(at))
                        .bind(code),
                    // The lease token is `$4`, as `$lease_fence` expects.
                    Some(token) => sqlx::query(concat!(record_failure_sql!("$5"), $lease_fence))
                        .bind(id.as_str())
                        .bind(error)
                        .bind(ts(at))
                        .bind(token.0)
                        .bind(code),
                };
                Ok(query.execute(pool).await?.rows_affected() > 0)
            }

            pub(in crate::store) async fn events_since(
                pool: &Pool,
                after_event_id: i64,
                limit: i64,
            ) -> Result<Vec<StoredEvent>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM roster_events WHERE event_id > $1 ORDER BY event_id LIMIT $2"
                ))
                .bind(after_event_id)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                events_from_rows(&rows)
            }

            pub(in crate::store) async fn events_for_meeting(
                pool: &Pool,
                id: &MeetingId,
            ) -> Result<Vec<StoredEvent>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM roster_events WHERE meeting_id = $1 ORDER BY event_id"
                ))
                .bind(id.as_str())
                .fetch_all(pool)
                .await?;
                events_from_rows(&rows)
            }

            pub(in crate::store) async fn sessions(
                pool: &Pool,
                id: &MeetingId,
            ) -> Result<Vec<SessionRow>> {
                let rows = sqlx::query(
                    "SELECT meeting_id, attendee_id, external_user_id, joined_at, left_at, \
                            left_reason, duration_seconds \
                     FROM attendance_sessions WHERE meeting_id = $1 \
                     ORDER BY joined_at, attendee_id",
                )
                .bind(id.as_str())
                .fetch_all(pool)
                .await?;
                rows.iter().map(session_from_row).collect()
            }

            pub(in crate::store) async fn attendance(
                pool: &Pool,
                id: &MeetingId,
            ) -> Result<Vec<AttendanceRow>> {
                let rows = sqlx::query(
                    "SELECT meeting_id, external_user_id, sessions, first_joined_at, \
                            last_left_at, total_seconds \
                     FROM meeting_attendance WHERE meeting_id = $1 \
                     ORDER BY first_joined_at, external_user_id",
                )
                .bind(id.as_str())
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(AttendanceRow {
                            meeting_id: decode::meeting_id(&get::<String>(row, "meeting_id")?)?,
                            external_user_id: ExternalUserId::new(get::<String>(
                                row,
                                "external_user_id",
                            )?),
                            sessions: get(row, "sessions")?,
                            first_joined_at: get(row, "first_joined_at")?,
                            last_left_at: get(row, "last_left_at")?,
                            total_seconds: get(row, "total_seconds")?,
                        })
                    })
                    .collect()
            }

            /// The `attendance_sessions` rows of every meeting labelled `label`, ordered by
            /// `joined_at`, meeting id and attendee id.
            pub(in crate::store) async fn label_sessions(
                pool: &Pool,
                label: &str,
            ) -> Result<Vec<SessionRow>> {
                let rows = sqlx::query(
                    "SELECT s.meeting_id, s.attendee_id, s.external_user_id, s.joined_at, \
                            s.left_at, s.left_reason, s.duration_seconds \
                     FROM attendance_sessions AS s \
                     JOIN tracked_meetings AS m ON m.meeting_id = s.meeting_id \
                     WHERE m.label = $1 \
                     ORDER BY s.joined_at, s.meeting_id, s.attendee_id",
                )
                .bind(label)
                .fetch_all(pool)
                .await?;
                rows.iter().map(session_from_row).collect()
            }

            pub(in crate::store) async fn meetings_with_label(
                pool: &Pool,
                label: &str,
            ) -> Result<Vec<TrackedMeeting>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    meeting_columns!(),
                    " FROM tracked_meetings WHERE label = $1 ORDER BY added_at, meeting_id"
                ))
                .bind(label)
                .fetch_all(pool)
                .await?;
                rows.iter().map(meeting_from_row).collect()
            }

            pub(in crate::store) async fn capability_changes(
                pool: &Pool,
                since: Option<DateTime<Utc>>,
            ) -> Result<Vec<StoredEvent>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM roster_events \
                     WHERE kind = 'capabilities_changed' AND ($1 IS NULL OR observed_at >= $1) \
                     ORDER BY event_id"
                ))
                .bind(since.map(ts))
                .fetch_all(pool)
                .await?;
                events_from_rows(&rows)
            }

            fn session_from_row(row: &DbRow) -> Result<SessionRow> {
                Ok(SessionRow {
                    meeting_id: decode::meeting_id(&get::<String>(row, "meeting_id")?)?,
                    attendee_id: decode::attendee_id(&get::<String>(row, "attendee_id")?)?,
                    external_user_id: ExternalUserId::new(get::<String>(
                        row,
                        "external_user_id",
                    )?),
                    joined_at: get(row, "joined_at")?,
                    left_at: get(row, "left_at")?,
                    left_reason: get::<Option<String>>(row, "left_reason")?
                        .map(|r| decode::parse::<LeftReason>("left_reason", &r))
                        .transpose()?,
                    duration_seconds: get(row, "duration_seconds")?,
                })
            }

            fn meeting_from_row(row: &DbRow) -> Result<TrackedMeeting> {
                Ok(TrackedMeeting {
                    meeting_id: decode::meeting_id(&get::<String>(row, "meeting_id")?)?,
                    region: decode::region(&get::<String>(row, "region")?)?,
                    label: get(row, "label")?,
                    status: decode::parse("status", &get::<String>(row, "status")?)?,
                    added_at: get(row, "added_at")?,
                    ended_at: get(row, "ended_at")?,
                    last_polled_at: get(row, "last_polled_at")?,
                    poll_seq: get(row, "poll_seq")?,
                    consecutive_failures: get(row, "consecutive_failures")?,
                    last_error_code: get(row, "last_error_code")?,
                    last_error: get(row, "last_error")?,
                    last_error_at: get(row, "last_error_at")?,
                })
            }

            /// Decodes rows selected or returned with `event_columns!()`, sorted by `event_id`
            /// (`RETURNING` does not promise an order).
            pub(in crate::store) fn events_from_rows(rows: &[DbRow]) -> Result<Vec<StoredEvent>> {
                let mut events = rows.iter().map(event_from_row).collect::<Result<Vec<_>>>()?;
                events.sort_by_key(|e| e.event_id);
                Ok(events)
            }

            /// Each attendee's presence so far, folded from the meeting's presence rows.
            async fn presence_state(
                conn: &mut Connection,
                meeting: &MeetingId,
            ) -> Result<(
                std::collections::HashMap<AttendeeId, crate::presence::AttendeePresence>,
                i64,
            )> {
                let rows = sqlx::query(
                    "SELECT event_id, attendee_id, kind, occurred_at FROM roster_events \
                     WHERE meeting_id = $1 AND occurred_at IS NOT NULL ORDER BY event_id",
                )
                .bind(meeting.as_str())
                .fetch_all(&mut *conn)
                .await?;
                let mut state = std::collections::HashMap::<
                    AttendeeId,
                    crate::presence::AttendeePresence,
                >::new();
                let mut fence = 0;
                for row in &rows {
                    fence = get::<i64>(row, "event_id")?;
                    let attendee = decode::attendee_id(&get::<String>(row, "attendee_id")?)?;
                    let kind: EventKind = decode::parse("kind", &get::<String>(row, "kind")?)?;
                    let at: DateTime<Utc> = get(row, "occurred_at")?;
                    let p = state.entry(attendee).or_default();
                    match kind {
                        EventKind::Connected => p.connected_since = Some(at),
                        EventKind::Disconnected => {
                            p.connected_since = None;
                            p.video_since = None;
                            p.content_since = None;
                        }
                        EventKind::VideoStarted => p.video_since = Some(at),
                        EventKind::VideoStopped => p.video_since = None,
                        EventKind::ContentStarted => p.content_since = Some(at),
                        EventKind::ContentStopped => p.content_since = None,
                        _ => {}
                    }
                    p.last_at = p.last_at.max(Some(at));
                }
                Ok((state, fence))
            }

            /// Inserts presence changes (each with the external user id to record) in order.
            async fn insert_presence(
                conn: &mut Connection,
                meeting: &MeetingId,
                changes: &[(crate::presence::PresenceChange, ExternalUserId)],
                observed_at: DateTime<Utc>,
                previous_poll_at: Option<DateTime<Utc>>,
            ) -> Result<Vec<StoredEvent>> {
                if changes.is_empty() {
                    return Ok(Vec::new());
                }
                serialize_event_writers(&mut *conn).await?;
                let mut events = Vec::with_capacity(changes.len());
                for (c, user) in changes {
                    let row = sqlx::query(concat!(
                        "INSERT INTO roster_events \
                             (meeting_id, attendee_id, external_user_id, kind, reason, \
                              observed_at, previous_poll_at, occurred_at, source, inferred, \
                              inferred_from, inferred_to, network_type) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         RETURNING ",
                        event_columns!()
                    ))
                    .bind(meeting.as_str())
                    .bind(c.attendee_id.as_str())
                    .bind(user.as_str())
                    .bind(c.kind.as_str())
                    .bind(c.reason.map(|r| r.as_str()))
                    .bind(ts(observed_at.max(c.occurred_at)))
                    .bind(previous_poll_at.map(ts))
                    .bind(ts(c.occurred_at))
                    .bind(c.source.as_str())
                    .bind(c.inferred.is_some())
                    .bind(c.inferred.map(|w| ts(w.from)))
                    .bind(c.inferred.map(|w| ts(w.to)))
                    .bind(c.network_type.as_deref())
                    .fetch_one(&mut *conn)
                    .await?;
                    events.push(event_from_row(&row)?);
                }
                announce_events(&mut *conn, &events).await?;
                Ok(events)
            }

            /// Closes the presence of every attendee a poll proved gone (`left` events just
            /// inserted): an open session ends inferred inside the poll window.
            async fn close_presence(
                conn: &mut Connection,
                meeting: &MeetingId,
                events: &[StoredEvent],
            ) -> Result<Vec<StoredEvent>> {
                let left: Vec<&StoredEvent> =
                    events.iter().filter(|e| e.kind == EventKind::Left).collect();
                let Some(first) = left.first() else {
                    return Ok(Vec::new());
                };
                let (mut state, _) = presence_state(&mut *conn, meeting).await?;
                if state.is_empty() {
                    return Ok(Vec::new());
                }
                let mut changes = Vec::new();
                for e in &left {
                    let Some(p) = state.get_mut(&e.attendee_id) else {
                        continue;
                    };
                    let reason = match e.reason {
                        Some(LeftReason::Removed) => crate::presence::DisconnectReason::Removed,
                        Some(LeftReason::TrackingStopped) => {
                            crate::presence::DisconnectReason::TrackingStopped
                        }
                        _ => crate::presence::DisconnectReason::MeetingEnded,
                    };
                    for c in crate::presence::close_by_poll(
                        p,
                        &e.attendee_id,
                        reason,
                        e.previous_poll_at,
                        e.observed_at,
                    ) {
                        changes.push((c, e.external_user_id.clone()));
                    }
                }
                insert_presence(
                    conn,
                    meeting,
                    &changes,
                    first.observed_at,
                    first.previous_poll_at,
                )
                .await
            }

            pub(in crate::store) async fn presence_context(
                pool: &Pool,
                meeting: &MeetingId,
            ) -> Result<crate::presence::PresenceContext> {
                let mut conn = pool.acquire().await?;
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM tracked_meetings WHERE meeting_id = $1")
                        .bind(meeting.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                let rows = sqlx::query(
                    "SELECT a.attendee_id, a.external_user_id, \
                            coalesce((SELECT coalesce(e.previous_poll_at, e.observed_at) \
                                      FROM roster_events AS e \
                                      WHERE e.meeting_id = a.meeting_id \
                                        AND e.attendee_id = a.attendee_id \
                                        AND e.kind = 'joined' \
                                      ORDER BY e.event_id DESC LIMIT 1), a.joined_at) \
                                AS known_since \
                     FROM roster_attendees AS a WHERE a.meeting_id = $1",
                )
                .bind(meeting.as_str())
                .fetch_all(&mut *conn)
                .await?;
                let mut roster = std::collections::HashMap::with_capacity(rows.len());
                for row in &rows {
                    roster.insert(
                        decode::attendee_id(&get::<String>(row, "attendee_id")?)?,
                        (
                            ExternalUserId::new(get::<String>(row, "external_user_id")?),
                            get::<DateTime<Utc>>(row, "known_since")?,
                        ),
                    );
                }
                let (state, fence) = presence_state(&mut conn, meeting).await?;
                Ok(crate::presence::PresenceContext {
                    active: status.as_deref() == Some("active"),
                    roster,
                    state,
                    fence,
                })
            }

            pub(in crate::store) async fn presence_applied(
                pool: &Pool,
                ids: &[String],
            ) -> Result<std::collections::HashSet<String>> {
                let mut found = std::collections::HashSet::new();
                for id in ids {
                    let hit: Option<String> = sqlx::query_scalar(
                        "SELECT envelope_id FROM presence_applied WHERE envelope_id = $1",
                    )
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                    found.extend(hit);
                }
                Ok(found)
            }

            /// `None` when the fence moved, the meeting is not active, or an envelope id was
            /// already applied: nothing was written and the caller recomputes.
            pub(in crate::store) async fn apply_presence(
                pool: &Pool,
                rec: &PresenceRecord<'_>,
                users: &std::collections::HashMap<AttendeeId, ExternalUserId>,
            ) -> Result<Option<Vec<StoredEvent>>> {
                let mut tx = begin_write(pool).await?;
                let status: Option<String> = sqlx::query_scalar(concat!(
                    "SELECT status FROM tracked_meetings WHERE meeting_id = $1",
                    $for_update
                ))
                .bind(rec.meeting_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if status.as_deref() != Some("active") {
                    return Ok(None);
                }
                let fence: i64 = sqlx::query_scalar(
                    "SELECT coalesce(max(event_id), 0) FROM roster_events \
                     WHERE meeting_id = $1 AND occurred_at IS NOT NULL",
                )
                .bind(rec.meeting_id.as_str())
                .fetch_one(&mut *tx)
                .await?;
                if fence != rec.fence {
                    return Ok(None);
                }
                for id in rec.envelope_ids {
                    let done = sqlx::query(
                        "INSERT INTO presence_applied (envelope_id, meeting_id, applied_at) \
                         VALUES ($1, $2, $3) ON CONFLICT (envelope_id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(rec.meeting_id.as_str())
                    .bind(ts(rec.observed_at))
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Ok(None);
                    }
                }
                let mut changes = Vec::with_capacity(rec.changes.len());
                for c in rec.changes {
                    let user = users.get(&c.attendee_id).ok_or_else(|| {
                        StoreError::InvalidRecord(format!(
                            "presence of attendee {} who is not in the roster of meeting {}",
                            c.attendee_id, rec.meeting_id
                        ))
                    })?;
                    changes.push((c.clone(), user.clone()));
                }
                let events =
                    insert_presence(&mut tx, rec.meeting_id, &changes, rec.observed_at, None)
                        .await?;
                tx.commit().await?;
                Ok(Some(events))
            }

            fn event_from_row(row: &DbRow) -> Result<StoredEvent> {
                let kind: EventKind = decode::parse("kind", &get::<String>(row, "kind")?)?;
                let reason = get::<Option<String>>(row, "reason")?;
                let presence = if kind.is_presence() {
                    let occurred_at: Option<DateTime<Utc>> = get(row, "occurred_at")?;
                    let source: Option<String> = get(row, "source")?;
                    let from: Option<DateTime<Utc>> = get(row, "inferred_from")?;
                    let to: Option<DateTime<Utc>> = get(row, "inferred_to")?;
                    Some(crate::store::PresenceFacts {
                        occurred_at: occurred_at.ok_or_else(|| {
                            StoreError::Corrupt("column occurred_at: NULL on a presence row".into())
                        })?,
                        source: source
                            .as_deref()
                            .and_then(crate::presence::Source::parse)
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!("column source: {source:?}"))
                            })?,
                        inferred: from
                            .zip(to)
                            .map(|(from, to)| crate::presence::Window { from, to }),
                        network_type: get(row, "network_type")?,
                        reason: match reason.as_deref() {
                            None => None,
                            Some(r) => Some(crate::presence::DisconnectReason::parse(r).ok_or_else(
                                || StoreError::Corrupt(format!("column reason: {r:?}")),
                            )?),
                        },
                    })
                } else {
                    None
                };
                let reason = if kind.is_presence() {
                    None
                } else {
                    reason.map(|r| decode::parse("reason", &r)).transpose()?
                };
                Ok(StoredEvent {
                    event_id: get(row, "event_id")?,
                    meeting_id: decode::meeting_id(&get::<String>(row, "meeting_id")?)?,
                    attendee_id: decode::attendee_id(&get::<String>(row, "attendee_id")?)?,
                    external_user_id: ExternalUserId::new(get::<String>(
                        row,
                        "external_user_id",
                    )?),
                    kind,
                    after: decode::capabilities(
                        ["audio", "video", "content"],
                        [get(row, "audio")?, get(row, "video")?, get(row, "content")?],
                    )?,
                    before: decode::capabilities(
                        ["previous_audio", "previous_video", "previous_content"],
                        [
                            get(row, "previous_audio")?,
                            get(row, "previous_video")?,
                            get(row, "previous_content")?,
                        ],
                    )?,
                    reason,
                    observed_at: get(row, "observed_at")?,
                    previous_poll_at: get(row, "previous_poll_at")?,
                    presence,
                })
            }
        }
    };
}
pub(super) use shared_queries;
