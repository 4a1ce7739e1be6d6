//! Reading the providers' own files for clients: listing the conversations on this machine
//! (`baton provider-sessions`) and a Direct session's transcript. Answers are sealed here, so the
//! server relays them without reading them.

use std::path::PathBuf;
use std::sync::Arc;

use baton_proto::ws::{DaemonCommand, DaemonReply};
use baton_proto::{
    ApiError, EntryBody, EntryRole, ErrorCode, ProviderSessionInfo, SessionMode, SessionRecord,
};
use baton_providers::{AgentEvent, ReadEntry};

use crate::Daemon;

type Reply = Result<DaemonReply, ApiError>;

/// Answers a library command.
pub async fn handle(d: &Arc<Daemon>, cmd: DaemonCommand) -> Reply {
    match cmd {
        DaemonCommand::ListProviderSessions { request, provider } => {
            list(d, &request, provider.as_deref()).await
        }
        DaemonCommand::ReadTranscript { request, session } => {
            transcript(d, &request, &session).await
        }
        _ => Err(ApiError::new(
            ErrorCode::BadRequest,
            "not a library command",
        )),
    }
}

async fn list(d: &Daemon, request: &str, only: Option<&str>) -> Reply {
    let mut all: Vec<ProviderSessionInfo> = Vec::new();
    let mut known = false;
    for p in d.providers() {
        if only.is_some_and(|o| o != p.name()) {
            continue;
        }
        known = true;
        match p.list_sessions().await {
            Ok(mut list) => all.append(&mut list),
            // One provider's unreadable store must not hide the others'.
            Err(e) => {
                tracing::warn!(provider = p.name(), error = %e, "listing provider sessions failed")
            }
        }
    }
    if let Some(name) = only
        && !known
    {
        return Err(ApiError::new(
            ErrorCode::ProviderNotInstalled,
            format!("Provider {name} is not known on this machine."),
        ));
    }
    all.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    let sealed = d
        .client
        .identity()
        .secret
        .seal_record("provider-sessions", request, &all);
    Ok(DaemonReply::ProviderSessions { sealed })
}

async fn transcript(d: &Daemon, request: &str, session: &SessionRecord) -> Reply {
    if session.owner != d.machine_id() || session.mode != SessionMode::Direct {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "Only the owner of a Direct session reads its transcript from the provider's files.",
        ));
    }
    let cipher = d.client.cipher(session).map_err(|e| e.to_api())?;
    let meta = cipher
        .open_meta(&session.sealed_meta)
        .map_err(|e| crate::client::ClientError::from(e).to_api())?;
    let provider = d.provider(&session.provider).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ProviderNotInstalled,
            format!(
                "Provider {} is not known on this machine.",
                session.provider
            ),
        )
    })?;
    let provider_ref = meta
        .provider_ref
        .clone()
        .unwrap_or_else(|| session.id.to_string());
    let read = provider
        .read_transcript(&provider_ref, &PathBuf::from(&meta.workspace))
        .await
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let entries = to_entries(read);
    Ok(DaemonReply::Transcript {
        sealed: cipher.seal_transcript(request.as_bytes(), &entries),
    })
}

/// Turns entries read from provider files into transcript bodies; a turn's last entry carries
/// `turn_end`.
pub(crate) fn to_entries(read: Vec<ReadEntry>) -> Vec<EntryBody> {
    let mut out: Vec<EntryBody> = Vec::with_capacity(read.len());
    for r in read {
        let body = match r.event {
            AgentEvent::User { text } => EntryBody::new(EntryRole::User, text),
            AgentEvent::Assistant { text } => EntryBody::new(EntryRole::Assistant, text),
            AgentEvent::ToolCall { name, input } => EntryBody {
                data: Some(serde_json::json!({ "name": name, "input": input })),
                ..EntryBody::new(EntryRole::ToolCall, name)
            },
            AgentEvent::ToolResult { output } => EntryBody::new(EntryRole::ToolResult, output),
            AgentEvent::Error { message } => EntryBody::new(EntryRole::Error, message),
            AgentEvent::PermissionRequest { tool, input, .. } => EntryBody {
                data: Some(serde_json::json!({ "name": tool, "input": input })),
                ..EntryBody::new(EntryRole::System, format!("Permission asked for {tool}"))
            },
            AgentEvent::TurnEnd { .. } => {
                if let Some(last) = out.last_mut() {
                    last.turn_end = true;
                }
                continue;
            }
            AgentEvent::SessionRef { .. } | AgentEvent::Exited { .. } => continue,
        };
        out.push(body);
    }
    out
}
