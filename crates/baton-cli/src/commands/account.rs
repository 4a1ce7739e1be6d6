//! `login`, `pair`, `machines`.

use std::path::Path;

use baton_crypto::{AccountSecret, MachineKeys, PairingCode};
use baton_daemon::client::{Client, post_anonymous};
use baton_daemon::identity::{Config, Identity};
use baton_proto::api::{
    ClaimPairingRequest, CreateAccountRequest, CreatePairingRequest, CreatePairingResponse,
    EnrolledResponse, MachineEnrollment,
};
use baton_proto::{Bytes, MachineInfo, MachineKind};
use clap::Args;
use serde::Serialize;

use crate::output::{CliError, CliResult, format_time, print_json};

/// Arguments of `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server URL, e.g. http://127.0.0.1:7700 or https://baton.example.org.
    #[arg(long)]
    pub server: String,
    /// This machine's name in the account (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    /// Pairing code from `baton pair` on a machine of the account (omit to create an account).
    #[arg(long)]
    pub code: Option<String>,
    /// Replace an existing enrolment in this BATON_HOME.
    #[arg(long)]
    pub force: bool,
}

/// `baton login`.
pub async fn login(args: LoginArgs, home: &Path, json: bool) -> CliResult {
    if !args.force
        && let Ok(existing) = Identity::load(home)
    {
        return Err(CliError::Usage(format!(
            "this BATON_HOME ({}) is already enrolled as {} on {}; pass --force to replace it",
            home.display(),
            existing.config.name,
            existing.config.server
        )));
    }
    let server = args.server.trim_end_matches('/').to_string();
    if !server.starts_with("http://") && !server.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "--server {server} must start with http:// or https://"
        )));
    }
    let keys = MachineKeys::generate();
    let enrollment = MachineEnrollment {
        name: args.name.clone(),
        sign_pk: Bytes(keys.sign_pk().to_vec()),
        box_pk: Bytes(keys.box_pk().to_vec()),
        kind: MachineKind::Daemon,
    };
    let (resp, secret, created) = match &args.code {
        None => {
            let resp: EnrolledResponse = post_anonymous(
                &server,
                "/v1/accounts",
                &CreateAccountRequest {
                    machine: enrollment,
                },
            )
            .await?;
            (resp, AccountSecret::generate(), true)
        }
        Some(code) => {
            let code =
                PairingCode::parse(code).map_err(|e| CliError::Usage(format!("--code: {e}")))?;
            let resp: EnrolledResponse = post_anonymous(
                &server,
                &format!("/v1/pairings/{}/claim", code.pairing_id()),
                &ClaimPairingRequest {
                    machine: enrollment,
                },
            )
            .await?;
            let sealed = resp.sealed_secret.clone().ok_or_else(|| {
                CliError::Other(anyhow::anyhow!(
                    "the server did not return the sealed account secret"
                ))
            })?;
            let secret = code.open_secret(&sealed)?;
            (resp, secret, false)
        }
    };
    let identity = Identity {
        config: Config {
            server: server.clone(),
            account_id: resp.account_id,
            machine_id: resp.machine_id,
            name: args.name.clone(),
        },
        keys,
        secret,
    };
    identity.save(home)?;
    if json {
        print_json(&serde_json::json!({
            "account_id": resp.account_id,
            "machine_id": resp.machine_id,
            "name": args.name,
            "server": server,
            "created_account": created,
        }));
    } else if created {
        println!(
            "Created a new account on {server}; this machine is {}.\nRun `baton pair` here to add other machines, and `baton daemon` to keep this one online.",
            args.name
        );
    } else {
        println!(
            "Joined the account on {server} as {}. Run `baton daemon` to keep this machine online.",
            args.name
        );
    }
    Ok(())
}

/// `baton pair` options.
#[derive(Args, Debug)]
pub struct PairArgs {
    /// Print a link that enrolls a browser for the web UI instead of a code for `baton login`.
    /// The code travels in the link's fragment (after `#`), which browsers never send to the
    /// server.
    #[arg(long)]
    pub browser: bool,
}

