//! `new`, `sessions`, `send`, `log`, `stop`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_crypto::{DataKey, SessionCipher};
use baton_daemon::client::{Client, ClientError};
use baton_proto::api::{CreateSessionRequest, SendInputRequest};
use baton_proto::{
    EntryBody, EntryRole, ErrorCode, InputId, InputRecord, MachineInfo, SealedEntry, SessionId,
    SessionMeta, SessionMode, SessionRecord,
};
use clap::Args;
use serde::Serialize;

use super::watch::Watcher;
use super::{machine_or_self, resolve_session};
use crate::output::{CliError, CliResult, api_error, print_json};

/// Arguments of `new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Provider to run (`scripted`; more to come).
    #[arg(long)]
    pub provider: String,
    /// Workspace directory on the machine (absolute, or relative to here for this machine).
    #[arg(long)]
    pub path: PathBuf,
    /// Machine to run it on (name or id; default: this machine).
    #[arg(long)]
    pub machine: Option<String>,
}

/// A session argument.
#[derive(Debug, Args)]
pub struct SessionArg {
    /// Session id (or a unique prefix of it).
    pub session: String,
}

/// Arguments of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// The message.
    pub text: String,
    /// Return once the message is queued, without waiting for the reply.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting for the reply after this many seconds (the message stays queued).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Arguments of `log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// Keep printing new entries as they arrive (with --json: one JSON object per line).
    #[arg(long)]
    pub follow: bool,
}

