-- Delivery cursors of the webhook sinks ([[webhooks]] in the configuration), one row per sink
-- name. migrations/postgres/0004_webhook_cursors.sql holds the same table for Postgres.
-- Timestamps are TEXT in the one fixed form described in 0001_initial_schema.sql.
--
-- A sink has delivered (or filtered out) every event with event_id <= last_event_id; it
-- advances only after its receiver answered 2xx, so delivery is at-least-once and in order.
CREATE TABLE webhook_cursors (
    name            TEXT PRIMARY KEY NOT NULL,
    last_event_id   INTEGER NOT NULL CHECK (last_event_id >= 0),
    created_at      TEXT NOT NULL CHECK (created_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    -- When last_event_id last moved.
    updated_at      TEXT NOT NULL CHECK (updated_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    -- The latest failed attempt, cleared by the next success.
    last_error      TEXT,
    last_error_at   TEXT CHECK (last_error_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    CONSTRAINT webhook_cursors_last_error_with_time
        CHECK ((last_error IS NULL) = (last_error_at IS NULL))
) STRICT;
