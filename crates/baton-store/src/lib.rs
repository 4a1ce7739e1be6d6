//! The `Store` trait: everything the Baton server persists, and its SQLite and PostgreSQL
//! implementations.
//!
//! The store holds public keys, ownership, ordering and ciphertext only; it must never be handed
//! plaintext (the types here carry [`Sealed`] where content is stored). Every method that reads or
//! writes account data is scoped by the caller's account, so one account can never reach another's
//! rows. All checks that guard an invariant (epoch fencing, dense seq, one active handoff, exactly
//! once input consumption) happen inside one transaction in the store, never in the caller.

mod common;
mod error;
mod postgres;
mod sqlite;

pub use baton_proto::SettingRecord;
pub use error::StoreError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use baton_proto::api::NewEntry;
use baton_proto::{
    AccountId, ApiError, HandoffId, HandoffPhase, HandoffRecord, InputId, InputRecord, MachineId,
    MachineKind, Millis, PhaseRecord, ProviderInfo, Sealed, SealedEntry, ServiceRecord, SessionId,
    SessionMode, SessionRecord, SessionStatus,
};

/// Result type of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A machine row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineRow {
    /// Machine id.
    pub id: MachineId,
    /// Account it belongs to.
    pub account_id: AccountId,
    /// Name, unique within the account.
    pub name: String,
    /// Ed25519 public key (32 bytes).
    pub sign_pk: Vec<u8>,
    /// X25519 public key (32 bytes).
    pub box_pk: Vec<u8>,
    /// Providers last reported by its daemon.
    pub providers: Vec<ProviderInfo>,
    /// Last time the server heard from it.
    pub last_seen: Option<Millis>,
    /// A daemon machine or a browser.
    pub kind: MachineKind,
    /// Enrolment time.
    pub created_at: Millis,
}

/// A bearer token row (the token itself is never stored, only its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// Machine the token authenticates.
    pub machine_id: MachineId,
    /// Its account.
    pub account_id: AccountId,
    /// Expiry.
    pub expires_at: Millis,
}

/// A pending pairing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingRow {
    /// Id derived from the code.
    pub id: String,
    /// Account to join.
    pub account_id: AccountId,
    /// Account secret sealed to the code's key.
    pub sealed_secret: Sealed,
    /// Expiry.
    pub expires_at: Millis,
}

/// An entry append, as checked and applied in one transaction.
#[derive(Clone, Debug)]
pub struct AppendEntries {
    /// The writer's account; a session of another account is `NotFound`.
    pub account: AccountId,
    /// Session appended to.
    pub session_id: SessionId,
    /// Writing machine; must be the owner.
    pub machine_id: MachineId,
    /// Writer's epoch; must equal the session's.
    pub epoch: u64,
    /// Entries; the first seq must be `last_seq + 1`, the rest consecutive.
    pub entries: Vec<NewEntry>,
    /// New status, if any (`idle`/`running`).
    pub status: Option<SessionStatus>,
    /// Server time.
    pub now: Millis,
}

/// How a handoff ends before commit.
#[derive(Clone, Debug)]
pub struct AbortHandoff {
    /// Handoff.
    pub handoff_id: HandoffId,
    /// Why.
    pub error: ApiError,
    /// Phases as they ran (the failing one with `ok = false`).
    pub phases: Vec<PhaseRecord>,
    /// Server time.
    pub now: Millis,
}

/// The commit of a handoff, applied in one transaction.
#[derive(Clone, Debug)]
pub struct CommitHandoff {
    /// Handoff.
    pub handoff_id: HandoffId,
    /// New sealed metadata (workspace path on the target).
    pub sealed_meta: Sealed,
    /// Phases so far (commit's record included).
    pub phases: Vec<PhaseRecord>,
    /// Bytes moved.
    pub bytes: u64,
    /// The session's mode after the commit (a Direct session may become synced).
    pub mode: SessionMode,
    /// Server time.
    pub now: Millis,
}