/// The web UI's link that enrolls a browser with `code`.
pub fn browser_pairing_url(server: &str, code: &PairingCode) -> String {
    format!("{}/#pair={}", server.trim_end_matches('/'), code.display())
}

/// `baton pair`.
pub async fn pair(client: &Client, args: &PairArgs, json: bool) -> CliResult {
    let code = PairingCode::generate();
    let resp: CreatePairingResponse = client
        .post(
            "/v1/pairings",
            &CreatePairingRequest {
                pairing_id: code.pairing_id(),
                sealed_secret: code.seal_secret(&client.identity().secret),
            },
        )
        .await?;
    if args.browser {
        let url = browser_pairing_url(client.server(), &code);
        if json {
            print_json(&serde_json::json!({ "url": url, "expires_at": resp.expires_at }));
        } else {
            println!("{url}");
            eprintln!(
                "Open this link in the browser to enroll it. It works once and expires at {} UTC.",
                format_time(resp.expires_at)
            );
        }
        return Ok(());
    }
    if json {
        print_json(&serde_json::json!({ "code": code.display(), "expires_at": resp.expires_at }));
    } else {
        println!("{}", code.display());
        eprintln!(
            "On the other machine run: baton login --server {} --name NAME --code {}\nThe code works once and expires at {} UTC.",
            client.server(),
            code.display(),
            format_time(resp.expires_at)
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ProviderOut<'a> {
    name: &'a str,
    installed: bool,
    version: Option<&'a str>,
    auth: baton_proto::AuthState,
    handoff: baton_proto::HandoffSupport,
}

#[derive(Serialize)]
struct MachineOut<'a> {
    id: baton_proto::MachineId,
    name: &'a str,
    online: bool,
    last_seen: Option<i64>,
    kind: MachineKind,
    providers: Vec<ProviderOut<'a>>,
}

/// The `machines --json` shape.
pub fn machines_json(list: &[MachineInfo]) -> serde_json::Value {
    let out: Vec<MachineOut> = list
        .iter()
        .map(|m| MachineOut {
            id: m.id,
            name: &m.name,
            online: m.online,
            last_seen: m.last_seen,
            kind: m.kind,
            providers: m
                .providers
                .iter()
                .map(|p| ProviderOut {
                    name: &p.name,
                    installed: p.installed,
                    version: p.version.as_deref(),
                    auth: p.auth,
                    handoff: p.handoff,
                })
                .collect(),
        })
        .collect();
    serde_json::to_value(out).unwrap_or_default()
}

/// `baton machines`.
pub async fn machines(client: &Client, json: bool) -> CliResult {
    let list: Vec<MachineInfo> = client.get("/v1/machines").await?;
    if json {
        print_json(&machines_json(&list));
        return Ok(());
    }
    let browsers: Vec<&str> = list
        .iter()
        .filter(|m| m.kind == MachineKind::Browser)
        .map(|m| m.name.as_str())
        .collect();
    for m in list.iter().filter(|m| m.kind == MachineKind::Daemon) {
        let me = if m.id == client.identity().config.machine_id {
            " (this machine)"
        } else {
            ""
        };
        let state = if m.online {
            "online".to_string()
        } else {
            match m.last_seen {
                Some(t) => format!("offline, last seen {} UTC", format_time(t)),
                None => "offline, never seen".to_string(),
            }
        };
        println!("{}{me}  {state}", m.name);
        for p in &m.providers {
            let auth = serde_json::to_value(p.auth).unwrap_or_default();
            let handoff = serde_json::to_value(p.handoff).unwrap_or_default();
            println!(
                "  {:<10} {} auth={} handoff={}",
                p.name,
                if p.installed {
                    p.version.clone().unwrap_or_else(|| "installed".into())
                } else {
                    "not installed".into()
                },
                auth.as_str().unwrap_or("?"),
                handoff.as_str().unwrap_or("?")
            );
        }
    }
    if !browsers.is_empty() {
        println!("Browsers enrolled for the web UI: {}", browsers.join(", "));
    }
    Ok(())
}
