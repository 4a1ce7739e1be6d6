//! Connected services and the relays between clients and a machine's daemon: provider-session
//! listings, Direct sessions' transcripts, answers to tool approval requests. The server stores
//! and relays these sealed; it never reads them.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use baton_proto::api::{
    AnswerPermissionRequest, AnswerPermissionResponse, DirectTranscriptResponse,
    ProviderSessionsResponse, PutServiceRequest, PutSettingRequest,
};
use baton_proto::ws::{DaemonCommand, DaemonReply, Event};
use baton_proto::{
    ErrorCode, MachineId, ServiceRecord, SessionId, SessionMode, SessionStatus, SettingRecord,
    now_millis,
};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};

/// How long a machine gets to read its providers' files.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest sealed service accepted (a few environment variables).
const MAX_SERVICE_BYTES: usize = 64 * 1024;

/// Provider names: what adapters are called.
fn check_provider(name: &str) -> ApiResult<()> {
    check_name("provider", name)
}

fn check_name(what: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ServerError::new(
            ErrorCode::BadRequest,
            format!("Invalid {what} name {name:?}: use lowercase letters, digits, '-' or '_'."),
        ))
    }
}

/// `GET /v1/services`.
pub async fn services(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<ServiceRecord>>> {
    Ok(Json(state.store.services(caller.account).await?))
}

/// `PUT /v1/services/{provider}`.
pub async fn put_service(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(provider): Path<String>,
    Json(req): Json<PutServiceRequest>,
) -> ApiResult<Json<ServiceRecord>> {
    check_provider(&provider)?;
    if req.sealed.0.len() > MAX_SERVICE_BYTES {
        return Err(ServerError::new(
            ErrorCode::TooLarge,
            "The service's credential is larger than 64 KiB.",
        ));
    }
    let record = ServiceRecord {
        provider,
        sealed: req.sealed,
        updated_at: now_millis(),
    };
    state.store.put_service(caller.account, &record).await?;
    state.hub.publish(caller.account, Event::ServicesChanged);
    Ok(Json(record))
}

/// `DELETE /v1/services/{provider}`.
pub async fn delete_service(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(provider): Path<String>,
) -> ApiResult<StatusCode> {
    check_provider(&provider)?;
    state
        .store
        .delete_service(caller.account, &provider)
        .await
        .map_err(|e| match e {
            baton_store::StoreError::NotFound => ServerError::new(
                ErrorCode::NotFound,
                format!("No connected service for {provider}."),
            ),
            other => other.into(),
        })?;
    state.hub.publish(caller.account, Event::ServicesChanged);
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/machines/{id}/provider-sessions`.
#[derive(Debug, Deserialize)]
pub struct ProviderSessionsQuery {
    /// Only this provider.
    pub provider: Option<String>,
}

/// `GET /v1/machines/{id}/provider-sessions`: asks the machine's daemon for the conversations
/// in its providers' files.
pub async fn provider_sessions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(machine): Path<MachineId>,
    Query(q): Query<ProviderSessionsQuery>,
) -> ApiResult<Json<ProviderSessionsResponse>> {
    if let Some(p) = &q.provider {
        check_provider(p)?;
    }
    let m = state
        .store
        .machine(machine)
        .await?
        .filter(|m| m.account_id == caller.account)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such machine in the account."))?;
    if !state.hub.is_online(machine) {
        return Err(ServerError::new(
            ErrorCode::TargetOffline,
            format!("Machine {} is offline.", m.name),
        ));
    }
    let request = uuid::Uuid::new_v4().to_string();
    let reply = state
        .hub
        .command(
            machine,
            DaemonCommand::ListProviderSessions {
                request: request.clone(),
                provider: q.provider,
            },
            RELAY_TIMEOUT,
        )
        .await?;
    match reply {
        DaemonReply::ProviderSessions { sealed } => {
            Ok(Json(ProviderSessionsResponse { request, sealed }))
        }
        _ => Err(ServerError::new(
            ErrorCode::Internal,
            "The machine answered with something else.",
        )),
    }
}

/// `GET /v1/sessions/{id}/direct-transcript`: a Direct session's transcript, read by its owner
/// from the provider's files (unavailable while the owner is offline).
pub async fn direct_transcript(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<SessionId>,
) -> ApiResult<Json<DirectTranscriptResponse>> {
    let session = state
        .store
        .session(caller.account, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, format!("No session {id}.")))?;
    if session.mode != SessionMode::Direct {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "The session is synced: read its transcript from /entries.",
        ));
    }
    if !state.hub.is_online(session.owner) {
        return Err(ServerError::new(
            ErrorCode::TargetOffline,
            "The machine that holds this Direct session is offline; its transcript is on that machine only.",
        ));
    }
    let request = uuid::Uuid::new_v4().to_string();
    let reply = state
        .hub
        .command(
            session.owner,
            DaemonCommand::ReadTranscript {
                request: request.clone(),
                session,
            },
            RELAY_TIMEOUT,
        )
        .await?;
    match reply {
        DaemonReply::Transcript { sealed } => {
            Ok(Json(DirectTranscriptResponse { request, sealed }))
        }
        _ => Err(ServerError::new(
            ErrorCode::Internal,
            "The machine answered with something else.",
        )),
    }
}

/// Longest sealed permission answer accepted (a boolean, sealed).
const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// `POST /v1/sessions/{id}/permissions/{seq}`: relays a person's answer to the tool approval
/// request at `seq` to the daemon running the session. The first answer wins; the daemon refuses
/// later ones with `permission_not_open`.
pub async fn answer_permission(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, request)): Path<(SessionId, u64)>,
    Json(req): Json<AnswerPermissionRequest>,
) -> ApiResult<Json<AnswerPermissionResponse>> {
    if req.sealed.0.len() > MAX_ANSWER_BYTES {
        return Err(ServerError::new(
            ErrorCode::TooLarge,
            "A permission answer is larger than 4 KiB.",
        ));
    }
    let session = state
        .store
        .session(caller.account, id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, format!("No session {id}.")))?;
    if session.mode == SessionMode::Direct {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            "The session is Direct: answer its tool approvals in the provider's own tool.",
        ));
    }
    if request == 0 || request > session.last_seq {
        return Err(ServerError::new(
            ErrorCode::PermissionNotOpen,
            format!("Session {id} has no entry {request}."),
        ));
    }
    if session.status == SessionStatus::HandingOff || session.active_handoff.is_some() {
        return Err(ServerError::new(
            ErrorCode::HandoffInProgress,
            "The session is moving to another machine; its open requests will be asked again there.",
        ));
    }
    if !state.hub.is_online(session.owner) {
        return Err(ServerError::new(
            ErrorCode::TargetOffline,
            "The machine that runs this session is offline; the request will be asked again when it is back.",
        ));
    }
    let reply = state
        .hub
        .command(
            session.owner,
            DaemonCommand::AnswerPermission {
                session_id: id,
                request,
                sealed: req.sealed,
            },
            RELAY_TIMEOUT,
        )
        .await?;
    match reply {
        DaemonReply::Ok => Ok(Json(AnswerPermissionResponse {
            session_id: id,
            request,
        })),
        _ => Err(ServerError::new(
            ErrorCode::Internal,
            "The machine answered with something else.",
        )),
    }
}

/// Largest sealed account setting.
const MAX_SETTING_BYTES: usize = 64 * 1024;

/// `GET /v1/settings/{name}`: an account setting, sealed (`not_found` until one is stored).
pub async fn setting(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<SettingRecord>> {
    check_name("setting", &name)?;
    state
        .store
        .setting(caller.account, &name)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ServerError::new(
                ErrorCode::NotFound,
                format!("No setting {name} is stored yet."),
            )
        })
}

/// `PUT /v1/settings/{name}`: stores an account setting, sealed with the account secret.
pub async fn put_setting(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<PutSettingRequest>,
) -> ApiResult<Json<SettingRecord>> {
    check_name("setting", &name)?;
    if req.sealed.0.len() > MAX_SETTING_BYTES {
        return Err(ServerError::new(
            ErrorCode::TooLarge,
            "A setting is at most 64 KiB sealed.",
        ));
    }
    let record = SettingRecord {
        name,
        sealed: req.sealed,
        updated_at: now_millis(),
    };
    state.store.put_setting(caller.account, &record).await?;
    Ok(Json(record))
}
