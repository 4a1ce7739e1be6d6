//! `services`, `provider-sessions` and `open`: connected services, and the conversations already
//! in the providers' own files on a machine.

use baton_crypto::{DataKey, SessionCipher};
use baton_daemon::client::Client;
use baton_proto::api::{CreateSessionRequest, ProviderSessionsResponse, PutServiceRequest};
use baton_proto::{
    EntryBody, ErrorCode, MachineInfo, ProviderSessionInfo, ServiceRecord, ServiceSecret,
    SessionId, SessionMeta, SessionMode, SessionRecord,
};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::machine_or_self;
use crate::output::{CliError, CliResult, api_error, print_json};

/// `baton services …`.
#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Store a provider credential in the account (encrypted); daemons pass it to the provider's
    /// CLI, so machines need no local login.
    Add(AddServiceArgs),
    /// List the account's connected services (names of the variables only).
    List,
    /// Remove a connected service.
    Remove {
        /// Provider name.
        provider: String,
    },
}

/// Arguments of `services add`.
#[derive(Debug, Args)]
pub struct AddServiceArgs {
    /// Provider name (`claude`, `codex`, `opencode`).
    pub provider: String,
    /// Read the credential from this environment variable of this shell and pass it under the
    /// same name (e.g. ANTHROPIC_API_KEY for claude, CODEX_API_KEY for codex).
    #[arg(long, value_name = "VAR")]
    pub api_key_from_env: Vec<String>,
    /// Pass NAME=VALUE as well (repeatable), e.g. a base URL.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub extra: Vec<String>,
}

#[derive(Serialize)]
struct ServiceOut {
    provider: String,
    variables: Vec<String>,
    updated_at: i64,
}

/// Runs `baton services …`.
pub async fn services(client: &Client, cmd: ServicesCommand, json: bool) -> CliResult {
    match cmd {
        ServicesCommand::Add(args) => add_service(client, args, json).await,
        ServicesCommand::List => {
            let records: Vec<ServiceRecord> = client.get("/v1/services").await?;
            let secret = &client.identity().secret;
            let mut out = Vec::new();
            for r in records {
                let s: ServiceSecret = secret.open_record("service", &r.provider, &r.sealed)?;
                out.push(ServiceOut {
                    provider: r.provider,
                    variables: s.env.into_iter().map(|(k, _)| k).collect(),
                    updated_at: r.updated_at,
                });
            }
            if json {
                print_json(&out);
            } else if out.is_empty() {
                println!("No connected services.");
            } else {
                for s in out {
                    println!("{:<10} {}", s.provider, s.variables.join(" "));
                }
            }
            Ok(())
        }
        ServicesCommand::Remove { provider } => {
            client.delete(&format!("/v1/services/{provider}")).await?;
            if json {
                print_json(&serde_json::json!({ "provider": provider, "removed": true }));
            } else {
                println!("removed {provider}");
            }
            Ok(())
        }
    }
}

fn valid_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn add_service(client: &Client, args: AddServiceArgs, json: bool) -> CliResult {
    let mut env = Vec::new();
    for var in &args.api_key_from_env {
        if !valid_var_name(var) {
            return Err(CliError::Usage(format!(
                "--api-key-from-env {var:?} is not an environment variable name"
            )));
        }
        let value = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--api-key-from-env {var}: {var} is not set in this shell; export it first"
                ))
            })?;
        env.push((var.clone(), value));
    }
    for pair in &args.extra {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--env {pair:?}: expected NAME=VALUE"
            )));
        };
        if !valid_var_name(name) {
            return Err(CliError::Usage(format!(
                "--env {name:?} is not an environment variable name"
            )));
        }
        env.push((name.to_string(), value.to_string()));
    }
    if env.is_empty() {
        return Err(CliError::Usage(
            "give the credential with --api-key-from-env VAR (e.g. ANTHROPIC_API_KEY) or --env NAME=VALUE".into(),
        ));
    }
    let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
    let sealed =
        client
            .identity()
            .secret
            .seal_record("service", &args.provider, &ServiceSecret { env });
    let _: ServiceRecord = client
        .put(
            &format!("/v1/services/{}", args.provider),
            &PutServiceRequest { sealed },
        )
        .await?;
    if json {
        print_json(&serde_json::json!({ "provider": args.provider, "variables": names }));
    } else {
        println!(
            "Connected {} ({}); every machine's daemon now passes it to {}.",
            args.provider,
            names.join(", "),
            args.provider
        );
    }
    Ok(())
}

/// Arguments of `provider-sessions`.
#[derive(Debug, Args)]
pub struct ProviderSessionsArgs {
    /// Machine to look on (name or id; default: this machine).
    #[arg(long)]
    pub machine: Option<String>,
    /// Only this provider.
    #[arg(long)]
    pub provider: Option<String>,
}

