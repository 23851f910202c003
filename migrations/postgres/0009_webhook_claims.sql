-- Expiring delivery claims on the webhook cursors. migrations/sqlite/0009_webhook_claims.sql
-- holds the same columns for SQLite.
--
-- A sink's next batch is delivered by the one process that holds the claim: claimed_by names
-- it (host:pid:nonce), claim_expires_at is when the claim lapses by the database's clock
-- (set as now() + ttl in SQL), and claim_token is bumped by every claim. Moving
-- last_event_id requires the claim_token the mover was given, so a process whose claim
-- lapsed and was taken over cannot move the cursor. No transaction stays open while a batch
-- is posted: a stopped process holds a sink only until its claim expires.
ALTER TABLE webhook_cursors
    ADD COLUMN claimed_by       text,
    ADD COLUMN claim_expires_at timestamptz,
    ADD COLUMN claim_token      bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT webhook_cursors_claim_with_expiry
        CHECK ((claimed_by IS NULL) = (claim_expires_at IS NULL));
