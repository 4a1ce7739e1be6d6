//! Tool approvals: `permissions` lists a session's open requests, `allow` and `deny` answer one.
//! Any client of the account can answer; the first answer wins.

use baton_crypto::SessionCipher;
use baton_daemon::client::Client;
use baton_proto::api::{AnswerPermissionRequest, AnswerPermissionResponse};
use baton_proto::{ErrorCode, OpenPermission, PermissionAnswer, SessionMode, SessionRecord};
use clap::Args;

use super::resolve_session;
use super::session::read_entries;
use crate::output::{CliError, CliResult, api_error, print_json};

/// How far back the open requests are looked for: a request blocks its turn, so an open one is
/// among the last entries.
const WINDOW: u64 = 200;

/// Arguments of `allow` and `deny`.
#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// Seq of the request to answer (`baton permissions SESSION`); needed only when several are
    /// open.
    #[arg(long, value_name = "SEQ")]
    pub request: Option<u64>,
}

/// The session's open permission requests.
pub async fn open_requests(
    client: &Client,
    cipher: &SessionCipher,
    session: &SessionRecord,
) -> CliResult<Vec<OpenPermission>> {
    let after = session.last_seq.saturating_sub(WINDOW);
    let entries = read_entries(client, cipher, session.id, after).await?;
    Ok(baton_proto::open_permissions(
        entries.iter().map(|(e, b)| (e.seq, b)),
    ))
}

/// Sends a person's answer to the request at `seq`.
pub async fn send_answer(
    client: &Client,
    cipher: &SessionCipher,
    session: &SessionRecord,
    seq: u64,
    allow: bool,
) -> CliResult<AnswerPermissionResponse> {
    let req = AnswerPermissionRequest {
        sealed: cipher.seal_answer(seq, &PermissionAnswer { allow }),
    };
    Ok(client
        .post(
            &format!("/v1/sessions/{}/permissions/{seq}", session.id),
            &req,
        )
        .await?)
}

/// `baton permissions SESSION`.
pub async fn list(client: &Client, session: &str, json: bool) -> CliResult {
    let session = resolve_session(client, session).await?;
    let cipher = client.cipher(&session)?;
    let open = open_requests(client, &cipher, &session).await?;
    if json {
        let out: Vec<_> = open
            .iter()
            .map(|p| serde_json::json!({"request": p.seq, "tool": p.tool, "input": p.input}))
            .collect();
        print_json(&out);
        return Ok(());
    }
    if open.is_empty() {
        eprintln!("No open permission requests in {}.", session.id);
    }
    for p in &open {
        println!(
            "{:>5}  {}",
            p.seq,
            baton_providers::approval::describe(&p.tool, &p.input)
        );
    }
    Ok(())
}

/// `baton allow` / `baton deny`.
pub async fn answer(client: &Client, args: AnswerArgs, allow: bool, json: bool) -> CliResult {
    let session = resolve_session(client, &args.session).await?;
    if session.mode == SessionMode::Direct {
        return Err(api_error(
            ErrorCode::BadRequest,
            "The session is Direct: answer its tool approvals in the provider's own tool.",
        ));
    }
    let cipher = client.cipher(&session)?;
    let seq = match args.request {
        Some(seq) => seq,
        None => pick(&open_requests(client, &cipher, &session).await?, &session)?,
    };
    let r = send_answer(client, &cipher, &session, seq, allow).await?;
    if json {
        print_json(&serde_json::json!({
            "session_id": r.session_id,
            "request": r.request,
            "allow": allow,
        }));
    } else {
        eprintln!(
            "{} request {} of {}.",
            if allow { "Allowed" } else { "Denied" },
            r.request,
            r.session_id
        );
    }
    Ok(())
}

/// The one open request, or an error saying what to do.
pub fn pick(open: &[OpenPermission], session: &SessionRecord) -> CliResult<u64> {
    match open {
        [] => Err(api_error(
            ErrorCode::PermissionNotOpen,
            format!("Session {} has no open permission request.", session.id),
        )),
        [one] => Ok(one.seq),
        many => Err(CliError::Usage(format!(
            "{} requests are open in {} ({}); pick one with --request SEQ",
            many.len(),
            session.id,
            many.iter()
                .map(|p| p.seq.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
