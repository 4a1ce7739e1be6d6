//! HTTP handlers of `/v1`. Every handler that touches account data takes a [`Caller`] and scopes
//! its queries to the caller's account.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes as BodyBytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use baton_proto::api::{
    AppendRequest, AppendResponse, ClaimPairingRequest, CreateAccountRequest, CreatePairingRequest,
    CreatePairingResponse, CreateSessionRequest, EnrolledResponse, EntriesQuery, HandoffRequest,
    MachineEnrollment, PendingQuery, SendInputRequest, UpdateMetaRequest,
};
use baton_proto::ws::Event;
use baton_proto::{
    AccountId, ErrorCode, HandoffId, HandoffPhase, HandoffRecord, HandoffResult, InputRecord,
    MachineId, MachineInfo, MachineKind, SealedEntry, SessionId, SessionMode, SessionRecord,
    SessionStatus, now_millis,
};
use baton_store::{AppendEntries, MachineRow, PairingRow, StoreError};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};

/// How long a pairing code is valid.
pub const PAIRING_TTL_MS: i64 = 10 * 60 * 1000;
/// Most entries returned by one read.
const MAX_ENTRIES_PAGE: u32 = 1000;

fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ServerError::new(
            ErrorCode::BadRequest,
            format!("Machine name {name:?} is invalid: use 1-64 letters, digits, '-', '_' or '.'."),
        ))
    }
}

fn machine_row(account: AccountId, m: &MachineEnrollment) -> ApiResult<MachineRow> {
    check_name(&m.name)?;
    let box_pk: [u8; 32] = match (
        m.sign_pk.0.len(),
        <[u8; 32]>::try_from(m.box_pk.0.as_slice()),
    ) {
        (32, Ok(b)) => b,
        _ => {
            return Err(ServerError::new(
                ErrorCode::BadRequest,
                "Public keys must be 32 bytes each.",
            ));
        }
    };
    // A low-order key would make every secret sealed to this machine readable by anyone.
    if baton_crypto::check_box_pk(&box_pk).is_err() {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "The machine's X25519 public key is invalid (low order); generate new keys.",
        ));
    }
    Ok(MachineRow {
        id: MachineId::new(),
        account_id: account,
        name: m.name.clone(),
        sign_pk: m.sign_pk.0.clone(),
        box_pk: m.box_pk.0.clone(),
        providers: Vec::new(),
        last_seen: None,
        kind: m.kind,
        created_at: now_millis(),
    })
}

/// `POST /v1/accounts`.
pub async fn create_account(
    State(state): State<Arc<AppState>>,
    Json(req): Json<CreateAccountRequest>,
) -> ApiResult<(StatusCode, Json<EnrolledResponse>)> {
    if !state.open_registration {
        return Err(ServerError::new(
            ErrorCode::Unauthorized,
            "This server does not accept new accounts; join an existing one with `baton login --code`.",
        ));
    }
    if req.machine.kind == MachineKind::Browser {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "A browser joins an account by pairing: run `baton pair --browser` on a machine of the account.",
        ));
    }
    let account = AccountId::new();
    let row = machine_row(account, &req.machine)?;
    state.store.create_account(account, &row).await?;
    tracing::info!(account = %account, machine = %row.id, "account created");
    Ok((
        StatusCode::CREATED,
        Json(EnrolledResponse {
            account_id: account,
            machine_id: row.id,
            sealed_secret: None,
        }),
    ))
}

/// `POST /v1/pairings`.
pub async fn create_pairing(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<CreatePairingRequest>,
) -> ApiResult<Json<CreatePairingResponse>> {
    if req.pairing_id.len() != 32 || !req.pairing_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "A pairing id is 32 hex digits.",
        ));
    }
    let expires_at = now_millis() + PAIRING_TTL_MS;
    state
        .store
        .put_pairing(&PairingRow {
            id: req.pairing_id,
            account_id: caller.account,
            sealed_secret: req.sealed_secret,
            expires_at,
        })
        .await?;
    Ok(Json(CreatePairingResponse { expires_at }))
}

