//! One module per group of commands.

pub mod account;
pub mod attach;
pub mod daemon;
pub mod demo;
pub mod handoff;
pub mod library;
pub mod permissions;
pub mod server;
pub mod session;
pub mod watch;

use std::sync::Arc;

use baton_daemon::client::Client;
use baton_daemon::identity::Identity;
use baton_proto::{ErrorCode, MachineInfo, SessionId, SessionRecord};

use crate::output::{CliError, CliResult, api_error};
use crate::{Cli, Command, baton_home};

/// Runs one command.
pub async fn dispatch(cli: Cli) -> CliResult {
    let home = baton_home(&cli);
    let json = cli.json;
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Daemon(args) => daemon::run(args, home).await,
        Command::Demo(args) => demo::run(args, json).await,
        Command::Login(args) => account::login(args, &home, json).await,
        Command::Pair(args) => account::pair(&client(&home)?, &args, json).await,
        Command::Machines => account::machines(&client(&home)?, json).await,
        Command::New(args) => session::new(&client(&home)?, args, json).await,
        Command::Sessions => session::list(&client(&home)?, json).await,
        Command::Send(args) => session::send(&client(&home)?, args, json).await,
        Command::Log(args) => session::log(&client(&home)?, args, json).await,
        Command::Stop(arg) => session::stop(&client(&home)?, arg, json).await,
        Command::Handoff(args) => handoff::run(&client(&home)?, args, json).await,
        Command::Handoffs(arg) => handoff::history(&client(&home)?, arg, json).await,
        Command::Services(cmd) => library::services(&client(&home)?, cmd, json).await,
        Command::ProviderSessions(args) => {
            library::provider_sessions(&client(&home)?, args, json).await
        }
        Command::Open(args) => library::open(&client(&home)?, args, json).await,
        Command::Attach(args) => attach::attach(&client(&home)?, args, json).await,
        Command::Fork(args) => attach::fork(&client(&home)?, args, json).await,
        Command::Permissions(arg) => permissions::list(&client(&home)?, &arg.session, json).await,
        Command::Allow(args) => permissions::answer(&client(&home)?, args, true, json).await,
        Command::Deny(args) => permissions::answer(&client(&home)?, args, false, json).await,
        Command::ScriptedAgent { .. } => Ok(()),
    }
}

/// The client of the enrolled identity in `home`.
pub fn client(home: &std::path::Path) -> CliResult<Client> {
    let identity = Arc::new(Identity::load(home)?);
    Ok(Client::new(identity, Some(home.to_path_buf()))?)
}

/// Finds a session by full id or unique id prefix.
pub async fn resolve_session(client: &Client, reference: &str) -> CliResult<SessionRecord> {
    if let Ok(id) = reference.parse::<SessionId>() {
        return Ok(client.get(&format!("/v1/sessions/{id}")).await?);
    }
    if reference.len() < 4 {
        return Err(CliError::Usage(format!(
            "session reference {reference:?} is too short: give the id or at least 4 characters of it"
        )));
    }
    let all: Vec<SessionRecord> = client.get("/v1/sessions").await?;
    let hits: Vec<SessionRecord> = all
        .into_iter()
        .filter(|s| s.id.to_string().starts_with(reference))
        .collect();
    match hits.len() {
        1 => Ok(hits.into_iter().next().expect("one element")),
        0 => Err(api_error(
            ErrorCode::NotFound,
            format!("No session starts with {reference}."),
        )),
        n => Err(CliError::Usage(format!(
            "{n} sessions start with {reference}; give more of the id"
        ))),
    }
}

/// Finds a machine by name or id.
pub async fn resolve_machine(client: &Client, reference: &str) -> CliResult<MachineInfo> {
    let all: Vec<MachineInfo> = client.get("/v1/machines").await?;
    all.into_iter()
        .find(|m| m.name == reference || m.id.to_string() == reference)
        .ok_or_else(|| {
            api_error(
                ErrorCode::NotFound,
                format!("No machine named {reference} in the account."),
            )
        })
}

/// The machine named, or this one.
pub async fn machine_or_self(client: &Client, name: Option<&str>) -> CliResult<MachineInfo> {
    match name {
        Some(m) => resolve_machine(client, m).await,
        None => {
            let me = client.identity().config.machine_id;
            let all: Vec<MachineInfo> = client.get("/v1/machines").await?;
            all.into_iter().find(|m| m.id == me).ok_or_else(|| {
                api_error(
                    ErrorCode::NotFound,
                    "This machine is not in the account any more.",
                )
            })
        }
    }
}
