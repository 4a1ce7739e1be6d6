//! `baton daemon`.

use std::path::PathBuf;
use std::time::Duration;

use baton_daemon::{DEFAULT_BACKOFF_CAP, DaemonOptions};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::server::cancel_on_signals;
use crate::output::{CliError, CliResult};

/// Arguments of `daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Longest wait between reconnect attempts, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_BACKOFF_CAP.as_millis() as u64)]
    pub backoff_cap_ms: u64,
    /// During a handoff, how long the running turn may go on before it is interrupted (ms).
    #[arg(long, default_value_t = baton_daemon::runner::DEFAULT_QUIESCE_GRACE.as_millis() as u64)]
    pub quiesce_grace_ms: u64,
    /// Where a provider's CLI is, when not on PATH (repeatable), e.g.
    /// `--provider-bin claude=/opt/claude/bin/claude`.
    #[arg(long, value_name = "PROVIDER=PATH", value_parser = parse_provider_bin)]
    pub provider_bin: Vec<(String, PathBuf)>,
}

fn parse_provider_bin(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PROVIDER=PATH, got {s:?}"))?;
    let path = PathBuf::from(path);
    if name.is_empty() || !path.is_absolute() {
        return Err(format!("expected PROVIDER=/absolute/path, got {s:?}"));
    }
    Ok((name.to_string(), path))
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(args: DaemonArgs, baton_home: PathBuf) -> CliResult {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| CliError::Usage("HOME is not set".into()))?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    baton_daemon::run(
        DaemonOptions {
            baton_home,
            home,
            backoff_cap: Duration::from_millis(args.backoff_cap_ms.max(100)),
            quiesce_grace: Duration::from_millis(args.quiesce_grace_ms),
            programs: args.provider_bin,
        },
        shutdown,
    )
    .await
    .map_err(|e| CliError::Other(e.into()))
}
