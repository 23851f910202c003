-- Who holds the single-writer lock (`run` without cluster.enabled), so that a second `run` on
-- the same database can name it in its refusal. The lock itself is a session advisory lock;
-- this row only describes it. It is written by the process that takes the lock, on the
-- lock's own session, and a reader trusts it only while backend_pid still holds that lock
-- (a row left by a process that died is then ignored). migrations/sqlite/0006 holds the
-- same table for SQLite, whose lock file names the holder instead: there it stays empty.
CREATE TABLE writer_lock_holder (
    -- At most one row.
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    host            text NOT NULL,
    pid             integer NOT NULL,
    version         text NOT NULL,
    -- pg_backend_pid() of the session holding the advisory lock.
    backend_pid     integer NOT NULL,
    locked_at       timestamptz NOT NULL DEFAULT now()
);
