//! What both backends share: turning rows into records (every decode failure becomes
//! [`StoreError::Corrupt`], never a panic), mapping database errors, and the pure checks that
//! guard the invariants. The checks live here, once, so the SQLite and PostgreSQL stores cannot
//! drift apart in what they refuse; each backend runs them inside its own transaction.

use std::str::FromStr;

use baton_proto::{
    AccountId, ApiError, HandoffOptions, HandoffPhase, HandoffRecord, HandoffResult, InputRecord,
    MachineId, MachineKind, PhaseRecord, ProviderInfo, Sealed, SealedEntry, ServiceRecord,
    SessionMode, SessionRecord, SessionStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::error::ErrorKind;

use crate::{AppendEntries, MachineRow, PairingRow, Result, SettingRecord, StoreError, TokenRow};

// ---- errors ----

/// Maps a database error to the store's meaning: unique violations are `Conflict`, a missing
/// referenced row (foreign key) is `NotFound`, the rest stays a database error.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.kind() {
            ErrorKind::UniqueViolation => return StoreError::Conflict(db.message().to_string()),
            ErrorKind::ForeignKeyViolation => return StoreError::NotFound,
            _ => {}
        }
    }
    StoreError::Database(e)
}

/// `.db()?` on sqlx results, so constraint violations get their store meaning everywhere.
pub(crate) trait DbResult<T> {
    /// Maps the error with [`db_error`].
    fn db(self) -> Result<T>;
}

impl<T> DbResult<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(db_error)
    }
}

// ---- values ----

/// A u64 counter as the i64 both databases store.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} does not fit in i64")))
}

/// A stored i64 back to the u64 it came from; negative means the row is corrupt.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

/// JSON text of a value the store keeps as a document (providers, phases, error, options).
pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("encoding json: {e}")))
}

fn from_json<T: DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn parse_id<T: FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not a uuid: {s:?}")))
}

fn parse_status(s: &str) -> Result<SessionStatus> {
    SessionStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("session status {s:?}")))
}

// ---- rows ----

/// Typed column access over either backend's row, with decode errors as `Corrupt`.
pub(crate) trait Cols {
    /// A non-null text column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// A non-null integer column.
    fn int(&self, col: &str) -> Result<i64>;
    /// A nullable integer column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// A non-null blob column.
    fn blob(&self, col: &str) -> Result<Vec<u8>>;
    /// A nullable blob column.
    fn opt_blob(&self, col: &str) -> Result<Option<Vec<u8>>>;
}

fn decode_error(col: &str, e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(format!("column {col}: {e}"))
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, col: &str) -> Result<String> {
                self.try_get(col).map_err(|e| decode_error(col, e))
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                self.try_get(col).map_err(|e| decode_error(col, e))
            }
            fn int(&self, col: &str) -> Result<i64> {
                self.try_get(col).map_err(|e| decode_error(col, e))
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                self.try_get(col).map_err(|e| decode_error(col, e))
            }
            fn blob(&self, col: &str) -> Result<Vec<u8>> {
                self.try_get(col).map_err(|e| decode_error(col, e))
            }
            fn opt_blob(&self, col: &str) -> Result<Option<Vec<u8>>> {
                self.try_get(col).map_err(|e| decode_error(col, e))
            }
        }
    };
}

impl_cols!(sqlx::sqlite::SqliteRow);
impl_cols!(sqlx::postgres::PgRow);

/// Columns read by [`machine_from`], in SQL.
macro_rules! machine_cols {
    () => {
        "id, account_id, name, sign_pk, box_pk, providers, last_seen, created_at, kind"
    };
}
pub(crate) use machine_cols;

/// Columns read by [`session_from`], in SQL.
macro_rules! session_cols {
    () => {
        "id, account_id, provider, mode, owner, epoch, status, last_seq, active_handoff, \
         sealed_meta, sealed_key, created_at, updated_at"
    };
}
pub(crate) use session_cols;

/// Columns read by [`entry_from`], in SQL.
macro_rules! entry_cols {
    () => {
        "seq, epoch, input_id, sealed, created_at"
    };
}
pub(crate) use entry_cols;

/// Columns read by [`input_from`], in SQL.
macro_rules! input_cols {
    () => {
        "session_id, id, ord, sealed, consumed_seq, created_at"
    };
}
pub(crate) use input_cols;

/// Columns read by [`handoff_from`], in SQL (unqualified; callers that join prefix with `h.`).
macro_rules! handoff_cols {
    () => {
        "h.id, h.session_id, h.from_machine, h.to_machine, h.from_epoch, h.phase, h.result, \
         h.phases, h.error, h.options, h.sealed_options, h.bytes, h.created_at, h.updated_at, h.workspace, h.plan"
    };
}
pub(crate) use handoff_cols;

