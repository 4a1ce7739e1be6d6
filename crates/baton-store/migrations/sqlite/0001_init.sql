-- Baton store, first schema (SQLite). Ids are UUID text, times are Unix milliseconds, u64
-- counters are INTEGER (i64), sealed values are BLOB, lists and options are JSON text.
-- Keep the meaning identical to migrations/postgres/0001_init.sql.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE machines (
    id          TEXT PRIMARY KEY NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    name        TEXT NOT NULL,
    sign_pk     BLOB NOT NULL,
    box_pk      BLOB NOT NULL,
    providers   TEXT NOT NULL DEFAULT '[]',
    last_seen   INTEGER,
    created_at  INTEGER NOT NULL,
    UNIQUE (account_id, name),
    -- Target of the composite keys below, so a row can only point at a machine of its own account.
    UNIQUE (id, account_id)
);

CREATE TABLE challenges (
    nonce       BLOB PRIMARY KEY NOT NULL,
    machine_id  TEXT NOT NULL REFERENCES machines (id),
    expires_at  INTEGER NOT NULL
);

CREATE TABLE tokens (
    token_hash  BLOB PRIMARY KEY NOT NULL,
    machine_id  TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    FOREIGN KEY (machine_id, account_id) REFERENCES machines (id, account_id)
);

CREATE TABLE pairings (
    id             TEXT PRIMARY KEY NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    sealed_secret  BLOB NOT NULL,
    expires_at     INTEGER NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY NOT NULL,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    provider        TEXT NOT NULL,
    mode            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    epoch           INTEGER NOT NULL CHECK (epoch >= 0),
    status          TEXT NOT NULL,
    last_seq        INTEGER NOT NULL CHECK (last_seq >= 0),
    active_handoff  TEXT,
    -- Last input order handed out; the next input gets input_order + 1.
    input_order     INTEGER NOT NULL DEFAULT 0,
    sealed_meta     BLOB NOT NULL,
    sealed_key      BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    FOREIGN KEY (owner, account_id) REFERENCES machines (id, account_id)
);
CREATE INDEX sessions_by_account ON sessions (account_id, created_at);
CREATE INDEX sessions_by_active_handoff ON sessions (active_handoff)
    WHERE active_handoff IS NOT NULL;

CREATE TABLE entries (
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    seq         INTEGER NOT NULL CHECK (seq >= 1),
    epoch       INTEGER NOT NULL,
    input_id    TEXT,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE inputs (
    session_id    TEXT NOT NULL REFERENCES sessions (id),
    id            TEXT NOT NULL,
    ord           INTEGER NOT NULL,
    sealed        BLOB NOT NULL,
    consumed_seq  INTEGER,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (session_id, id),
    UNIQUE (session_id, ord)
);
CREATE INDEX inputs_pending ON inputs (session_id, ord) WHERE consumed_seq IS NULL;

CREATE TABLE handoffs (
    id              TEXT PRIMARY KEY NOT NULL,
    session_id      TEXT NOT NULL REFERENCES sessions (id),
    from_machine    TEXT NOT NULL REFERENCES machines (id),
    to_machine      TEXT NOT NULL REFERENCES machines (id),
    from_epoch      INTEGER NOT NULL,
    phase           TEXT NOT NULL,
    result          TEXT NOT NULL,
    phases          TEXT NOT NULL,
    error           TEXT,
    options         TEXT NOT NULL,
    sealed_options  BLOB,
    bytes           INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX handoffs_by_session ON handoffs (session_id, created_at);
CREATE INDEX handoffs_active ON handoffs (result) WHERE result = 'active';

CREATE TABLE handoff_bundles (
    handoff_id  TEXT PRIMARY KEY NOT NULL REFERENCES handoffs (id),
    data        BLOB NOT NULL
);
