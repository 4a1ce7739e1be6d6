-- Connected services: a provider credential per account and provider name, sealed with the
-- account secret (the server cannot read it). Keep the meaning identical to
-- migrations/sqlite/0003_services.sql.
CREATE TABLE services (
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    provider    TEXT NOT NULL,
    sealed      BYTEA NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, provider)
);
