//! The PostgreSQL [`Store`], for servers that run as several replicas over one database.
//!
//! Concurrency: every write runs in a READ COMMITTED transaction that first locks the rows its
//! checks read (`SELECT … FOR NO KEY UPDATE` on the session, and on the handoff before its
//! session), so concurrent writers of one session queue on that row and each sees the state the
//! previous one committed. `NO KEY` because no write changes a key: inserts of entries and inputs
//! (which take `KEY SHARE` on the session for their foreign key) are not blocked by it. Locks are
//! always taken handoff before session, so two transactions cannot wait on each other.

use std::sync::Arc;

use async_trait::async_trait;
use baton_proto::{
    AccountId, ApiError, HandoffId, HandoffPhase, HandoffRecord, HandoffResult, InputId,
    InputRecord, MachineId, Millis, PhaseRecord, ProviderInfo, Sealed, SealedEntry, ServiceRecord,
    SessionId, SessionRecord, SessionStatus,
};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor, Postgres, Transaction};

use crate::common::{
    Cols, CommitStep, DbResult, account_from, appended, check_append, check_writer, commit_step,
    entry_cols, entry_from, handoff_cols, handoff_from, input_cols, input_from, machine_cols,
    machine_from, machine_id_from, pairing_from, service_cols, service_from, session_cols,
    session_from, setting_from, stored_entries, to_i64, to_json, to_u64, token_from,
};
use crate::{
    AbortHandoff, AppendEntries, CommitHandoff, MachineRow, PairingRow, Result, SettingRecord,
    Store, StoreError, TokenRow,
};

/// Migrations in order; a version, once released, never changes.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_restore_status",
        include_str!("../migrations/postgres/0002_restore_status.sql"),
    ),
    (
        "0003_services",
        include_str!("../migrations/postgres/0003_services.sql"),
    ),
    (
        "0004_handoff_workspace",
        include_str!("../migrations/postgres/0004_handoff_workspace.sql"),
    ),
    (
        "0005_machine_kind",
        include_str!("../migrations/postgres/0005_machine_kind.sql"),
    ),
    (
        "0006_settings",
        include_str!("../migrations/postgres/0006_settings.sql"),
    ),
];

/// Key of the advisory lock that serialises migrations when several replicas start at once.
const MIGRATION_LOCK: i64 = 0x6261_746f_6e5f_6d69; // "baton_mi"

/// Largest pool; replicas share the database's connection limit.
const MAX_CONNECTIONS: u32 = 10;

/// Accepts only plain lower-case identifiers (`[a-z_][a-z0-9_]*`, at most 63 bytes), which are
/// then safe to quote into DDL.
fn check_schema_name(schema: &str) -> Result<()> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Database(sqlx::Error::Configuration(
            format!("invalid schema name {schema:?}").into(),
        )))
    }
}

