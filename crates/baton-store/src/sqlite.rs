//! The SQLite [`Store`]: one file under the server's data dir, WAL journal.
//!
//! Concurrency: SQLite has one writer at a time, and a deferred transaction that reads first and
//! writes later can fail with `SQLITE_BUSY` (even with a busy timeout) when another writer
//! committed in between. So every write goes through a pool of exactly **one** connection and
//! starts with `BEGIN IMMEDIATE`, which takes the write lock before the first read: writers
//! inside this process queue fairly on the pool instead of spinning in SQLite's busy handler, and
//! a writer in another process is waited for by `busy_timeout`. Reads that need no lock use a
//! separate pool of `query_only` connections, which WAL lets run alongside the writer.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use baton_proto::{
    AccountId, ApiError, HandoffId, HandoffPhase, HandoffRecord, HandoffResult, InputId,
    InputRecord, MachineId, Millis, PhaseRecord, ProviderInfo, Sealed, SealedEntry, ServiceRecord,
    SessionId, SessionRecord, SessionStatus,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

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
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        "0002_restore_status",
        include_str!("../migrations/sqlite/0002_restore_status.sql"),
    ),
    (
        "0003_services",
        include_str!("../migrations/sqlite/0003_services.sql"),
    ),
    (
        "0004_handoff_workspace",
        include_str!("../migrations/sqlite/0004_handoff_workspace.sql"),
    ),
    (
        "0005_machine_kind",
        include_str!("../migrations/sqlite/0005_machine_kind.sql"),
    ),
    (
        "0006_settings",
        include_str!("../migrations/sqlite/0006_settings.sql"),
    ),
];

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections; WAL readers do not block the writer or each other.
const READERS: u32 = 4;

/// The SQLite implementation of [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction, `BEGIN IMMEDIATE`.
    writer: SqlitePool,
    /// Read-only (`query_only`) connections for lookups outside transactions.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .db()?;
        migrate(&writer).await?;
        // Readers open after the writer created the file and switched it to WAL (a persistent
        // setting of the file), and refuse writes so none can slip past the single writer.
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(base.pragma("query_only", "ON"))
            .await
            .db()?;
        Ok(SqliteStore { writer, reader })
    }

    /// Closes both pools, waiting for connections in use to come back (graceful shutdown).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Starts a write transaction holding SQLite's write lock from its first statement.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.db()
    }
}

/// Applies the migrations not yet recorded, each in its own transaction.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version TEXT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await
    .db()?;
    for (version, sql) in MIGRATIONS {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.db()?;
        let applied = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = ?")
            .bind(*version)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
        if applied.is_some() {
            continue;
        }
        sqlx::raw_sql(*sql).execute(&mut *tx).await.db()?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
            .bind(*version)
            .bind(baton_proto::now_millis())
            .execute(&mut *tx)
            .await
            .db()?;
        tx.commit().await.db()?;
        tracing::info!(version, "applied sqlite migration");
    }
    Ok(())
}

async fn load_session(
    conn: &mut SqliteConnection,
    id: SessionId,
) -> Result<Option<(AccountId, SessionRecord)>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        session_cols!(),
        " FROM sessions WHERE id = ?"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await
    .db()?;
    row.as_ref().map(session_from).transpose()
}