/// `POST /v1/pairings/{id}/claim`.
pub async fn claim_pairing(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(req): Json<ClaimPairingRequest>,
) -> ApiResult<(StatusCode, Json<EnrolledResponse>)> {
    check_name(&req.machine.name)?;
    let pairing = state.store.claim_pairing(&id, now_millis()).await?;
    let row = machine_row(pairing.account_id, &req.machine)?;
    if let Err(e) = state.store.add_machine(&row).await {
        // The code was not really used: give it back so the user can retry with another name.
        let _ = state.store.put_pairing(&pairing).await;
        return Err(match e {
            StoreError::Conflict(_) => ServerError::new(
                ErrorCode::Conflict,
                format!(
                    "A machine named {} already exists in the account.",
                    row.name
                ),
            ),
            other => other.into(),
        });
    }
    tracing::info!(account = %pairing.account_id, machine = %row.id, "machine joined by pairing");
    Ok((
        StatusCode::CREATED,
        Json(EnrolledResponse {
            account_id: pairing.account_id,
            machine_id: row.id,
            sealed_secret: Some(pairing.sealed_secret),
        }),
    ))
}

/// A machine row as clients see it.
pub fn machine_info(state: &AppState, m: MachineRow) -> MachineInfo {
    MachineInfo {
        online: state.hub.is_online(m.id),
        id: m.id,
        name: m.name,
        last_seen: m.last_seen,
        providers: m.providers,
        kind: m.kind,
    }
}

/// `GET /v1/machines`.
pub async fn machines(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<MachineInfo>>> {
    let rows = state.store.machines(caller.account).await?;
    Ok(Json(
        rows.into_iter().map(|m| machine_info(&state, m)).collect(),
    ))
}

async fn session_of(state: &AppState, caller: &Caller, id: SessionId) -> ApiResult<SessionRecord> {
    state
        .store
        .session(caller.account, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, format!("No session {id}.")))
}

/// `GET /v1/sessions`.
pub async fn sessions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<SessionRecord>>> {
    Ok(Json(state.store.sessions(caller.account).await?))
}

/// `GET /v1/sessions/{id}`.
pub async fn session(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
) -> ApiResult<Json<SessionRecord>> {
    Ok(Json(session_of(&state, &caller, id).await?))
}

/// `POST /v1/sessions`.
pub async fn create_session(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<CreateSessionRequest>,
) -> ApiResult<(StatusCode, Json<SessionRecord>)> {
    let owner = state
        .store
        .machine(req.owner)
        .await?
        .filter(|m| m.account_id == caller.account)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such machine in the account."))?;
    if req.provider.is_empty() || req.provider.len() > 64 {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "Invalid provider name.",
        ));
    }
    if let Some(p) = owner.providers.iter().find(|p| p.name == req.provider)
        && !p.installed
    {
        return Err(ServerError::new(
            ErrorCode::ProviderNotInstalled,
            format!("{} is not installed on {}.", req.provider, owner.name),
        ));
    }
    let now = now_millis();
    let record = SessionRecord {
        id: req.id,
        provider: req.provider,
        mode: req.mode,
        owner: owner.id,
        epoch: 1,
        status: SessionStatus::Idle,
        last_seq: 0,
        active_handoff: None,
        sealed_meta: req.sealed_meta,
        sealed_key: req.sealed_key,
        created_at: now,
        updated_at: now,
    };
    state.store.create_session(caller.account, &record).await?;
    state.hub.publish(
        caller.account,
        Event::SessionChanged {
            session: record.clone(),
        },
    );
    Ok((StatusCode::CREATED, Json(record)))
}

/// `PUT /v1/sessions/{id}/meta`.
pub async fn update_meta(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Json(req): Json<UpdateMetaRequest>,
) -> ApiResult<Json<SessionRecord>> {
    session_of(&state, &caller, id).await?;
    let s = state
        .store
        .update_meta(
            id,
            caller.machine,
            req.epoch,
            &req.sealed_meta,
            now_millis(),
        )
        .await?;
    state
        .hub
        .publish(caller.account, Event::SessionChanged { session: s.clone() });
    Ok(Json(s))
}

