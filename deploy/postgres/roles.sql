-- The three database roles of a roster-sync deployment on Postgres, least privilege each:
--
--   roster_migrator  owns the schema: `roster-sync migrate` (DDL).
--   roster_writer    `roster-sync run --no-migrate`, `meetings`, `forget`: reads and writes
--                    rows (DML), takes sequence values, advisory locks, NOTIFY. No DDL.
--   roster_analyst   reads the tables and views, read-only by default (SELECT only).
--
-- Run it as a superuser (on a managed service, a role that is a member of roster_migrator),
-- connected to roster-sync's database, before the first `migrate` and once after it:
--   psql -v ON_ERROR_STOP=1 -d roster -f deploy/postgres/roles.sql
-- then give each role a password (`\password roster_writer` in psql) or another login method.
-- It is idempotent: running it again changes nothing else.
-- It expects the schema `public` and tables created by roster_migrator: a database migrated
-- earlier by another role needs `REASSIGN OWNED BY that_role TO roster_migrator` first
-- (tables owned by someone else get none of the default privileges below).

-- Roles are cluster-wide; create each one unless it exists (also when two sessions race).
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['roster_migrator', 'roster_writer', 'roster_analyst'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', name);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- Analysts' sessions are read-only unless they ask otherwise; their privileges alone
-- already forbid any write.
ALTER ROLE roster_analyst SET default_transaction_read_only = on;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO roster_migrator, roster_writer, roster_analyst',
                   current_database());
END
$$;

-- Only the migrator creates objects (PUBLIC's CREATE on `public` is revoked: the default
-- since Postgres 15, made explicit for older servers).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO roster_migrator;
GRANT USAGE ON SCHEMA public TO roster_writer, roster_analyst;

-- Tables, views and sequences the migrator creates from now on (every migration of a
-- future version too)...
ALTER DEFAULT PRIVILEGES FOR ROLE roster_migrator IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO roster_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE roster_migrator IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO roster_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE roster_migrator IN SCHEMA public
    GRANT SELECT ON TABLES TO roster_analyst;

-- ...and those that already exist, when this runs after a `migrate`.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO roster_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO roster_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO roster_analyst;

-- The record of applied migrations is the migrator's alone. The first `migrate` creates it
-- (with the default privileges above): run this file once more after that.
DO $$
BEGIN
    IF to_regclass('public._sqlx_migrations') IS NOT NULL THEN
        REVOKE INSERT, UPDATE, DELETE ON public._sqlx_migrations FROM roster_writer;
    END IF;
END
$$;