async fn fetch_listing(
    client: &Client,
    machine: &MachineInfo,
    provider: Option<&str>,
) -> CliResult<Vec<ProviderSessionInfo>> {
    let mut path = format!("/v1/machines/{}/provider-sessions", machine.id);
    if let Some(p) = provider {
        path.push_str(&format!("?provider={p}"));
    }
    let resp: ProviderSessionsResponse = client.get(&path).await?;
    Ok(client
        .identity()
        .secret
        .open_record("provider-sessions", &resp.request, &resp.sealed)?)
}

/// `baton provider-sessions`.
pub async fn provider_sessions(
    client: &Client,
    args: ProviderSessionsArgs,
    json: bool,
) -> CliResult {
    let machine = machine_or_self(client, args.machine.as_deref()).await?;
    let list = fetch_listing(client, &machine, args.provider.as_deref()).await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    if list.is_empty() {
        println!("No provider sessions on {}.", machine.name);
    }
    for s in &list {
        println!(
            "{:<9} {:<40} {:<40} {}",
            s.provider,
            s.provider_ref,
            s.cwd,
            s.title.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Arguments of `open`.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The provider's session id (as `provider-sessions` lists it; a unique prefix is enough).
    pub session_ref: String,
    /// Machine that holds it (name or id; default: this machine).
    #[arg(long)]
    pub machine: Option<String>,
    /// Provider, when the id is ambiguous.
    #[arg(long)]
    pub provider: Option<String>,
    /// Import the transcript into Baton (a synced session you can steer from anywhere) instead
    /// of linking it as a Direct session.
    #[arg(long)]
    pub sync: bool,
}

/// `baton open`.
pub async fn open(client: &Client, args: OpenArgs, json: bool) -> CliResult {
    let machine = machine_or_self(client, args.machine.as_deref()).await?;
    let list = fetch_listing(client, &machine, args.provider.as_deref()).await?;
    let hits: Vec<&ProviderSessionInfo> = list
        .iter()
        .filter(|s| s.provider_ref == args.session_ref)
        .chain(
            list.iter()
                .filter(|s| s.provider_ref != args.session_ref)
                .filter(|s| s.provider_ref.starts_with(&args.session_ref)),
        )
        .collect();
    let found = match hits.as_slice() {
        [one] => *one,
        [first, ..] if first.provider_ref == args.session_ref => *first,
        [] => {
            return Err(api_error(
                ErrorCode::NotFound,
                format!(
                    "No provider session {} on {}; `baton provider-sessions --machine {}` lists them.",
                    args.session_ref, machine.name, machine.name
                ),
            ));
        }
        _ => {
            return Err(CliError::Usage(format!(
                "{} provider sessions start with {}; give more of the id or --provider",
                hits.len(),
                args.session_ref
            )));
        }
    };
    let sessions: Vec<SessionRecord> = client.get("/v1/sessions").await?;
    for s in &sessions {
        if s.provider == found.provider
            && let Ok(m) = client
                .cipher(s)
                .and_then(|c| c.open_meta(&s.sealed_meta).map_err(Into::into))
            && m.provider_ref.as_deref() == Some(found.provider_ref.as_str())
        {
            return Err(api_error(
                ErrorCode::Conflict,
                format!(
                    "{} {} is already Baton session {}.",
                    found.provider, found.provider_ref, s.id
                ),
            ));
        }
    }
    let id = SessionId::new();
    let key = DataKey::generate();
    let sealed_key = key.seal_under(&client.identity().secret, id);
    let cipher = SessionCipher::new(key, id);
    let meta = SessionMeta {
        workspace: found.cwd.clone(),
        provider_ref: Some(found.provider_ref.clone()),
        title: found.title.clone(),
        fork_of: None,
    };
    let mode = if args.sync {
        SessionMode::Synced
    } else {
        SessionMode::Direct
    };
    let record: SessionRecord = client
        .post(
            "/v1/sessions",
            &CreateSessionRequest {
                id,
                provider: found.provider.clone(),
                mode,
                owner: machine.id,
                sealed_meta: cipher.seal_meta(&meta),
                sealed_key,
            },
        )
        .await?;
    if json {
        print_json(&serde_json::json!({
            "session_id": record.id,
            "mode": record.mode,
            "provider": record.provider,
            "provider_ref": found.provider_ref,
            "workspace": found.cwd,
        }));
    } else {
        println!("{}", record.id);
        eprintln!(
            "Opened {} {} on {} as a {} session.",
            found.provider,
            found.provider_ref,
            machine.name,
            mode.as_str()
        );
    }
    Ok(())
}

/// A Direct session's transcript, read by its owner from the provider's files.
pub async fn direct_transcript(
    client: &Client,
    session: &SessionRecord,
) -> CliResult<Vec<EntryBody>> {
    let resp: baton_proto::api::DirectTranscriptResponse = client
        .get(&format!("/v1/sessions/{}/direct-transcript", session.id))
        .await?;
    let cipher = client.cipher(session)?;
    Ok(cipher.open_transcript(resp.request.as_bytes(), &resp.sealed)?)
}