/// Everything the Baton server persists. Implemented for SQLite and PostgreSQL with identical
/// meaning; one generic test suite runs against both.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- accounts, machines, auth ----

    /// Creates an account with its first machine.
    async fn create_account(&self, account: AccountId, machine: &MachineRow) -> Result<()>;

    /// Adds a machine to an existing account; `Conflict` if the name is taken in that account.
    async fn add_machine(&self, machine: &MachineRow) -> Result<()>;

    /// A machine by id (any account; used by authentication).
    async fn machine(&self, id: MachineId) -> Result<Option<MachineRow>>;

    /// All machines of an account, by name.
    async fn machines(&self, account: AccountId) -> Result<Vec<MachineRow>>;

    /// Stores the providers a daemon reported and refreshes `last_seen`.
    async fn set_providers(
        &self,
        id: MachineId,
        providers: &[ProviderInfo],
        now: Millis,
    ) -> Result<()>;

    /// Refreshes `last_seen`.
    async fn touch_machine(&self, id: MachineId, now: Millis) -> Result<()>;

    /// Remembers a login challenge nonce for a machine.
    async fn put_challenge(
        &self,
        nonce: &[u8],
        machine: MachineId,
        expires_at: Millis,
    ) -> Result<()>;

    /// Removes and returns the machine of a challenge if it exists and has not expired.
    /// A nonce can be taken once.
    async fn take_challenge(&self, nonce: &[u8], now: Millis) -> Result<Option<MachineId>>;

    /// Stores a bearer token's hash.
    async fn put_token(&self, token_hash: &[u8], row: &TokenRow) -> Result<()>;

    /// Looks a token up by hash; `None` if unknown or expired.
    async fn token(&self, token_hash: &[u8], now: Millis) -> Result<Option<TokenRow>>;

    /// Stores a pairing offer.
    async fn put_pairing(&self, row: &PairingRow) -> Result<()>;

    /// Uses a pairing once: returns it and deletes it; `PairingInvalid` if unknown, used or
    /// expired.
    async fn claim_pairing(&self, id: &str, now: Millis) -> Result<PairingRow>;

    // ---- sessions and transcript ----

    /// Creates a session (epoch 1, status idle, last_seq 0 as given in the record).
    async fn create_session(&self, account: AccountId, session: &SessionRecord) -> Result<()>;

    /// A session of the account.
    async fn session(&self, account: AccountId, id: SessionId) -> Result<Option<SessionRecord>>;

    /// A session by id with its account (for the coordinator, which acts for the server).
    async fn session_any(&self, id: SessionId) -> Result<Option<(AccountId, SessionRecord)>>;

    /// All sessions of the account, newest first.
    async fn sessions(&self, account: AccountId) -> Result<Vec<SessionRecord>>;

    /// Replaces the sealed metadata; only the owner at the current epoch (`StaleEpoch` else).
    async fn update_meta(
        &self,
        id: SessionId,
        machine: MachineId,
        epoch: u64,
        sealed_meta: &Sealed,
        now: Millis,
    ) -> Result<SessionRecord>;

    /// Sets the status of a session of the account (stop, resume). Refuses with
    /// `HandoffInProgress` while a handoff is active.
    async fn set_status(
        &self,
        account: AccountId,
        id: SessionId,
        status: SessionStatus,
        now: Millis,
    ) -> Result<SessionRecord>;

    /// Appends entries in one transaction. Refuses, in this order: unknown session or another
    /// account's `NotFound`;
    /// writer not owner or epoch differs `StaleEpoch`; an entry with an `input_id` while the
    /// session is `handing_off` `HandingOff`; first seq not `last_seq + 1` or not consecutive
    /// `SeqConflict`; an `input_id` unknown for the session or already consumed `DuplicateInput`.
    /// On success marks each referenced input consumed (with the entry's seq), sets `last_seq`,
    /// the status if given (never over `handing_off`), and returns the session and stored entries.
    async fn append_entries(
        &self,
        append: &AppendEntries,
    ) -> Result<(SessionRecord, Vec<SealedEntry>)>;

    /// Entries with seq > `after`, at most `limit`, in seq order.
    async fn entries(&self, id: SessionId, after: u64, limit: u32) -> Result<Vec<SealedEntry>>;

    // ---- input queue ----

    /// Queues an input; idempotent on `(session, input id)`: a repeat returns the stored record
    /// and `false`. The server assigns `order` (strictly increasing per session).
    async fn enqueue_input(
        &self,
        session: SessionId,
        id: InputId,
        sealed: &Sealed,
        now: Millis,
    ) -> Result<(InputRecord, bool)>;

    /// Inputs not yet consumed, in order.
    async fn pending_inputs(&self, session: SessionId) -> Result<Vec<InputRecord>>;

    /// One input of a session.
    async fn input(&self, session: SessionId, id: InputId) -> Result<Option<InputRecord>>;

    // ---- handoffs ----

    /// Records a new handoff (phase `requested`, result `active`) and marks it as the session's
    /// active handoff; `HandoffInProgress` if the session already has one.
    async fn begin_handoff(&self, handoff: &HandoffRecord) -> Result<()>;

    /// Saves the phase, phases and bytes of a running handoff.
    async fn update_handoff(&self, handoff: &HandoffRecord) -> Result<()>;

    /// Sets the session `handing_off` if its epoch is still `epoch` and returns the status it
    /// had before (to restore on abort); `StaleEpoch` else.
    async fn begin_quiesce(&self, id: SessionId, epoch: u64, now: Millis) -> Result<SessionStatus>;

    /// Aborts a handoff in one transaction: marks it aborted with the error and phases, clears
    /// the session's active handoff, and restores `restore_status` if the session is still
    /// `handing_off`. Owner and epoch are untouched. Returns the session.
    async fn abort_handoff(
        &self,
        abort: &AbortHandoff,
        restore_status: SessionStatus,
    ) -> Result<SessionRecord>;

    /// Commits a handoff in one transaction, only if the session's owner and epoch are still
    /// the handoff's `from` and `from_epoch` (`StaleEpoch` else): owner := to, epoch + 1,
    /// status idle, mode := `commit.mode`, sealed meta replaced, handoff phase `commit`, result
    /// committed. The session's active handoff stays set until [`Store::finish_handoff`].
    /// Returns the session.
    async fn commit_handoff(&self, commit: &CommitHandoff) -> Result<SessionRecord>;

    /// Ends a committed handoff: phase and phases saved, optional error (activation failed),
    /// session's active handoff cleared; with an error the session is set `stopped`.
    async fn finish_handoff(
        &self,
        handoff_id: HandoffId,
        phase: HandoffPhase,
        phases: &[PhaseRecord],
        error: Option<&ApiError>,
        now: Millis,
    ) -> Result<SessionRecord>;

    /// A handoff of the account.
    async fn handoff(&self, account: AccountId, id: HandoffId) -> Result<Option<HandoffRecord>>;

    /// Handoffs of a session, oldest first.
    async fn handoffs(&self, session: SessionId) -> Result<Vec<HandoffRecord>>;

    /// Handoffs not finished: result `active`, or `committed` with the session's active handoff
    /// still pointing at them (activation pending). For the coordinator's restart.
    async fn unfinished_handoffs(&self) -> Result<Vec<(AccountId, HandoffRecord)>>;

    /// Stores the sealed provider-state bundle of a handoff (replacing any earlier upload).
    async fn put_bundle(&self, handoff: HandoffId, sealed: &[u8]) -> Result<()>;

    /// The sealed bundle of a handoff.
    async fn bundle(&self, handoff: HandoffId) -> Result<Option<Vec<u8>>>;

    /// Removes a handoff's bundle (after it finished).
    async fn delete_bundle(&self, handoff: HandoffId) -> Result<()>;

    // ---- account settings ----

    /// Stores an account setting, replacing the one of the same name.
    async fn put_setting(&self, account: AccountId, setting: &SettingRecord) -> Result<()>;

    /// The account's setting `name`, if it was ever stored.
    async fn setting(&self, account: AccountId, name: &str) -> Result<Option<SettingRecord>>;

    // ---- connected services ----

    /// Stores a connected service of the account, replacing the one for the same provider.
    async fn put_service(&self, account: AccountId, service: &ServiceRecord) -> Result<()>;

    /// The account's connected services, ordered by provider name.
    async fn services(&self, account: AccountId) -> Result<Vec<ServiceRecord>>;

    /// Deletes the account's connected service for `provider`; `NotFound` when there is none.
    async fn delete_service(&self, account: AccountId, provider: &str) -> Result<()>;

    /// Deletes expired challenges, tokens and pairings; returns how many rows went.
    async fn purge_expired(&self, now: Millis) -> Result<u64>;

    /// Closes the connections (SQLite checkpoints its WAL); called once at shutdown.
    async fn close(&self) {}
}