/// `POST /v1/sessions/{id}/stop`.
pub async fn stop_session(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
) -> ApiResult<Json<SessionRecord>> {
    let s = state
        .store
        .set_status(caller.account, id, SessionStatus::Stopped, now_millis())
        .await?;
    state
        .hub
        .publish(caller.account, Event::SessionChanged { session: s.clone() });
    Ok(Json(s))
}

/// `POST /v1/sessions/{id}/inputs`: queue a message (idempotent on its id).
pub async fn send_input(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Json(req): Json<SendInputRequest>,
) -> ApiResult<Json<InputRecord>> {
    let session = session_of(&state, &caller, id).await?;
    if session.status == SessionStatus::Archived {
        return Err(ServerError::new(
            ErrorCode::SessionNotActive,
            "The session is archived.",
        ));
    }
    if session.mode == SessionMode::Direct {
        return Err(ServerError::new(
            ErrorCode::SessionNotActive,
            "The session is Direct: its provider's own tools drive it. To send messages from Baton, convert it with `baton handoff SESSION --to MACHINE --direct sync` or open it again with `baton open REF --sync`.",
        ));
    }
    let (input, created) = state
        .store
        .enqueue_input(id, req.id, &req.sealed, now_millis())
        .await?;
    if created {
        state.hub.publish(
            caller.account,
            Event::InputQueued {
                input: input.clone(),
            },
        );
        // A message to a stopped session resumes it on its owner.
        if session.status == SessionStatus::Stopped && session.active_handoff.is_none() {
            match state
                .store
                .set_status(caller.account, id, SessionStatus::Idle, now_millis())
                .await
            {
                Ok(s) => state
                    .hub
                    .publish(caller.account, Event::SessionChanged { session: s }),
                Err(StoreError::HandoffInProgress) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Json(input))
}

/// `GET /v1/sessions/{id}/inputs/pending`: the owner's queue (empty while handing off).
pub async fn pending_inputs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Query(q): Query<PendingQuery>,
) -> ApiResult<Json<Vec<InputRecord>>> {
    let session = session_of(&state, &caller, id).await?;
    if session.owner != caller.machine || session.epoch != q.epoch {
        return Err(StoreError::StaleEpoch {
            current: session.epoch,
        }
        .into());
    }
    if session.status == SessionStatus::HandingOff || session.active_handoff.is_some() {
        return Ok(Json(Vec::new()));
    }
    Ok(Json(state.store.pending_inputs(id).await?))
}

/// `GET /v1/sessions/{id}/inputs/{input}`.
pub async fn input(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, input)): Path<(SessionId, baton_proto::InputId)>,
) -> ApiResult<Json<InputRecord>> {
    session_of(&state, &caller, id).await?;
    state
        .store
        .input(id, input)
        .await?
        .map(Json)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such input."))
}

/// `POST /v1/sessions/{id}/entries`: the owner appends at its epoch.
pub async fn append_entries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Json(req): Json<AppendRequest>,
) -> ApiResult<Json<AppendResponse>> {
    // No read before the write: the store's transaction checks the account and that the
    // caller owns the session at this epoch.
    if req.entries.is_empty() {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "No entries to append.",
        ));
    }
    if matches!(
        req.status,
        Some(SessionStatus::HandingOff | SessionStatus::Archived)
    ) {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "An append may only set the status to idle, running or stopped.",
        ));
    }
    let (session, entries) = state
        .store
        .append_entries(&AppendEntries {
            account: caller.account,
            session_id: id,
            machine_id: caller.machine,
            epoch: req.epoch,
            entries: req.entries,
            status: req.status,
            now: now_millis(),
        })
        .await?;
    let last_seq = session.last_seq;
    state.hub.publish(
        caller.account,
        Event::Entries {
            session_id: id,
            entries,
        },
    );
    if req.status.is_some() {
        state
            .hub
            .publish(caller.account, Event::SessionChanged { session });
    }
    Ok(Json(AppendResponse { last_seq }))
}

/// `GET /v1/sessions/{id}/entries?after=N&limit=M`.
pub async fn entries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Query(q): Query<EntriesQuery>,
) -> ApiResult<Json<Vec<SealedEntry>>> {
    session_of(&state, &caller, id).await?;
    let limit = q
        .limit
        .unwrap_or(MAX_ENTRIES_PAGE)
        .clamp(1, MAX_ENTRIES_PAGE);
    Ok(Json(state.store.entries(id, q.after, limit).await?))
}

