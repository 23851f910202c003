-- Expiring delivery claims on the webhook cursors. migrations/postgres/0009_webhook_claims.sql
-- holds the same columns for Postgres; timestamps are TEXT in the one fixed form described in
-- 0001_initial_schema.sql.
--
-- A sink's next batch is delivered by the one process that holds the claim: claimed_by names
-- it (host:pid:nonce), claim_expires_at is when the claim lapses, and claim_token is bumped
-- by every claim. Moving last_event_id requires the claim_token the mover was given, so a
-- process whose claim lapsed and was taken over cannot move the cursor. (SQLite has one
-- writing process, the writer lock, but the rule is the same on both backends.)
ALTER TABLE webhook_cursors ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_cursors ADD COLUMN claim_expires_at TEXT CHECK (claim_expires_at GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z');
ALTER TABLE webhook_cursors ADD COLUMN claim_token INTEGER NOT NULL DEFAULT 0;
