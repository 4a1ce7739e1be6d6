-- What an enrolled member of an account is: 'daemon' (a machine running baton) or 'browser' (the
-- web UI). Every member enrolled before this migration is a machine. Keep the meaning identical
-- to migrations/postgres/0005_machine_kind.sql.
ALTER TABLE machines ADD COLUMN kind TEXT NOT NULL DEFAULT 'daemon';