async fn load_handoff(conn: &mut SqliteConnection, id: HandoffId) -> Result<HandoffRecord> {
    let row = sqlx::query(concat!(
        "SELECT ",
        handoff_cols!(),
        " FROM handoffs h WHERE h.id = ?"
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
async fn load_handoff_and_session(
    conn: &mut SqliteConnection,
    id: HandoffId,
) -> Result<(HandoffRecord, SessionRecord)> {
    let h = load_handoff(conn, id).await?;
    let (_, s) = load_session(conn, h.session_id)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok((h, s))
}

/// Writes the session's mutable columns from `s`.
async fn save_session(conn: &mut SqliteConnection, s: &SessionRecord) -> Result<()> {
    sqlx::query(
        "UPDATE sessions SET owner = ?, epoch = ?, status = ?, last_seq = ?, active_handoff = ?, \
         sealed_meta = ?, mode = ?, updated_at = ? WHERE id = ?",
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

async fn insert_machine(conn: &mut SqliteConnection, m: &MachineRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO machines (id, account_id, name, sign_pk, box_pk, providers, last_seen, \
         created_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
impl Store for SqliteStore {
    async fn create_account(&self, account: AccountId, machine: &MachineRow) -> Result<()> {
        if machine.account_id != account {
            return Err(StoreError::Conflict(format!(
                "machine {} names account {}, not {account}",
                machine.id, machine.account_id
            )));
        }
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO accounts (id, created_at) VALUES (?, ?)")
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
            " FROM machines WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await
        .db()?;
        row.as_ref().map(machine_from).transpose()
    }

    async fn machines(&self, account: AccountId) -> Result<Vec<MachineRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            machine_cols!(),
            " FROM machines WHERE account_id = ? ORDER BY name, id"
        ))
        .bind(account.to_string())
        .fetch_all(&self.reader)
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
        let done = sqlx::query("UPDATE machines SET providers = ?, last_seen = ? WHERE id = ?")
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
        let done = sqlx::query("UPDATE machines SET last_seen = ? WHERE id = ?")
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
        sqlx::query("INSERT INTO challenges (nonce, machine_id, expires_at) VALUES (?, ?, ?)")
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
            sqlx::query("DELETE FROM challenges WHERE nonce = ? RETURNING machine_id, expires_at")
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
             VALUES (?, ?, ?, ?)",
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
             WHERE token_hash = ? AND expires_at > ?",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.reader)
        .await
        .db()?;
        row.as_ref().map(token_from).transpose()
    }

    async fn put_pairing(&self, row: &PairingRow) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO pairings (id, account_id, sealed_secret, expires_at) VALUES (?, ?, ?, ?)",
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
            "DELETE FROM pairings WHERE id = ? \
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            " FROM sessions WHERE id = ? AND account_id = ?"
        ))
        .bind(id.to_string())
        .bind(account.to_string())
        .fetch_optional(&self.reader)
        .await
        .db()?;
        Ok(row.as_ref().map(session_from).transpose()?.map(|(_, s)| s))
    }

    async fn session_any(&self, id: SessionId) -> Result<Option<(AccountId, SessionRecord)>> {
        let mut conn = self.reader.acquire().await.db()?;
        load_session(&mut conn, id).await
    }

    async fn sessions(&self, account: AccountId) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE account_id = ? ORDER BY created_at DESC, id DESC"
        ))
        .bind(account.to_string())
        .fetch_all(&self.reader)
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
        let (_, mut s) = load_session(&mut tx, id)
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
        let (owner_account, mut s) = load_session(&mut tx, id)
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
        let (account, s) = load_session(&mut tx, append.session_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_append(account, &s, append)?;
        let session_id = append.session_id.to_string();
        let epoch = to_i64(append.epoch, "epoch")?;
        for e in &append.entries {
            let seq = to_i64(e.seq, "seq")?;
            if let Some(input) = e.input_id {
                let consumed = sqlx::query(
                    "UPDATE inputs SET consumed_seq = ? \
                     WHERE session_id = ? AND id = ? AND consumed_seq IS NULL",
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
                 VALUES (?, ?, ?, ?, ?, ?)",
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
            " FROM entries WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(id.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
        let counter = sqlx::query("SELECT input_order FROM sessions WHERE id = ?")
            .bind(session.to_string())
            .fetch_optional(&mut *tx)
            .await
            .db()?
            .ok_or(StoreError::NotFound)?
            .int("input_order")?;
        let existing = sqlx::query(concat!(
            "SELECT ",
            input_cols!(),
            " FROM inputs WHERE session_id = ? AND id = ?"
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
        sqlx::query("UPDATE sessions SET input_order = ? WHERE id = ?")
            .bind(order)
            .bind(session.to_string())
            .execute(&mut *tx)
            .await
            .db()?;
        sqlx::query(
            "INSERT INTO inputs (session_id, id, ord, sealed, consumed_seq, created_at) \
             VALUES (?, ?, ?, ?, NULL, ?)",
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
            " FROM inputs WHERE session_id = ? AND consumed_seq IS NULL ORDER BY ord"
        ))
        .bind(session.to_string())
        .fetch_all(&self.reader)
        .await
        .db()?;
        rows.iter().map(input_from).collect()
    }

    async fn input(&self, session: SessionId, id: InputId) -> Result<Option<InputRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            input_cols!(),
            " FROM inputs WHERE session_id = ? AND id = ?"
        ))
        .bind(session.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await
        .db()?;
        row.as_ref().map(input_from).transpose()
    }

    #[tracing::instrument(skip_all, fields(session_id = %h.session_id, handoff_id = %h.id))]
    async fn begin_handoff(&self, h: &HandoffRecord) -> Result<()> {
        let mut tx = self.write().await?;
        let (_, mut s) = load_session(&mut tx, h.session_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if s.active_handoff.is_some() {
            return Err(StoreError::HandoffInProgress);
        }
        sqlx::query(
            "INSERT INTO handoffs (id, session_id, from_machine, to_machine, from_epoch, phase, \
             result, phases, error, options, sealed_options, bytes, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "UPDATE handoffs SET phase = ?, phases = ?, bytes = ?, workspace = ?, plan = ?, \
             updated_at = ? WHERE id = ?",
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
        let (_, mut s) = load_session(&mut tx, id)
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
                    "UPDATE handoffs SET restore_status = ? WHERE id = ? AND restore_status IS NULL",
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
        let (h, mut s) = load_handoff_and_session(&mut tx, abort.handoff_id).await?;
        // The status recorded when the session was quiesced wins over the caller's guess (a
        // restarted coordinator no longer knows it).
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT restore_status FROM handoffs WHERE id = ?")
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
            "UPDATE handoffs SET result = ?, error = ?, phases = ?, updated_at = ? WHERE id = ?",
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
        let (h, mut s) = load_handoff_and_session(&mut tx, commit.handoff_id).await?;
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
            "UPDATE handoffs SET result = ?, phase = ?, phases = ?, bytes = ?, updated_at = ? \
             WHERE id = ?",
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
        let (h, mut s) = load_handoff_and_session(&mut tx, handoff_id).await?;
        if h.result != HandoffResult::Committed {
            return Err(StoreError::Conflict(format!(
                "handoff {} is {}, not committed",
                h.id,
                h.result.as_str()
            )));
        }
        sqlx::query(
            "UPDATE handoffs SET phase = ?, phases = ?, error = COALESCE(?, error), \
             updated_at = ? WHERE id = ?",
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
             WHERE h.id = ? AND s.account_id = ?"
        ))
        .bind(id.to_string())
        .bind(account.to_string())
        .fetch_optional(&self.reader)
        .await
        .db()?;
        row.as_ref().map(handoff_from).transpose()
    }

    async fn handoffs(&self, session: SessionId) -> Result<Vec<HandoffRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            handoff_cols!(),
            " FROM handoffs h WHERE h.session_id = ? ORDER BY h.created_at, h.id"
        ))
        .bind(session.to_string())
        .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
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
            "INSERT INTO handoff_bundles (handoff_id, data) VALUES (?, ?) \
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
        let row = sqlx::query("SELECT data FROM handoff_bundles WHERE handoff_id = ?")
            .bind(handoff.to_string())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        row.map(|r| r.blob("data")).transpose()
    }

    async fn delete_bundle(&self, handoff: HandoffId) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM handoff_bundles WHERE handoff_id = ?")
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
             VALUES (?, ?, ?, ?) ON CONFLICT (account_id, name) \
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
            "SELECT name, sealed, updated_at FROM settings WHERE account_id = ? AND name = ?",
        )
        .bind(account.to_string())
        .bind(name)
        .fetch_optional(&self.reader)
        .await
        .db()?;
        row.as_ref().map(setting_from).transpose()
    }

    async fn put_service(&self, account: AccountId, service: &ServiceRecord) -> Result<()> {
        // An unknown account fails the foreign key: `NotFound`.
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO services (account_id, provider, sealed, updated_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (account_id, provider) \
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
            " FROM services WHERE account_id = ? ORDER BY provider"
        ))
        .bind(account.to_string())
        .fetch_all(&self.reader)
        .await
        .db()?;
        rows.iter().map(service_from).collect()
    }

    async fn delete_service(&self, account: AccountId, provider: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM services WHERE account_id = ? AND provider = ?")
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
            "DELETE FROM challenges WHERE expires_at <= ?",
            "DELETE FROM tokens WHERE expires_at <= ?",
            "DELETE FROM pairings WHERE expires_at <= ?",
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
        SqliteStore::close(self).await;
    }
}
