//! `baton server`.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_server::{ServerConfig, TransferLimits};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::output::CliResult;

/// Arguments of `server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700", env = "BATON_LISTEN")]
    pub listen: SocketAddr,
    /// Data directory for the SQLite database.
    #[arg(long, env = "BATON_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Use PostgreSQL at this URL instead of SQLite (for several replicas).
    #[arg(long, env = "BATON_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Refuse new accounts (only pairing into existing ones).
    #[arg(long)]
    pub closed_registration: bool,
    /// Largest workspace transfer, in bytes.
    #[arg(long, env = "BATON_TRANSFER_MAX_BYTES", default_value_t = TransferLimits::DEFAULT_MAX_BYTES)]
    pub transfer_max_bytes: u64,
    /// Workspace transfers one account may run at once.
    #[arg(long, env = "BATON_TRANSFER_MAX_CONCURRENT", default_value_t = TransferLimits::DEFAULT_MAX_CONCURRENT)]
    pub transfer_max_concurrent: usize,
}

fn default_data_dir() -> PathBuf {
    dirs_data().join("baton-server")
}

fn dirs_data() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(args: ServerArgs) -> CliResult {
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let config = ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        open_registration: !args.closed_registration,
        transfers: TransferLimits {
            max_bytes: args.transfer_max_bytes,
            max_concurrent: args.transfer_max_concurrent,
            ..TransferLimits::default()
        },
    };
    let store = match &args.database_url {
        Some(_) => "PostgreSQL".to_string(),
        None => format!("SQLite in {}", args.data_dir.display()),
    };
    baton_server::run(config, shutdown, |addr| {
        // The first line of stdout is the contract for scripts that start a server on port 0.
        println!("baton server listening on http://{addr} ({store})");
    })
    .await
    .map_err(|e| crate::output::CliError::Other(e.into()))
}
