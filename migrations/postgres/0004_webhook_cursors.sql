-- Delivery cursors of the webhook sinks ([[webhooks]] in the configuration), one row per sink
-- name. migrations/sqlite/0004_webhook_cursors.sql holds the same table for SQLite.
--
-- A sink has delivered (or filtered out) every event with event_id <= last_event_id; it
-- advances only after its receiver answered 2xx, so delivery is at-least-once and in order.
CREATE TABLE webhook_cursors (
    name            text COLLATE "C" PRIMARY KEY,
    last_event_id   bigint NOT NULL CHECK (last_event_id >= 0),
    created_at      timestamptz NOT NULL,
    -- When last_event_id last moved.
    updated_at      timestamptz NOT NULL,
    -- The latest failed attempt, cleared by the next success.
    last_error      text,
    last_error_at   timestamptz,
    CONSTRAINT webhook_cursors_last_error_with_time
        CHECK ((last_error IS NULL) = (last_error_at IS NULL))
);
