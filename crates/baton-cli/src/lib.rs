//! The `baton` command line: `server`, `daemon`, `demo` and the user commands. This crate only
//! parses arguments, talks to the server through the daemon crate's client, and prints; it holds
//! no protocol or storage logic of its own.

pub mod commands;
pub mod harness;
pub mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use output::{CliError, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE};

/// Baton: run AI coding agents on your machines and hand live sessions between them.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
pub struct Cli {
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Config and key directory (default: $BATON_HOME, else the platform config dir + /baton).
    #[arg(long, global = true, env = "BATON_HOME", value_name = "DIR")]
    pub baton_home: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API + WebSocket; SQLite by default).
    Server(commands::server::ServerArgs),
    /// Keep this machine online: run its sessions and answer handoffs.
    Daemon(commands::daemon::DaemonArgs),
    /// Start a server and two daemons on this machine and hand a session between them.
    Demo(commands::demo::DemoArgs),
    /// Enrol this machine: create an account, or join one with a pairing code.
    Login(commands::account::LoginArgs),
    /// Print a one-time code that lets another machine, or a browser, join this account (10 minutes).
    Pair(commands::account::PairArgs),
    /// List the account's machines, online or not, with their providers.
    Machines,
    /// Start a session.
    New(commands::session::NewArgs),
    /// List the account's sessions.
    Sessions,
    /// Send one message to a session and wait for the reply.
    Send(commands::session::SendArgs),
    /// Print a session's transcript.
    Log(commands::session::LogArgs),
    /// Stop a session's provider (a later message resumes it).
    Stop(commands::session::SessionArg),
    /// Move a session to another machine.
    Handoff(commands::handoff::HandoffArgs),
    /// A session's history of moves.
    Handoffs(commands::session::SessionArg),
    /// Follow a session live and send what you type.
    Attach(commands::attach::AttachArgs),
    /// Start a new session from a session's transcript (up to a seq) and a copy of its provider
    /// state.
    Fork(commands::attach::ForkArgs),
    /// List a session's open tool approval requests.
    Permissions(commands::session::SessionArg),
    /// Let the agent run the tool it asks for (the session's open request, or --request SEQ).
    Allow(commands::permissions::AnswerArgs),
    /// Refuse the tool the agent asks for (the session's open request, or --request SEQ).
    Deny(commands::permissions::AnswerArgs),
    /// Provider credentials stored in the account (connected services).
    #[command(subcommand)]
    Services(commands::library::ServicesCommand),
    /// List the conversations in the providers' own files on a machine.
    ProviderSessions(commands::library::ProviderSessionsArgs),
    /// Link a provider's conversation as a Direct session (or import it with --sync).
    Open(commands::library::OpenArgs),
    /// Baton's deterministic test agent (used by the `scripted` provider).
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    ScriptedAgent {
        /// Arguments passed to the agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The BATON_HOME in effect.
pub fn baton_home(cli: &Cli) -> PathBuf {
    cli.baton_home
        .clone()
        .unwrap_or_else(baton_daemon::identity::default_baton_home)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    if let Command::ScriptedAgent { args } = &cli.command {
        return baton_providers::scripted::agent::main(args.clone());
    }
    let long_running = matches!(cli.command, Command::Server(_) | Command::Daemon(_));
    init_tracing(if long_running { "info" } else { "warn" });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let json = cli.json;
    match rt.block_on(commands::dispatch(cli)) {
        Ok(()) => EXIT_OK,
        Err(e) => output::report_error(&e, json),
    }
}
