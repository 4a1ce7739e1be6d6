//! `attach` (follow a session live and type into it) and `fork` (a new session from a prefix of
//! another's transcript and a copy of its provider state).

use std::time::Duration;

use baton_crypto::{DataKey, SessionCipher};
use baton_daemon::client::Client;
use baton_proto::api::{CreateSessionRequest, SendInputRequest};
use baton_proto::{
    EntryRole, ErrorCode, ForkOf, InputId, InputRecord, PermissionNote, SessionId, SessionMode,
    SessionRecord,
};
use clap::Args;
use tokio::io::AsyncBufReadExt;

use super::resolve_session;
use super::session::{print_entry, read_entries};
use super::watch::Watcher;
use crate::output::{CliError, CliResult, api_error, print_json};

/// Arguments of `attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// Entries of history to print first.
    #[arg(long, default_value_t = 20)]
    pub history: usize,
}

/// `baton attach`: prints the session's entries as they arrive and sends every line typed on
/// stdin as a message; ends at end of input (Ctrl-D). `/allow [SEQ]` and `/deny [SEQ]` answer a
/// tool approval request instead.
pub async fn attach(client: &Client, args: AttachArgs, json: bool) -> CliResult {
    let session = resolve_session(client, &args.session).await?;
    if session.mode == SessionMode::Direct {
        return Err(api_error(
            ErrorCode::SessionNotActive,
            "The session is Direct: its provider's own tools drive it; `baton log` shows it. Convert it with `baton handoff --direct sync` or `baton open REF --sync` to steer it from Baton.",
        ));
    }
    let cipher = client.cipher(&session)?;
    let mut watcher = Watcher::open(client, session.id).await;
    let history = read_entries(client, &cipher, session.id, 0).await?;
    let skip = history.len().saturating_sub(args.history);
    for (e, b) in &history[skip..] {
        print_entry(e, b, json);
    }
    let mut cursor = history.last().map_or(0, |(e, _)| e.seq);
    if !json {
        eprintln!(
            "Attached to {}. Type a message and press Enter; /allow or /deny answers a tool request; Ctrl-D detaches.",
            session.id
        );
    }
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let mut input_open = true;
    let mut waiting: Vec<InputId> = Vec::new();
    loop {
        tokio::select! {
            line = lines.recv(), if input_open => match line {
                Some(text) if text.trim().is_empty() => {}
                Some(text) => if let Some((allow, seq)) = answer_command(&text) {
                    // A wrong answer is reported, not fatal: the attachment goes on.
                    if let Err(e) = answer(client, &cipher, &session, allow, seq).await {
                        crate::output::report_error(&e, json);
                    }
                } else {
                    let id = InputId::new();
                    let req = SendInputRequest { id, sealed: cipher.seal_input(id, &text) };
                    let _: InputRecord = client
                        .post(&format!("/v1/sessions/{}/inputs", session.id), &req)
                        .await?;
                    waiting.push(id);
                },
                None => {
                    input_open = false;
                    if waiting.is_empty() {
                        return Ok(());
                    }
                }
            },
            _ = watcher.wait(Duration::from_secs(2)) => {}
        }
        for (e, b) in read_entries(client, &cipher, session.id, cursor).await? {
            cursor = e.seq;
            print_entry(&e, &b, json);
            if !json && matches!(b.permission, Some(PermissionNote::Request { .. })) {
                eprintln!("      ↳ type /allow or /deny (request {})", e.seq);
            }
            if b.role == EntryRole::User
                && let Some(id) = b.input_id
            {
                waiting.retain(|w| *w != id);
                // Still a turn to wait for: remember it until its end arrives.
                waiting.push(id);
            }
            if b.turn_end {
                waiting.clear();
            }
        }
        if !input_open && waiting.is_empty() {
            return Ok(());
        }
    }
}

/// `/allow [SEQ]` or `/deny [SEQ]`: (allow, request).
fn answer_command(line: &str) -> Option<(bool, Option<u64>)> {
    let mut words = line.split_whitespace();
    let allow = match words.next()? {
        "/allow" => true,
        "/deny" => false,
        _ => return None,
    };
    let seq = words.next().and_then(|w| w.parse().ok());
    Some((allow, seq))
}

async fn answer(
    client: &Client,
    cipher: &SessionCipher,
    session: &SessionRecord,
    allow: bool,
    seq: Option<u64>,
) -> CliResult {
    let fresh: SessionRecord = client.get(&format!("/v1/sessions/{}", session.id)).await?;
    let seq = match seq {
        Some(s) => s,
        None => {
            let open = super::permissions::open_requests(client, cipher, &fresh).await?;
            super::permissions::pick(&open, &fresh)?
        }
    };
    super::permissions::send_answer(client, cipher, &fresh, seq, allow).await?;
    Ok(())
}

/// Arguments of `fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// Keep the transcript up to this seq (rounded down to the end of a turn; default: all).
    #[arg(long)]
    pub at: Option<u64>,
}

/// `baton fork`.
pub async fn fork(client: &Client, args: ForkArgs, json: bool) -> CliResult {
    let parent = resolve_session(client, &args.session).await?;
    let parent_cipher = client.cipher(&parent)?;
    let parent_meta = parent_cipher.open_meta(&parent.sealed_meta)?;
    let at_seq = if parent.mode == SessionMode::Direct {
        if args.at.is_some() {
            return Err(CliError::Usage(
                "--at needs a synced session (a Direct session's transcript is not in Baton); fork it whole, or convert it first".into(),
            ));
        }
        0
    } else {
        let limit = args.at.unwrap_or(parent.last_seq);
        if limit > parent.last_seq {
            return Err(CliError::Usage(format!(
                "--at {limit}: the session has {} entries",
                parent.last_seq
            )));
        }
        // The provider's state can only be cut between turns, so the fork ends at a turn end.
        let entries = read_entries(client, &parent_cipher, parent.id, 0).await?;
        entries
            .iter()
            .filter(|(e, b)| e.seq <= limit && b.turn_end)
            .map(|(e, _)| e.seq)
            .next_back()
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--at {limit}: no turn has ended by then, so there is nothing to fork"
                ))
            })?
    };
    let id = SessionId::new();
    let key = DataKey::generate();
    let sealed_key = key.seal_under(&client.identity().secret, id);
    let cipher = SessionCipher::new(key, id);
    let meta = baton_proto::SessionMeta {
        workspace: parent_meta.workspace.clone(),
        provider_ref: None,
        title: parent_meta.title.clone(),
        fork_of: Some(ForkOf {
            session: parent.id,
            at_seq,
        }),
    };
    let record: SessionRecord = client
        .post(
            "/v1/sessions",
            &CreateSessionRequest {
                id,
                provider: parent.provider.clone(),
                mode: SessionMode::Synced,
                owner: parent.owner,
                sealed_meta: cipher.seal_meta(&meta),
                sealed_key,
            },
        )
        .await?;
    if json {
        print_json(&serde_json::json!({
            "session_id": record.id,
            "forked_from": parent.id,
            "at_seq": at_seq,
        }));
    } else {
        println!("{}", record.id);
        eprintln!(
            "Forked {} at seq {at_seq}; the owner copies the transcript and the {} state before the first message.",
            parent.id, parent.provider
        );
    }
    Ok(())
}