/// A setting row.
pub(crate) fn setting_from(r: &impl Cols) -> Result<SettingRecord> {
    Ok(SettingRecord {
        name: r.text("name")?,
        sealed: Sealed(r.blob("sealed")?),
        updated_at: r.int("updated_at")?,
    })
}

/// A machine row.
pub(crate) fn machine_from(r: &impl Cols) -> Result<MachineRow> {
    Ok(MachineRow {
        id: parse_id(&r.text("id")?, "machine id")?,
        account_id: parse_id(&r.text("account_id")?, "account id")?,
        name: r.text("name")?,
        sign_pk: r.blob("sign_pk")?,
        box_pk: r.blob("box_pk")?,
        providers: from_json::<Vec<ProviderInfo>>(&r.text("providers")?, "providers")?,
        last_seen: r.opt_int("last_seen")?,
        created_at: r.int("created_at")?,
        kind: {
            let kind = r.text("kind")?;
            MachineKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown machine kind {kind:?}")))?
        },
    })
}

/// A session row with its account.
pub(crate) fn session_from(r: &impl Cols) -> Result<(AccountId, SessionRecord)> {
    let mode = r.text("mode")?;
    let active_handoff = match r.opt_text("active_handoff")? {
        Some(s) => Some(parse_id(&s, "active handoff")?),
        None => None,
    };
    let record = SessionRecord {
        id: parse_id(&r.text("id")?, "session id")?,
        provider: r.text("provider")?,
        mode: SessionMode::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("session mode {mode:?}")))?,
        owner: parse_id(&r.text("owner")?, "owner")?,
        epoch: to_u64(r.int("epoch")?, "epoch")?,
        status: parse_status(&r.text("status")?)?,
        last_seq: to_u64(r.int("last_seq")?, "last_seq")?,
        active_handoff,
        sealed_meta: Sealed(r.blob("sealed_meta")?),
        sealed_key: Sealed(r.blob("sealed_key")?),
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    };
    Ok((parse_id(&r.text("account_id")?, "account id")?, record))
}

/// A transcript entry row.
pub(crate) fn entry_from(r: &impl Cols) -> Result<SealedEntry> {
    Ok(SealedEntry {
        seq: to_u64(r.int("seq")?, "seq")?,
        epoch: to_u64(r.int("epoch")?, "epoch")?,
        input_id: match r.opt_text("input_id")? {
            Some(s) => Some(parse_id(&s, "input id")?),
            None => None,
        },
        sealed: Sealed(r.blob("sealed")?),
        created_at: r.int("created_at")?,
    })
}

/// An input row.
pub(crate) fn input_from(r: &impl Cols) -> Result<InputRecord> {
    let consumed_seq = match r.opt_int("consumed_seq")? {
        Some(v) => Some(to_u64(v, "consumed_seq")?),
        None => None,
    };
    Ok(InputRecord {
        id: parse_id(&r.text("id")?, "input id")?,
        session_id: parse_id(&r.text("session_id")?, "session id")?,
        order: to_u64(r.int("ord")?, "input order")?,
        sealed: Sealed(r.blob("sealed")?),
        consumed: consumed_seq.is_some(),
        consumed_seq,
        created_at: r.int("created_at")?,
    })
}

/// A handoff row.
pub(crate) fn handoff_from(r: &impl Cols) -> Result<HandoffRecord> {
    let phase = r.text("phase")?;
    let result = r.text("result")?;
    let error = match r.opt_text("error")? {
        Some(s) => Some(from_json::<ApiError>(&s, "handoff error")?),
        None => None,
    };
    Ok(HandoffRecord {
        id: parse_id(&r.text("id")?, "handoff id")?,
        session_id: parse_id(&r.text("session_id")?, "session id")?,
        from: parse_id(&r.text("from_machine")?, "from machine")?,
        to: parse_id(&r.text("to_machine")?, "to machine")?,
        from_epoch: to_u64(r.int("from_epoch")?, "from_epoch")?,
        phase: HandoffPhase::parse(&phase)
            .ok_or_else(|| StoreError::Corrupt(format!("handoff phase {phase:?}")))?,
        result: HandoffResult::parse(&result)
            .ok_or_else(|| StoreError::Corrupt(format!("handoff result {result:?}")))?,
        phases: from_json::<Vec<PhaseRecord>>(&r.text("phases")?, "handoff phases")?,
        error,
        options: from_json::<HandoffOptions>(&r.text("options")?, "handoff options")?,
        sealed_options: r.opt_blob("sealed_options")?.map(Sealed),
        workspace: r.opt_blob("workspace")?.map(Sealed),
        plan: r.opt_blob("plan")?.map(Sealed),
        bytes: to_u64(r.int("bytes")?, "bytes")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

/// Columns read by [`service_from`], in SQL.
macro_rules! service_cols {
    () => {
        "provider, sealed, updated_at"
    };
}
pub(crate) use service_cols;

/// A connected service row.
pub(crate) fn service_from(r: &impl Cols) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        provider: r.text("provider")?,
        sealed: Sealed(r.blob("sealed")?),
        updated_at: r.int("updated_at")?,
    })
}