/// The PostgreSQL implementation of [`Store`].
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (its default `search_path`) and brings the schema up to
    /// date.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await
            .db()?;
        migrate(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// Connects with every table in `schema` (created if missing): each pooled connection sets
    /// its `search_path` to it. Lets tests share one database, one schema each. The name must be
    /// a plain lower-case identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub async fn connect_with_schema(url: &str, schema: &str) -> Result<PostgresStore> {
        check_schema_name(schema)?;
        // The name was checked above to be a plain identifier, so quoting it is enough.
        let mut conn = PgConnection::connect(url).await.db()?;
        conn.execute(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .await
        .db()?;
        conn.close().await.db()?;
        let set_path: Arc<str> = format!("SET search_path TO \"{schema}\"").into();
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .after_connect(move |conn, _meta| {
                let set_path = Arc::clone(&set_path);
                Box::pin(async move {
                    conn.execute(AssertSqlSafe(set_path)).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .db()?;
        migrate(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// Removes a schema made by [`PostgresStore::connect_with_schema`] with everything in it
    /// (test teardown). Same name rules.
    pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
        check_schema_name(schema)?;
        let mut conn = PgConnection::connect(url).await.db()?;
        conn.execute(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .await
        .db()?;
        conn.close().await.db()?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to come back (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction.
    async fn write(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.db()
    }
}

/// Applies the migrations not yet recorded, each in its own transaction, under an advisory lock
/// so replicas starting together apply each one once.
async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.db()?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .db()?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version TEXT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .db()?;
    tx.commit().await.db()?;
    for (version, sql) in MIGRATIONS {
        let mut tx = pool.begin().await.db()?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .db()?;
        let applied = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = $1")
            .bind(*version)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
        if applied.is_some() {
            continue;
        }
        sqlx::raw_sql(*sql).execute(&mut *tx).await.db()?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(baton_proto::now_millis())
            .execute(&mut *tx)
            .await
            .db()?;
        tx.commit().await.db()?;
        tracing::info!(version, "applied postgres migration");
    }
    Ok(())
}

async fn lock_session(
    conn: &mut PgConnection,
    id: SessionId,
) -> Result<Option<(AccountId, SessionRecord)>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        session_cols!(),
        " FROM sessions WHERE id = $1 FOR NO KEY UPDATE"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await
    .db()?;
    row.as_ref().map(session_from).transpose()
}

async fn lock_handoff(conn: &mut PgConnection, id: HandoffId) -> Result<HandoffRecord> {
    let row = sqlx::query(concat!(
        "SELECT ",
        handoff_cols!(),
        " FROM handoffs h WHERE h.id = $1 FOR NO KEY UPDATE"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await
    .db()?;
    row.as_ref()
        .map(handoff_from)
        .transpose()?
        .ok_or(StoreError::NotFound)
}

/// The handoff and its session, for the transitions that change both.
async fn lock_handoff_and_session(
    conn: &mut PgConnection,
    id: HandoffId,
) -> Result<(HandoffRecord, SessionRecord)> {
    let h = lock_handoff(conn, id).await?;
    let (_, s) = lock_session(conn, h.session_id)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok((h, s))
}

/// Writes the session's mutable columns from `s`.
async fn save_session(conn: &mut PgConnection, s: &SessionRecord) -> Result<()> {
    sqlx::query(
        "UPDATE sessions SET owner = $1, epoch = $2, status = $3, last_seq = $4, active_handoff = $5, \
         sealed_meta = $6, mode = $7, updated_at = $8 WHERE id = $9",
    )
    .bind(s.owner.to_string())
    .bind(to_i64(s.epoch, "epoch")?)
    .bind(s.status.as_str())
    .bind(to_i64(s.last_seq, "last_seq")?)
    .bind(s.active_handoff.map(|h| h.to_string()))
    .bind(s.sealed_meta.0.as_slice())
    .bind(s.mode.as_str())
    .bind(s.updated_at)
    .bind(s.id.to_string())
    .execute(conn)
    .await
    .db()?;
    Ok(())
}

async fn insert_machine(conn: &mut PgConnection, m: &MachineRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO machines (id, account_id, name, sign_pk, box_pk, providers, last_seen, \
         created_at, kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(m.id.to_string())
    .bind(m.account_id.to_string())
    .bind(m.name.as_str())
    .bind(m.sign_pk.as_slice())
    .bind(m.box_pk.as_slice())
    .bind(to_json(&m.providers)?)
    .bind(m.last_seen)
    .bind(m.created_at)
    .bind(m.kind.as_str())
    .execute(conn)
    .await
    .db()?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_account(&self, account: AccountId, machine: &MachineRow) -> Result<()> {
        if machine.account_id != account {
            return Err(StoreError::Conflict(format!(
                "machine {} names account {}, not {account}",
                machine.id, machine.account_id
            )));
        }
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO accounts (id, created_at) VALUES ($1, $2)")
            .bind(account.to_string())
            .bind(machine.created_at)
            .execute(&mut *tx)
            .await
            .db()?;
        insert_machine(&mut tx, machine).await?;
        tx.commit().await.db()
    }

    async fn add_machine(&self, machine: &MachineRow) -> Result<()> {
        let mut tx = self.write().await?;
        insert_machine(&mut tx, machine).await?;
        tx.commit().await.db()
    }

    async fn machine(&self, id: MachineId) -> Result<Option<MachineRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            machine_cols!(),
            " FROM machines WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(machine_from).transpose()
    }

    async fn machines(&self, account: AccountId) -> Result<Vec<MachineRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            machine_cols!(),
            " FROM machines WHERE account_id = $1 ORDER BY name, id"
        ))
        .bind(account.to_string())
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(machine_from).collect()
    }

    async fn set_providers(
        &self,
        id: MachineId,
        providers: &[ProviderInfo],
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query("UPDATE machines SET providers = $1, last_seen = $2 WHERE id = $3")
            .bind(to_json(providers)?)
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .db()?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.db()
    }

    async fn touch_machine(&self, id: MachineId, now: Millis) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query("UPDATE machines SET last_seen = $1 WHERE id = $2")
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .db()?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.db()
    }

    async fn put_challenge(
        &self,
        nonce: &[u8],
        machine: MachineId,
        expires_at: Millis,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO challenges (nonce, machine_id, expires_at) VALUES ($1, $2, $3)")
            .bind(nonce)
            .bind(machine.to_string())
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .db()?;
        tx.commit().await.db()
    }

    async fn take_challenge(&self, nonce: &[u8], now: Millis) -> Result<Option<MachineId>> {
        // Deleted whether or not it expired: an expired nonce is of no further use.
        let mut tx = self.write().await?;
        let row =
            sqlx::query("DELETE FROM challenges WHERE nonce = $1 RETURNING machine_id, expires_at")
                .bind(nonce)
                .fetch_optional(&mut *tx)
                .await
                .db()?;
        tx.commit().await.db()?;
        let Some(row) = row else { return Ok(None) };
        if row.int("expires_at")? <= now {
            return Ok(None);
        }
        machine_id_from(&row).map(Some)
    }

    async fn put_token(&self, token_hash: &[u8], row: &TokenRow) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO tokens (token_hash, machine_id, account_id, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(row.machine_id.to_string())
        .bind(row.account_id.to_string())
        .bind(row.expires_at)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()
    }

    async fn token(&self, token_hash: &[u8], now: Millis) -> Result<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT machine_id, account_id, expires_at FROM tokens \
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(token_from).transpose()
    }

    async fn put_pairing(&self, row: &PairingRow) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO pairings (id, account_id, sealed_secret, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(row.id.as_str())
        .bind(row.account_id.to_string())
        .bind(row.sealed_secret.0.as_slice())
        .bind(row.expires_at)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()
    }

    async fn claim_pairing(&self, id: &str, now: Millis) -> Result<PairingRow> {
        // Deleted even when expired, so an expired code is gone for good.
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "DELETE FROM pairings WHERE id = $1 \
             RETURNING id, account_id, sealed_secret, expires_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        let row = row.as_ref().map(pairing_from).transpose()?;
        match row {
            Some(p) if p.expires_at > now => Ok(p),
            _ => Err(StoreError::PairingInvalid),
        }
    }

    async fn create_session(&self, account: AccountId, s: &SessionRecord) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, account_id, provider, mode, owner, epoch, status, \
             last_seq, active_handoff, sealed_meta, sealed_key, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(s.id.to_string())
        .bind(account.to_string())
        .bind(s.provider.as_str())
        .bind(s.mode.as_str())
        .bind(s.owner.to_string())
        .bind(to_i64(s.epoch, "epoch")?)
        .bind(s.status.as_str())
        .bind(to_i64(s.last_seq, "last_seq")?)
        .bind(s.active_handoff.map(|h| h.to_string()))
        .bind(s.sealed_meta.0.as_slice())
        .bind(s.sealed_key.0.as_slice())
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()
    }

    async fn session(&self, account: AccountId, id: SessionId) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE id = $1 AND account_id = $2"
        ))
        .bind(id.to_string())
        .bind(account.to_string())
        .fetch_optional(&self.pool)
        .await
        .db()?;
        Ok(row.as_ref().map(session_from).transpose()?.map(|(_, s)| s))
    }

    async fn session_any(&self, id: SessionId) -> Result<Option<(AccountId, SessionRecord)>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(session_from).transpose()
    }

    async fn sessions(&self, account: AccountId) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE account_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(account.to_string())
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter()
            .map(|r| session_from(r).map(|(_, s)| s))
            .collect()
    }

    async fn update_meta(
        &self,
        id: SessionId,
        machine: MachineId,
        epoch: u64,
        sealed_meta: &Sealed,
        now: Millis,
    ) -> Result<SessionRecord> {
        let mut tx = self.write().await?;
        let (_, mut s) = lock_session(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_writer(&s, machine, epoch)?;
        s.sealed_meta = sealed_meta.clone();
        s.updated_at = now;
        save_session(&mut tx, &s).await?;
        tx.commit().await.db()?;
        Ok(s)
    }

    async fn set_status(
        &self,
        account: AccountId,
        id: SessionId,
        status: SessionStatus,
        now: Millis,
    ) -> Result<SessionRecord> {
        let mut tx = self.write().await?;
        let (owner_account, mut s) = lock_session(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if owner_account != account {
            return Err(StoreError::NotFound);
        }
        if s.active_handoff.is_some() {
            return Err(StoreError::HandoffInProgress);
        }
        s.status = status;
        s.updated_at = now;
        save_session(&mut tx, &s).await?;
        tx.commit().await.db()?;
        Ok(s)
    }

    #[tracing::instrument(skip_all, fields(session_id = %append.session_id))]
    async fn append_entries(
        &self,
        append: &AppendEntries,
    ) -> Result<(SessionRecord, Vec<SealedEntry>)> {
        let mut tx = self.write().await?;
        let (account, s) = lock_session(&mut tx, append.session_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_append(account, &s, append)?;
        let session_id = append.session_id.to_string();
        let epoch = to_i64(append.epoch, "epoch")?;
        for e in &append.entries {
            let seq = to_i64(e.seq, "seq")?;
            if let Some(input) = e.input_id {
                let consumed = sqlx::query(
                    "UPDATE inputs SET consumed_seq = $1 \
                     WHERE session_id = $2 AND id = $3 AND consumed_seq IS NULL",
                )
                .bind(seq)
                .bind(session_id.as_str())
                .bind(input.to_string())
                .execute(&mut *tx)
                .await
                .db()?;
                if consumed.rows_affected() != 1 {
                    return Err(StoreError::DuplicateInput);
                }
            }
            sqlx::query(
                "INSERT INTO entries (session_id, seq, epoch, input_id, sealed, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(session_id.as_str())
            .bind(seq)
            .bind(epoch)
            .bind(e.input_id.map(|i| i.to_string()))
            .bind(e.sealed.0.as_slice())
            .bind(append.now)
            .execute(&mut *tx)
            .await
            .db()?;
        }
        let next = appended(&s, append);
        save_session(&mut tx, &next).await?;
        tx.commit().await.db()?;
        Ok((next, stored_entries(append)))
    }

    async fn entries(&self, id: SessionId, after: u64, limit: u32) -> Result<Vec<SealedEntry>> {
        // Nothing is stored past i64::MAX.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_cols!(),
            " FROM entries WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(id.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(entry_from).collect()
    }

    async fn enqueue_input(
        &self,
        session: SessionId,
        id: InputId,
        sealed: &Sealed,
        now: Millis,
    ) -> Result<(InputRecord, bool)> {
        let mut tx = self.write().await?;
        let counter =
            sqlx::query("SELECT input_order FROM sessions WHERE id = $1 FOR NO KEY UPDATE")
                .bind(session.to_string())
                .fetch_optional(&mut *tx)
                .await
                .db()?
                .ok_or(StoreError::NotFound)?
                .int("input_order")?;
        let existing = sqlx::query(concat!(
            "SELECT ",
            input_cols!(),
            " FROM inputs WHERE session_id = $1 AND id = $2"
        ))
        .bind(session.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .db()?;
        if let Some(row) = existing {
            return Ok((input_from(&row)?, false));
        }
        let order = counter
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("input order overflow".into()))?;
        sqlx::query("UPDATE sessions SET input_order = $1 WHERE id = $2")
            .bind(order)
            .bind(session.to_string())
            .execute(&mut *tx)
            .await
            .db()?;
        sqlx::query(
            "INSERT INTO inputs (session_id, id, ord, sealed, consumed_seq, created_at) \
             VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(session.to_string())
        .bind(id.to_string())
        .bind(order)
        .bind(sealed.0.as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        let record = InputRecord {
            id,
            session_id: session,
            order: to_u64(order, "input order")?,
            sealed: sealed.clone(),
            consumed: false,
            consumed_seq: None,
            created_at: now,
        };
        Ok((record, true))
    }

    async fn pending_inputs(&self, session: SessionId) -> Result<Vec<InputRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            input_cols!(),
            " FROM inputs WHERE session_id = $1 AND consumed_seq IS NULL ORDER BY ord"
        ))
        .bind(session.to_string())
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(input_from).collect()
    }

    async fn input(&self, session: SessionId, id: InputId) -> Result<Option<InputRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            input_cols!(),
            " FROM inputs WHERE session_id = $1 AND id = $2"
        ))
        .bind(session.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(input_from).transpose()
    }

    #[tracing::instrument(skip_all, fields(session_id = %h.session_id, handoff_id = %h.id))]
    async fn begin_handoff(&self, h: &HandoffRecord) -> Result<()> {
        let mut tx = self.write().await?;
        let (_, mut s) = lock_session(&mut tx, h.session_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if s.active_handoff.is_some() {
            return Err(StoreError::HandoffInProgress);
        }
        sqlx::query(
            "INSERT INTO handoffs (id, session_id, from_machine, to_machine, from_epoch, phase, \
             result, phases, error, options, sealed_options, bytes, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(h.id.to_string())
        .bind(h.session_id.to_string())
        .bind(h.from.to_string())
        .bind(h.to.to_string())
        .bind(to_i64(h.from_epoch, "from_epoch")?)
        .bind(h.phase.as_str())
        .bind(h.result.as_str())
        .bind(to_json(&h.phases)?)
        .bind(h.error.as_ref().map(to_json).transpose()?)
        .bind(to_json(&h.options)?)
        .bind(h.sealed_options.as_ref().map(|s| s.0.clone()))
        .bind(to_i64(h.bytes, "bytes")?)
        .bind(h.created_at)
        .bind(h.updated_at)
        .execute(&mut *tx)
        .await
        .db()?;
        s.active_handoff = Some(h.id);
        save_session(&mut tx, &s).await?;
        tx.commit().await.db()
    }

    async fn update_handoff(&self, h: &HandoffRecord) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE handoffs SET phase = $1, phases = $2, bytes = $3, workspace = $4, plan = $5, \
             updated_at = $6 WHERE id = $7",
        )
        .bind(h.phase.as_str())
        .bind(to_json(&h.phases)?)
        .bind(to_i64(h.bytes, "bytes")?)
        .bind(h.workspace.as_ref().map(|s| s.0.clone()))
        .bind(h.plan.as_ref().map(|s| s.0.clone()))
        .bind(h.updated_at)
        .bind(h.id.to_string())
        .execute(&mut *tx)
        .await
        .db()?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.db()
    }

    #[tracing::instrument(skip_all, fields(session_id = %id, epoch = epoch))]
    async fn begin_quiesce(&self, id: SessionId, epoch: u64, now: Millis) -> Result<SessionStatus> {
        let mut tx = self.write().await?;
        let (_, mut s) = lock_session(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if s.epoch != epoch {
            return Err(StoreError::StaleEpoch { current: s.epoch });
        }
        let before = s.status;
        if before != SessionStatus::HandingOff {
            s.status = SessionStatus::HandingOff;
            s.updated_at = now;
            save_session(&mut tx, &s).await?;
            if let Some(handoff) = s.active_handoff {
                sqlx::query(
                    "UPDATE handoffs SET restore_status = $1 WHERE id = $2 AND restore_status IS NULL",
                )
                .bind(before.as_str())
                .bind(handoff.to_string())
                .execute(&mut *tx)
                .await
                .db()?;
            }
        }
        tx.commit().await.db()?;
        Ok(before)
    }

    #[tracing::instrument(skip_all, fields(handoff_id = %abort.handoff_id))]
    async fn abort_handoff(
        &self,
        abort: &AbortHandoff,
        restore_status: SessionStatus,
    ) -> Result<SessionRecord> {
        let mut tx = self.write().await?;
        let (h, mut s) = lock_handoff_and_session(&mut tx, abort.handoff_id).await?;
        // The status recorded when the session was quiesced wins over the caller's guess (a
        // restarted coordinator no longer knows it).
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT restore_status FROM handoffs WHERE id = $1")
                .bind(abort.handoff_id.to_string())
                .fetch_one(&mut *tx)
                .await
                .db()?;
        let restore_status = recorded
            .as_deref()
            .and_then(SessionStatus::parse)
            .unwrap_or(restore_status);
        match h.result {
            HandoffResult::Committed => {
                return Err(StoreError::Conflict(format!(
                    "handoff {} already committed and cannot abort",
                    h.id
                )));
            }
            // A repeated abort (e.g. after a lost answer) changes nothing.
            HandoffResult::Aborted => return Ok(s),
            HandoffResult::Active => {}
        }
        sqlx::query(
            "UPDATE handoffs SET result = $1, error = $2, phases = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(HandoffResult::Aborted.as_str())
        .bind(to_json(&abort.error)?)
        .bind(to_json(&abort.phases)?)
        .bind(abort.now)
        .bind(h.id.to_string())
        .execute(&mut *tx)
        .await
        .db()?;
        if s.active_handoff == Some(h.id) {
            s.active_handoff = None;
        }
        if s.status == SessionStatus::HandingOff {
            s.status = restore_status;
            s.updated_at = abort.now;
        }
        save_session(&mut tx, &s).await?;
        tx.commit().await.db()?;
        Ok(s)
    }

    #[tracing::instrument(skip_all, fields(handoff_id = %commit.handoff_id))]
    async fn commit_handoff(&self, commit: &CommitHandoff) -> Result<SessionRecord> {
        let mut tx = self.write().await?;
        let (h, mut s) = lock_handoff_and_session(&mut tx, commit.handoff_id).await?;
        if let CommitStep::AlreadyCommitted = commit_step(&h, &s)? {
            return Ok(s);
        }
        s.owner = h.to;
        s.epoch = s
            .epoch
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("epoch overflow".into()))?;
        s.status = SessionStatus::Idle;
        s.sealed_meta = commit.sealed_meta.clone();
        s.mode = commit.mode;
        s.updated_at = commit.now;
        save_session(&mut tx, &s).await?;
        sqlx::query(
            "UPDATE handoffs SET result = $1, phase = $2, phases = $3, bytes = $4, updated_at = $5 \
             WHERE id = $6",
        )
        .bind(HandoffResult::Committed.as_str())
        .bind(HandoffPhase::Commit.as_str())
        .bind(to_json(&commit.phases)?)
        .bind(to_i64(commit.bytes, "bytes")?)
        .bind(commit.now)
        .bind(h.id.to_string())
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        Ok(s)
    }

    #[tracing::instrument(skip_all, fields(handoff_id = %handoff_id))]
    async fn finish_handoff(
        &self,
        handoff_id: HandoffId,
        phase: HandoffPhase,
        phases: &[PhaseRecord],
        error: Option<&ApiError>,
        now: Millis,
    ) -> Result<SessionRecord> {
        let mut tx = self.write().await?;
        let (h, mut s) = lock_handoff_and_session(&mut tx, handoff_id).await?;
        if h.result != HandoffResult::Committed {
            return Err(StoreError::Conflict(format!(
                "handoff {} is {}, not committed",
                h.id,
                h.result.as_str()
            )));
        }
        sqlx::query(
            "UPDATE handoffs SET phase = $1, phases = $2, error = COALESCE($3, error), \
             updated_at = $4 WHERE id = $5",
        )
        .bind(phase.as_str())
        .bind(to_json(phases)?)
        .bind(error.map(to_json).transpose()?)
        .bind(now)
        .bind(h.id.to_string())
        .execute(&mut *tx)
        .await
        .db()?;
        // Only the first finish touches the session, so a repeat cannot stop a session that was
        // resumed in between.
        if s.active_handoff == Some(h.id) {
            s.active_handoff = None;
            if error.is_some() {
                s.status = SessionStatus::Stopped;
                s.updated_at = now;
            }
            save_session(&mut tx, &s).await?;
        }
        tx.commit().await.db()?;
        Ok(s)
    }

    async fn handoff(&self, account: AccountId, id: HandoffId) -> Result<Option<HandoffRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            handoff_cols!(),
            " FROM handoffs h JOIN sessions s ON s.id = h.session_id \
             WHERE h.id = $1 AND s.account_id = $2"
        ))
        .bind(id.to_string())
        .bind(account.to_string())
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(handoff_from).transpose()
    }

    async fn handoffs(&self, session: SessionId) -> Result<Vec<HandoffRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            handoff_cols!(),
            " FROM handoffs h WHERE h.session_id = $1 ORDER BY h.created_at, h.id"
        ))
        .bind(session.to_string())
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(handoff_from).collect()
    }

    async fn unfinished_handoffs(&self) -> Result<Vec<(AccountId, HandoffRecord)>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            handoff_cols!(),
            ", s.account_id FROM handoffs h JOIN sessions s ON s.id = h.session_id \
             WHERE h.result = 'active' OR (h.result = 'committed' AND s.active_handoff = h.id) \
             ORDER BY h.created_at, h.id"
        ))
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter()
            .map(|r| {
                let h = handoff_from(r)?;
                Ok((account_from(r)?, h))
            })
            .collect()
    }

    async fn put_bundle(&self, handoff: HandoffId, sealed: &[u8]) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO handoff_bundles (handoff_id, data) VALUES ($1, $2) \
             ON CONFLICT (handoff_id) DO UPDATE SET data = excluded.data",
        )
        .bind(handoff.to_string())
        .bind(sealed)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()
    }

    async fn bundle(&self, handoff: HandoffId) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT data FROM handoff_bundles WHERE handoff_id = $1")
            .bind(handoff.to_string())
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.map(|r| r.blob("data")).transpose()
    }

    async fn delete_bundle(&self, handoff: HandoffId) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM handoff_bundles WHERE handoff_id = $1")
            .bind(handoff.to_string())
            .execute(&mut *tx)
            .await
            .db()?;
        tx.commit().await.db()
    }

    async fn put_setting(&self, account: AccountId, setting: &SettingRecord) -> Result<()> {
        // An unknown account fails the foreign key: `NotFound`.
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO settings (account_id, name, sealed, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, name) \
             DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(account.to_string())
        .bind(setting.name.as_str())
        .bind(setting.sealed.0.as_slice())
        .bind(setting.updated_at)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()
    }

    async fn setting(&self, account: AccountId, name: &str) -> Result<Option<SettingRecord>> {
        let row = sqlx::query(
            "SELECT name, sealed, updated_at FROM settings WHERE account_id = $1 AND name = $2",
        )
        .bind(account.to_string())
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(setting_from).transpose()
    }

    async fn put_service(&self, account: AccountId, service: &ServiceRecord) -> Result<()> {
        // An unknown account fails the foreign key: `NotFound`.
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO services (account_id, provider, sealed, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, provider) \
             DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(account.to_string())
        .bind(service.provider.as_str())
        .bind(service.sealed.0.as_slice())
        .bind(service.updated_at)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()
    }

    async fn services(&self, account: AccountId) -> Result<Vec<ServiceRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            service_cols!(),
            // Byte order, as SQLite's BINARY collation sorts, whatever the database's collation.
            " FROM services WHERE account_id = $1 ORDER BY provider COLLATE \"C\""
        ))
        .bind(account.to_string())
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(service_from).collect()
    }

    async fn delete_service(&self, account: AccountId, provider: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM services WHERE account_id = $1 AND provider = $2")
            .bind(account.to_string())
            .bind(provider)
            .execute(&mut *tx)
            .await
            .db()?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.db()
    }

    async fn purge_expired(&self, now: Millis) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut gone = 0;
        for sql in [
            "DELETE FROM challenges WHERE expires_at <= $1",
            "DELETE FROM tokens WHERE expires_at <= $1",
            "DELETE FROM pairings WHERE expires_at <= $1",
        ] {
            gone += sqlx::query(sql)
                .bind(now)
                .execute(&mut *tx)
                .await
                .db()?
                .rows_affected();
        }
        tx.commit().await.db()?;
        Ok(gone)
    }

    async fn close(&self) {
        PostgresStore::close(self).await;
    }
}
