-- Baton store, first schema (PostgreSQL). Ids are UUID text, times are Unix milliseconds, u64
-- counters are BIGINT (i64), sealed values are BYTEA, lists and options are JSON text.
-- Keep the meaning identical to migrations/sqlite/0001_init.sql.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE machines (
    id          TEXT PRIMARY KEY NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    name        TEXT NOT NULL,
    sign_pk     BYTEA NOT NULL,
    box_pk      BYTEA NOT NULL,
    providers   TEXT NOT NULL DEFAULT '[]',
    last_seen   BIGINT,
    created_at  BIGINT NOT NULL,
    UNIQUE (account_id, name),
    -- Target of the composite keys below, so a row can only point at a machine of its own account.
    UNIQUE (id, account_id)
);

CREATE TABLE challenges (
    nonce       BYTEA PRIMARY KEY NOT NULL,
    machine_id  TEXT NOT NULL REFERENCES machines (id),
    expires_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    token_hash  BYTEA PRIMARY KEY NOT NULL,
    machine_id  TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    FOREIGN KEY (machine_id, account_id) REFERENCES machines (id, account_id)
);

CREATE TABLE pairings (
    id             TEXT PRIMARY KEY NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    sealed_secret  BYTEA NOT NULL,
    expires_at     BIGINT NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY NOT NULL,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    provider        TEXT NOT NULL,
    mode            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    epoch           BIGINT NOT NULL CHECK (epoch >= 0),
    status          TEXT NOT NULL,
    last_seq        BIGINT NOT NULL CHECK (last_seq >= 0),
    active_handoff  TEXT,
    -- Last input order handed out; the next input gets input_order + 1.
    input_order     BIGINT NOT NULL DEFAULT 0,
    sealed_meta     BYTEA NOT NULL,
    sealed_key      BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    FOREIGN KEY (owner, account_id) REFERENCES machines (id, account_id)
);
CREATE INDEX sessions_by_account ON sessions (account_id, created_at);
CREATE INDEX sessions_by_active_handoff ON sessions (active_handoff)
    WHERE active_handoff IS NOT NULL;

CREATE TABLE entries (
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    seq         BIGINT NOT NULL CHECK (seq >= 1),
    epoch       BIGINT NOT NULL,
    input_id    TEXT,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE inputs (
    session_id    TEXT NOT NULL REFERENCES sessions (id),
    id            TEXT NOT NULL,
    ord           BIGINT NOT NULL,
    sealed        BYTEA NOT NULL,
    consumed_seq  BIGINT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (session_id, id),
    UNIQUE (session_id, ord)
);
CREATE INDEX inputs_pending ON inputs (session_id, ord) WHERE consumed_seq IS NULL;

CREATE TABLE handoffs (
    id              TEXT PRIMARY KEY NOT NULL,
    session_id      TEXT NOT NULL REFERENCES sessions (id),
    from_machine    TEXT NOT NULL REFERENCES machines (id),
    to_machine      TEXT NOT NULL REFERENCES machines (id),
    from_epoch      BIGINT NOT NULL,
    phase           TEXT NOT NULL,
    result          TEXT NOT NULL,
    phases          TEXT NOT NULL,
    error           TEXT,
    options         TEXT NOT NULL,
    sealed_options  BYTEA,
    bytes           BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX handoffs_by_session ON handoffs (session_id, created_at);
CREATE INDEX handoffs_active ON handoffs (result) WHERE result = 'active';

CREATE TABLE handoff_bundles (
    handoff_id  TEXT PRIMARY KEY NOT NULL REFERENCES handoffs (id),
    data        BYTEA NOT NULL
);