/// A token row.
pub(crate) fn token_from(r: &impl Cols) -> Result<TokenRow> {
    Ok(TokenRow {
        machine_id: parse_id(&r.text("machine_id")?, "machine id")?,
        account_id: parse_id(&r.text("account_id")?, "account id")?,
        expires_at: r.int("expires_at")?,
    })
}

/// A pairing row.
pub(crate) fn pairing_from(r: &impl Cols) -> Result<PairingRow> {
    Ok(PairingRow {
        id: r.text("id")?,
        account_id: parse_id(&r.text("account_id")?, "account id")?,
        sealed_secret: Sealed(r.blob("sealed_secret")?),
        expires_at: r.int("expires_at")?,
    })
}

/// The `account_id` column of a joined row.
pub(crate) fn account_from(r: &impl Cols) -> Result<AccountId> {
    parse_id(&r.text("account_id")?, "account id")
}

/// The machine id of a challenge row.
pub(crate) fn machine_id_from(r: &impl Cols) -> Result<MachineId> {
    parse_id(&r.text("machine_id")?, "machine id")
}

// ---- checks (run inside the caller's transaction, on rows it has locked) ----

/// The writer must be the owner at the session's current epoch.
pub(crate) fn check_writer(s: &SessionRecord, machine: MachineId, epoch: u64) -> Result<()> {
    if s.owner != machine || s.epoch != epoch {
        return Err(StoreError::StaleEpoch { current: s.epoch });
    }
    Ok(())
}

/// The refusals of an append that need only the session row, in the documented order:
/// `StaleEpoch`, then `HandingOff` (input consumption only), then `SeqConflict`.
/// (`NotFound` comes before, `DuplicateInput` after, from the database.)
pub(crate) fn check_append(account: AccountId, s: &SessionRecord, a: &AppendEntries) -> Result<()> {
    if account != a.account {
        return Err(StoreError::NotFound);
    }
    check_writer(s, a.machine_id, a.epoch)?;
    if s.status == SessionStatus::HandingOff && a.entries.iter().any(|e| e.input_id.is_some()) {
        return Err(StoreError::HandingOff);
    }
    let conflict = StoreError::SeqConflict {
        last_seq: s.last_seq,
    };
    for (i, e) in a.entries.iter().enumerate() {
        let expected = s
            .last_seq
            .checked_add(1)
            .and_then(|v| v.checked_add(i as u64));
        if expected != Some(e.seq) {
            return Err(conflict);
        }
    }
    Ok(())
}

/// The session after a successful append (before the database is told).
pub(crate) fn appended(s: &SessionRecord, a: &AppendEntries) -> SessionRecord {
    let mut next = s.clone();
    if let Some(last) = a.entries.last() {
        next.last_seq = last.seq;
    }
    // The status never overwrites `handing_off`: the coordinator owns that state until the
    // handoff commits or aborts, while the source may still flush its last turn.
    if let Some(status) = a.status
        && s.status != SessionStatus::HandingOff
        && status != s.status
    {
        next.status = status;
        next.updated_at = a.now;
    }
    next
}

/// The entries as stored by an append.
pub(crate) fn stored_entries(a: &AppendEntries) -> Vec<SealedEntry> {
    a.entries
        .iter()
        .map(|e| SealedEntry {
            seq: e.seq,
            epoch: a.epoch,
            input_id: e.input_id,
            sealed: e.sealed.clone(),
            created_at: a.now,
        })
        .collect()
}

/// Outcome of a commit attempt on a handoff in a given result state.
pub(crate) enum CommitStep {
    /// Apply the commit now.
    Apply,
    /// It committed already (a retry after a lost answer): return the session as it is.
    AlreadyCommitted,
}

/// What a commit may do with a handoff: commit is retried until decided, so a repeat of a
/// committed handoff is a success, while an aborted one can never commit.
pub(crate) fn commit_step(h: &HandoffRecord, s: &SessionRecord) -> Result<CommitStep> {
    match h.result {
        HandoffResult::Committed => Ok(CommitStep::AlreadyCommitted),
        HandoffResult::Aborted => Err(StoreError::Conflict(format!(
            "handoff {} was aborted and cannot commit",
            h.id
        ))),
        HandoffResult::Active => {
            check_writer(s, h.from, h.from_epoch)?;
            Ok(CommitStep::Apply)
        }
    }
}
