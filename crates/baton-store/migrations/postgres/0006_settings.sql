-- Account settings (e.g. the handoff dialog's defaults), sealed with the account secret so the
-- server cannot read them, shared by every machine and browser of the account. Keep the meaning
-- identical to migrations/sqlite/0006_settings.sql.
CREATE TABLE settings (
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    name        TEXT NOT NULL,
    sealed      BYTEA NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
