-- The error code of a failed poll beside its message, so `meetings list --format json` can be
-- filtered on it; and when a meeting last moved to another control region
-- (`meetings add --force --region`), so the scheduler notices the move without a restart.
-- migrations/postgres/0003_error_codes_and_region_moves.sql makes the same change.
ALTER TABLE tracked_meetings ADD COLUMN last_error_code TEXT;
ALTER TABLE tracked_meetings ADD COLUMN region_changed_at TEXT CHECK (region_changed_at GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z');
