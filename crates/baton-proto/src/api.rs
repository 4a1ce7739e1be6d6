//! HTTP request and response bodies (`/v1/...`).

use serde::{Deserialize, Serialize};

use crate::sealed::Bytes;
use crate::{
    AccountId, HandoffId, HandoffOptions, InputId, MachineId, MachineKind, Millis, ProviderInfo,
    Sealed, SessionId, SessionMode, SessionStatus,
};

/// Public keys a machine (or browser) enrolls with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineEnrollment {
    /// Machine name, unique within the account.
    pub name: String,
    /// Ed25519 public key (32 bytes) for signed challenges.
    pub sign_pk: Bytes,
    /// X25519 public key (32 bytes) that secrets are sealed to.
    pub box_pk: Bytes,
    /// A machine (the default) or a browser.
    #[serde(default)]
    pub kind: MachineKind,
}

/// `POST /v1/accounts`: the first machine creates the account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateAccountRequest {
    /// The first machine.
    pub machine: MachineEnrollment,
}

/// Answer to account creation or pairing claim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrolledResponse {
    /// The account.
    pub account_id: AccountId,
    /// The new machine's id.
    pub machine_id: MachineId,
    /// For a pairing claim: the account secret sealed to the pairing code's key.
    pub sealed_secret: Option<Sealed>,
}

/// `POST /v1/auth/challenge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// Machine asking to authenticate.
    pub machine_id: MachineId,
}

/// A nonce to sign.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// 32 random bytes.
    pub nonce: Bytes,
}

/// `POST /v1/auth/token`: the signed challenge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Machine authenticating.
    pub machine_id: MachineId,
    /// The nonce from the challenge.
    pub nonce: Bytes,
    /// Ed25519 signature over `auth_message(nonce, machine_id)`.
    pub signature: Bytes,
}

/// A bearer token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    /// Opaque bearer token.
    pub token: String,
    /// Expiry.
    pub expires_at: Millis,
    /// Account of the machine.
    pub account_id: AccountId,
}

/// The bytes a machine signs to authenticate: a domain tag, the nonce and its id.
pub fn auth_message(nonce: &[u8], machine_id: MachineId) -> Vec<u8> {
    let mut m = b"baton-auth-v1\0".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(machine_id.as_bytes());
    m
}

/// `POST /v1/pairings`: an enrolled machine offers the account secret to whoever holds the code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatePairingRequest {
    /// Id derived from the code (the code's secret part never reaches the server).
    pub pairing_id: String,
    /// Account secret sealed to the key derived from the code.
    pub sealed_secret: Sealed,
}

/// When the pairing expires.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatePairingResponse {
    /// Expiry (10 minutes after creation).
    pub expires_at: Millis,
}

/// `POST /v1/pairings/{id}/claim`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimPairingRequest {
    /// The joining machine.
    pub machine: MachineEnrollment,
}

/// `POST /v1/sessions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateSessionRequest {
    /// Client-generated id.
    pub id: SessionId,
    /// Provider name.
    pub provider: String,
    /// Synced or direct.
    pub mode: SessionMode,
    /// Machine that will own it.
    pub owner: MachineId,
    /// Sealed [`crate::SessionMeta`].
    pub sealed_meta: Sealed,
    /// Data key sealed under the account secret.
    pub sealed_key: Sealed,
}

/// `PUT /v1/sessions/{id}/meta` (owner only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateMetaRequest {
    /// Writer's epoch.
    pub epoch: u64,
    /// New sealed metadata.
    pub sealed_meta: Sealed,
}

/// `POST /v1/sessions/{id}/inputs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendInputRequest {
    /// Client-generated id; resending the same id is a no-op.
    pub id: InputId,
    /// Sealed text.
    pub sealed: Sealed,
}

/// `POST /v1/sessions/{id}/permissions/{seq}`: answers the tool approval request at `seq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnswerPermissionRequest {
    /// Sealed [`crate::session::PermissionAnswer`] (session key, bound to the request's seq).
    pub sealed: Sealed,
}

/// Answer of `POST /v1/sessions/{id}/permissions/{seq}`: the answer reached the agent and is in
/// the transcript.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnswerPermissionResponse {
    /// Session.
    pub session_id: crate::SessionId,
    /// Seq of the request answered.
    pub request: u64,
}

/// One entry to append.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewEntry {
    /// Must be the session's last seq + 1 (and consecutive within a batch).
    pub seq: u64,
    /// The input this user entry consumes.
    pub input_id: Option<InputId>,
    /// Sealed body, bound to (session, seq, epoch).
    pub sealed: Sealed,
}

/// `POST /v1/sessions/{id}/entries` (owner at current epoch only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppendRequest {
    /// Writer's epoch; older than the session's → `stale_epoch`.
    pub epoch: u64,
    /// Entries in seq order.
    pub entries: Vec<NewEntry>,
    /// Session status after these entries (`idle`, `running`, or `stopped` when the provider
    /// died), if it changes.
    pub status: Option<SessionStatus>,
}

/// Result of an append.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppendResponse {
    /// The session's last seq after the append.
    pub last_seq: u64,
}

/// Query of `GET /v1/sessions/{id}/entries`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntriesQuery {
    /// Only entries with seq greater than this.
    #[serde(default)]
    pub after: u64,
    /// At most this many (server caps it).
    pub limit: Option<u32>,
}

/// Query of `GET /v1/sessions/{id}/inputs/pending`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingQuery {
    /// Caller's epoch.
    pub epoch: u64,
}

/// `POST /v1/sessions/{id}/handoffs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandoffRequest {
    /// Client-generated id.
    pub id: HandoffId,
    /// Target machine.
    pub to: MachineId,
    /// Options the server reads.
    #[serde(default)]
    pub options: HandoffOptions,
    /// Sealed [`crate::handoff::SealedHandoffOptions`].
    pub sealed_options: Option<Sealed>,
}

/// Daemon's report of its providers (also sent in the WebSocket hello).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Capabilities {
    /// Providers detected on the machine.
    pub providers: Vec<ProviderInfo>,
}

/// `PUT /v1/services/{provider}`: store a connected service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutServiceRequest {
    /// Sealed [`crate::ServiceSecret`] (account record kind `service`, id = provider).
    pub sealed: Sealed,
}

/// `PUT /v1/settings/{name}`: store an account setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutSettingRequest {
    /// The value, sealed as an account record (kind `settings`, id = name).
    pub sealed: Sealed,
}

/// `GET /v1/machines/{id}/provider-sessions?provider=P`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProviderSessionsResponse {
    /// Request id the listing is bound to.
    pub request: String,
    /// Sealed `Vec<ProviderSessionInfo>` (account record kind `provider-sessions`, id = request).
    pub sealed: Sealed,
}

/// `GET /v1/sessions/{id}/direct-transcript`: a Direct session's transcript, read by its owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectTranscriptResponse {
    /// Request id the transcript is bound to.
    pub request: String,
    /// Sealed `Vec<EntryBody>` ([`crate::SessionMeta`]'s session cipher, `seal_transcript`).
    pub sealed: Sealed,
}