/// `POST /v1/sessions/{id}/handoffs`.
pub async fn create_handoff(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Json(req): Json<HandoffRequest>,
) -> ApiResult<(StatusCode, Json<HandoffRecord>)> {
    let record = crate::handoff::request(&state, caller.account, id, req).await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// `GET /v1/sessions/{id}/handoffs`.
pub async fn handoffs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
) -> ApiResult<Json<Vec<HandoffRecord>>> {
    session_of(&state, &caller, id).await?;
    Ok(Json(state.store.handoffs(id).await?))
}

/// `GET /v1/handoffs/{id}`.
pub async fn handoff(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<HandoffId>,
) -> ApiResult<Json<HandoffRecord>> {
    state
        .store
        .handoff(caller.account, id)
        .await?
        .map(Json)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such handoff."))
}

/// `POST /v1/handoffs/{id}/confirm`: the client's answer to a workspace plan.
pub async fn confirm_handoff(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<HandoffId>,
    Json(body): Json<baton_proto::handoff::ConfirmHandoff>,
) -> ApiResult<Json<serde_json::Value>> {
    // Scoped to the caller's account before anything else.
    state
        .store
        .handoff(caller.account, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such handoff."))?;
    if !state.confirmations.answer(id, body.proceed) {
        return Err(ServerError::new(
            ErrorCode::Conflict,
            "That handoff is not waiting for a confirmation (it went ahead, ended, or asked for none).",
        ));
    }
    Ok(Json(serde_json::json!({ "proceed": body.proceed })))
}

/// `POST /v1/handoffs/{id}/progress`: the target's report of a workspace pass, relayed to the
/// session's watchers (counts only).
pub async fn handoff_progress(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<HandoffId>,
    Json(progress): Json<baton_proto::handoff::TransferProgress>,
) -> ApiResult<Json<serde_json::Value>> {
    let h = state
        .store
        .handoff(caller.account, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such handoff."))?;
    if h.to != caller.machine || h.result != HandoffResult::Active {
        return Err(ServerError::new(
            ErrorCode::Conflict,
            "Only the target of a running handoff reports its progress.",
        ));
    }
    state.hub.publish(
        caller.account,
        Event::HandoffProgress {
            handoff_id: id,
            session_id: h.session_id,
            progress,
        },
    );
    Ok(Json(serde_json::json!({})))
}

async fn handoff_in_phase(
    state: &AppState,
    caller: &Caller,
    id: HandoffId,
    phase: HandoffPhase,
) -> ApiResult<HandoffRecord> {
    let h = state
        .store
        .handoff(caller.account, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such handoff."))?;
    if h.result != HandoffResult::Active || h.phase != phase {
        return Err(ServerError::new(
            ErrorCode::Conflict,
            format!(
                "The handoff is in phase {} ({}), not {}.",
                h.phase.as_str(),
                h.result.as_str(),
                phase.as_str()
            ),
        ));
    }
    Ok(h)
}

/// `PUT /v1/handoffs/{id}/bundle`: the source uploads the sealed provider state.
pub async fn put_bundle(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<HandoffId>,
    body: BodyBytes,
) -> ApiResult<StatusCode> {
    let h = handoff_in_phase(&state, &caller, id, HandoffPhase::Transfer).await?;
    if h.from != caller.machine {
        return Err(ServerError::new(
            ErrorCode::Unauthorized,
            "Only the source machine uploads the bundle.",
        ));
    }
    state.store.put_bundle(id, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/handoffs/{id}/bundle`: the target downloads it.
pub async fn get_bundle(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<HandoffId>,
) -> ApiResult<Vec<u8>> {
    let h = handoff_in_phase(&state, &caller, id, HandoffPhase::Verify).await?;
    if h.to != caller.machine {
        return Err(ServerError::new(
            ErrorCode::Unauthorized,
            "Only the target machine downloads the bundle.",
        ));
    }
    state
        .store
        .bundle(id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::TransferFailed, "The bundle is missing."))
}