/// `baton new`.
pub async fn new(client: &Client, args: NewArgs, json: bool) -> CliResult {
    let owner = machine_or_self(client, args.machine.as_deref()).await?;
    let local = owner.id == client.identity().config.machine_id;
    let workspace = if local {
        let p = std::fs::canonicalize(&args.path)
            .map_err(|e| CliError::Usage(format!("--path {}: {e}", args.path.display())))?;
        if !p.is_dir() {
            return Err(CliError::Usage(format!(
                "--path {} is not a directory",
                p.display()
            )));
        }
        p
    } else if args.path.is_absolute() {
        args.path.clone()
    } else {
        return Err(CliError::Usage(
            "--path must be absolute when the session runs on another machine".into(),
        ));
    };
    let id = SessionId::new();
    let key = DataKey::generate();
    let sealed_key = key.seal_under(&client.identity().secret, id);
    let cipher = SessionCipher::new(key, id);
    let meta = SessionMeta {
        workspace: workspace.to_string_lossy().into_owned(),
        provider_ref: Some(id.to_string()),
        title: None,
        fork_of: None,
    };
    let record: SessionRecord = client
        .post(
            "/v1/sessions",
            &CreateSessionRequest {
                id,
                provider: args.provider.clone(),
                mode: SessionMode::Synced,
                owner: owner.id,
                sealed_meta: cipher.seal_meta(&meta),
                sealed_key,
            },
        )
        .await?;
    if json {
        print_json(&serde_json::json!({ "session_id": record.id }));
    } else {
        println!("{}", record.id);
        eprintln!(
            "Started a {} session on {} in {}.{}",
            args.provider,
            owner.name,
            workspace.display(),
            if owner.online {
                ""
            } else {
                " The machine is offline: the session starts when its daemon connects."
            }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct OwnerOut {
    id: baton_proto::MachineId,
    name: String,
}

#[derive(Serialize)]
struct SessionOut {
    id: SessionId,
    provider: String,
    mode: SessionMode,
    owner: OwnerOut,
    epoch: u64,
    status: baton_proto::SessionStatus,
    workspace: Option<String>,
}

/// `baton sessions`.
pub async fn list(client: &Client, json: bool) -> CliResult {
    let sessions: Vec<SessionRecord> = client.get("/v1/sessions").await?;
    let machines: Vec<MachineInfo> = client.get("/v1/machines").await?;
    let name = |id| {
        machines
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let out: Vec<SessionOut> = sessions
        .iter()
        .map(|s| SessionOut {
            id: s.id,
            provider: s.provider.clone(),
            mode: s.mode,
            owner: OwnerOut {
                id: s.owner,
                name: name(s.owner),
            },
            epoch: s.epoch,
            status: s.status,
            workspace: client
                .cipher(s)
                .and_then(|c| c.open_meta(&s.sealed_meta).map_err(ClientError::from))
                .map(|m| m.workspace)
                .ok(),
        })
        .collect();
    if json {
        print_json(&out);
        return Ok(());
    }
    for s in &out {
        println!(
            "{}  {:<9} {:<6} owner={:<12} epoch={:<3} {:<11} {}",
            s.id,
            s.provider,
            s.mode.as_str(),
            s.owner.name,
            s.epoch,
            s.status.as_str(),
            s.workspace.as_deref().unwrap_or("(undecryptable)")
        );
    }
    Ok(())
}

/// Reads all entries after `after`, decrypted, in seq order.
pub async fn read_entries(
    client: &Client,
    cipher: &SessionCipher,
    session: SessionId,
    after: u64,
) -> CliResult<Vec<(SealedEntry, EntryBody)>> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page: Vec<SealedEntry> = client
            .get(&format!(
                "/v1/sessions/{session}/entries?after={cursor}&limit=1000"
            ))
            .await?;
        let n = page.len();
        for e in page {
            cursor = e.seq;
            let body = cipher.open_entry(&e)?;
            out.push((e, body));
        }
        if n < 1000 {
            return Ok(out);
        }
    }
}

/// `baton send`.
pub async fn send(client: &Client, args: SendArgs, json: bool) -> CliResult {
    let session = resolve_session(client, &args.session).await?;
    let cipher = client.cipher(&session)?;
    let input_id = InputId::new();
    let watcher = if args.no_wait {
        None
    } else {
        Some(Watcher::open(client, session.id).await)
    };
    let req = SendInputRequest {
        id: input_id,
        sealed: cipher.seal_input(input_id, &args.text),
    };
    // The input id makes a retry after a lost answer harmless: the server stores it once.
    let mut attempts = 0;
    let input: InputRecord = loop {
        match client
            .post(&format!("/v1/sessions/{}/inputs", session.id), &req)
            .await
        {
            Ok(r) => break r,
            Err(ClientError::Unreachable { .. }) if attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(300 * attempts)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let Some(mut watcher) = watcher else {
        if json {
            print_json(&serde_json::json!({ "input_id": input.id, "seq": null, "reply": null }));
        } else {
            println!("queued {}", input.id);
        }
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut cursor = session.last_seq;
    let mut my_seq: Option<u64> = None;
    let mut reply: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    loop {
        for (e, body) in read_entries(client, &cipher, session.id, cursor).await? {
            cursor = e.seq;
            if my_seq.is_none() {
                if body.role == EntryRole::User && body.input_id == Some(input_id) {
                    my_seq = Some(e.seq);
                }
                continue;
            }
            match body.role {
                EntryRole::Assistant => reply.push(body.text.clone()),
                EntryRole::Error => errors.push(body.text.clone()),
                EntryRole::ToolCall if !json => eprintln!("· tool call: {}", body.text),
                // Someone must answer before the turn can go on; say how, and keep waiting.
                EntryRole::Permission if !json => {
                    eprintln!("· {}", body.text);
                    if matches!(
                        body.permission,
                        Some(baton_proto::PermissionNote::Request { .. })
                    ) {
                        eprintln!(
                            "  answer with `baton allow {0} --request {1}` or `baton deny {0} --request {1}`",
                            session.id, e.seq
                        );
                    }
                }
                _ => {}
            }
            if body.turn_end {
                let seq = my_seq.unwrap_or(0);
                let text = reply.join("\n");
                if json {
                    print_json(&serde_json::json!({
                        "seq": seq,
                        "reply": text,
                        "errors": errors,
                    }));
                } else {
                    if !text.is_empty() {
                        println!("{text}");
                    }
                    for e in &errors {
                        eprintln!("error: {e}");
                    }
                }
                if !errors.is_empty() && text.is_empty() {
                    return Err(api_error(ErrorCode::ProviderFailed, errors.join(" ")));
                }
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(api_error(
                ErrorCode::Timeout,
                format!(
                    "No reply within {} s; the message stays queued (input {}).",
                    args.timeout, input.id
                ),
            ));
        }
        watcher.wait(Duration::from_secs(1)).await;
    }
}

#[derive(Serialize)]
struct EntryOut<'a> {
    seq: u64,
    epoch: u64,
    role: &'a str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    permission: Option<&'a baton_proto::PermissionNote>,
}

impl<'a> EntryOut<'a> {
    fn of(e: &SealedEntry, b: &'a EntryBody) -> Self {
        Self {
            seq: e.seq,
            epoch: e.epoch,
            role: b.role.as_str(),
            text: &b.text,
            permission: b.permission.as_ref(),
        }
    }
}

/// Prints one entry: a line of text, or one JSON object per line.
pub fn print_entry(e: &SealedEntry, body: &EntryBody, json_line: bool) {
    if json_line {
        if let Ok(s) = serde_json::to_string(&EntryOut::of(e, body)) {
            println!("{s}");
        }
    } else {
        println!(
            "{:>5} e{} {:<11} {}",
            e.seq,
            e.epoch,
            body.role.as_str(),
            body.text
        );
    }
}

/// `baton log`.
pub async fn log(client: &Client, args: LogArgs, json: bool) -> CliResult {
    let session = resolve_session(client, &args.session).await?;
    if session.mode == SessionMode::Direct {
        return log_direct(client, &session, args.follow, json).await;
    }
    let cipher = client.cipher(&session)?;
    let mut watcher = if args.follow {
        Some(Watcher::open(client, session.id).await)
    } else {
        None
    };
    let entries = read_entries(client, &cipher, session.id, 0).await?;
    let mut cursor = entries.last().map(|(e, _)| e.seq).unwrap_or(0);
    if json && !args.follow {
        let out: Vec<EntryOut> = entries.iter().map(|(e, b)| EntryOut::of(e, b)).collect();
        print_json(&out);
        return Ok(());
    }
    for (e, b) in &entries {
        print_entry(e, b, json);
    }
    let Some(w) = watcher.as_mut() else {
        return Ok(());
    };
    loop {
        w.wait(Duration::from_secs(2)).await;
        for (e, b) in read_entries(client, &cipher, session.id, cursor).await? {
            cursor = e.seq;
            print_entry(&e, &b, json);
        }
    }
}

/// `log` of a Direct session: the owner reads the provider's files (so the owner must be
/// online); entries have no seq in Baton, so they are numbered by position.
async fn log_direct(
    client: &Client,
    session: &SessionRecord,
    follow: bool,
    json: bool,
) -> CliResult {
    let show = |i: usize, b: &EntryBody| {
        let e = SealedEntry {
            seq: i as u64 + 1,
            epoch: session.epoch,
            input_id: None,
            sealed: baton_proto::Sealed(Vec::new()),
            created_at: 0,
        };
        print_entry(&e, b, json);
    };
    let entries = super::library::direct_transcript(client, session).await?;
    if json && !follow {
        let out: Vec<EntryOut> = entries
            .iter()
            .enumerate()
            .map(|(i, b)| EntryOut {
                seq: i as u64 + 1,
                epoch: session.epoch,
                role: b.role.as_str(),
                text: &b.text,
                permission: None,
            })
            .collect();
        print_json(&out);
        return Ok(());
    }
    for (i, b) in entries.iter().enumerate() {
        show(i, b);
    }
    if !follow {
        return Ok(());
    }
    let mut seen = entries.len();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = super::library::direct_transcript(client, session).await?;
        for (i, b) in now.iter().enumerate().skip(seen) {
            show(i, b);
        }
        seen = seen.max(now.len());
    }
}

/// `baton stop`.
pub async fn stop(client: &Client, arg: SessionArg, json: bool) -> CliResult {
    let session = resolve_session(client, &arg.session).await?;
    let s: SessionRecord = client
        .post(
            &format!("/v1/sessions/{}/stop", session.id),
            &serde_json::json!({}),
        )
        .await?;
    if json {
        print_json(&serde_json::json!({ "session_id": s.id, "status": s.status }));
    } else {
        println!("stopped {}", s.id);
    }
    Ok(())
}
