-- The cluster replicas (cluster.enabled) holding the writer lock's advisory key in shared mode,
-- so that a single-writer daemon refused by them can name them, as writer_lock_holder (0006)
-- names a single writer to whoever it refuses. The lock itself is the advisory lock; a row only
-- describes it. Each replica writes its row on its lock's own session when it takes the lock,
-- and deletes the rows of sessions that no longer hold it; a reader trusts a row only while
-- backend_pid holds the lock in shared mode. migrations/sqlite/0008 holds the same table for
-- SQLite, where cluster mode is refused: there it stays empty.
CREATE TABLE writer_lock_replicas (
    -- pg_backend_pid() of the session holding the shared advisory lock.
    backend_pid     integer PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    version         text NOT NULL,
    locked_at       timestamptz NOT NULL DEFAULT now()
);
