//! `handoff` and `handoffs`.

use std::time::{Duration, Instant};

use baton_daemon::client::Client;
use baton_proto::api::HandoffRequest;
use baton_proto::handoff::SealedHandoffOptions;
use baton_proto::handoff::{ConfirmHandoff, TransferProgress, WorkspacePass};
use baton_proto::workspace::{ConflictPolicy, DestinationState, IgnoredFiles, PlanSummary};
use baton_proto::{
    ApiError, DirectTarget, HandoffId, HandoffOptions, HandoffPhase, HandoffRecord, HandoffResult,
    HandoffSupport, MachineInfo, SessionRecord, VersionCheck,
};
use std::io::IsTerminal;

use clap::Args;
use serde::Serialize;

use super::session::SessionArg;
use super::watch::Watcher;
use super::{resolve_machine, resolve_session};
use crate::output::{CliError, CliResult, format_time, print_json};

/// What a committed handoff carries, and what it cannot.
const CARRIED: [&str; 2] = ["transcript", "provider_state"];
const NOT_CARRIED: [&str; 2] = ["running tool processes", "background jobs"];

/// Arguments of `handoff`.
#[derive(Debug, Args)]
pub struct HandoffArgs {
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// Destination machine (name or id).
    #[arg(long)]
    pub to: String,
    /// Workspace path on the destination (default: the same path as on the source).
    #[arg(long)]
    pub path: Option<String>,
    /// Give up waiting after this many seconds (the handoff itself goes on).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// For a Direct session: `keep` moves the provider's files and it stays direct; `sync`
    /// imports its transcript into Baton on the target (it becomes synced).
    #[arg(long, value_enum, default_value_t = DirectArg::Keep)]
    pub direct: DirectArg,
    /// Move the workspace too (off by default: the target's files are then never touched).
    #[arg(long)]
    pub workspace: bool,
    /// With --workspace, when the destination exists: `sibling` puts the result beside it at
    /// `<path>-handoff` (then `-handoff-2`, …); `replace` puts it in place of the existing tree.
    #[arg(long, value_parser = parse_conflict, default_value = "sibling", requires = "workspace")]
    pub conflict: ConflictPolicy,
    /// With --workspace, which git-ignored files travel: `skip`, `include`, or comma-separated
    /// globs of ignored files to bring (e.g. `.env,*.local`).
    #[arg(long, value_parser = IgnoredFiles::parse, default_value = "skip", requires = "workspace")]
    pub ignored: IgnoredFiles,
    /// With --workspace: show what the transfer would do at the destination, then stop
    /// (nothing moves, the session stays where it is).
    #[arg(long, requires = "workspace")]
    pub dry_run: bool,
    /// With --conflict replace: do not ask for confirmation on a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

fn parse_conflict(s: &str) -> Result<ConflictPolicy, String> {
    ConflictPolicy::parse(s).ok_or_else(|| format!("{s:?}: use sibling or replace"))
}

/// `--direct` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DirectArg {
    /// Stay direct.
    Keep,
    /// Become synced.
    Sync,
}

#[derive(Serialize)]
struct PhaseOut {
    phase: HandoffPhase,
    started_at: i64,
    ended_at: Option<i64>,
    duration_ms: Option<i64>,
    ok: bool,
}

#[derive(Serialize)]
struct HandoffOut {
    handoff_id: HandoffId,
    session_id: baton_proto::SessionId,
    result: HandoffResult,
    from: MachineRef,
    to: MachineRef,
    epoch_before: u64,
    epoch_after: Option<u64>,
    phases: Vec<PhaseOut>,
    error: Option<ApiError>,
    carried: Vec<&'static str>,
    not_carried: Vec<&'static str>,
    /// Only with `--workspace` (absent otherwise, so the shape without it is unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace: Option<WorkspaceOut>,
    /// Only with `--workspace`: what the target planned before anything moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<PlanSummary>,
}

#[derive(Serialize)]
struct WorkspaceOut {
    path: String,
    files: u64,
    bytes_total: u64,
    bytes_sent: u64,
    skipped: Vec<SkippedOut>,
}

#[derive(Serialize)]
struct SkippedOut {
    path: String,
    reason: String,
}

/// The target's report of the workspace transfer, opened with the session's key.
fn workspace_out(
    cipher: &baton_crypto::SessionCipher,
    h: &HandoffRecord,
) -> Result<Option<WorkspaceOut>, CliError> {
    let Some(sealed) = &h.workspace else {
        return Ok(None);
    };
    let o = cipher.open_workspace(h.id, sealed).map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "the workspace report of handoff {} does not open: {e}",
            h.id
        ))
    })?;
    Ok(Some(WorkspaceOut {
        path: o.path,
        files: o.files,
        bytes_total: o.bytes_total,
        bytes_sent: o.bytes_sent,
        skipped: o
            .skipped
            .into_iter()
            .map(|s| SkippedOut {
                path: s.path,
                reason: s.reason.as_str().to_string(),
            })
            .collect(),
    }))
}

#[derive(Serialize, Clone)]
struct MachineRef {
    id: baton_proto::MachineId,
    name: String,
}

fn phases_out(h: &HandoffRecord) -> Vec<PhaseOut> {
    h.phases
        .iter()
        .map(|p| PhaseOut {
            phase: p.phase,
            started_at: p.started_at,
            ended_at: p.ended_at,
            duration_ms: p.ended_at.map(|e| e - p.started_at),
            ok: p.ok,
        })
        .collect()
}

/// `baton handoff`.
pub async fn run(client: &Client, args: HandoffArgs, json: bool) -> CliResult {
    let session = resolve_session(client, &args.session).await?;
    let target = resolve_machine(client, &args.to).await?;
    let machines: Vec<MachineInfo> = client.get("/v1/machines").await?;
    let source = machines
        .iter()
        .find(|m| m.id == session.owner)
        .map(|m| MachineRef {
            id: m.id,
            name: m.name.clone(),
        })
        .unwrap_or(MachineRef {
            id: session.owner,
            name: session.owner.to_string(),
        });
    if let Some(p) = &args.path
        && !p.starts_with('/')
    {
        return Err(CliError::Usage(format!(
            "--path {p} must be an absolute path on {}",
            target.name
        )));
    }
    let cipher = client.cipher(&session)?;
    let id = HandoffId::new();
    let sealed = SealedHandoffOptions {
        target_path: args.path.clone(),
        ignored: args.ignored.clone(),
    };
    let sealed_options =
        (sealed != SealedHandoffOptions::default()).then(|| cipher.seal_options(id, &sealed));
    // `replace` deletes what the destination holds: on a terminal, a person confirms the plan
    // first. A dry run waits on the plan too, and then declines it.
    let ask = args.workspace
        && !args.dry_run
        && args.conflict == ConflictPolicy::Replace
        && !args.yes
        && std::io::stdin().is_terminal();
    let await_confirm = args.dry_run || ask;
    let mut watcher = Watcher::open(client, session.id).await;
    let _started: HandoffRecord = client
        .post(
            &format!("/v1/sessions/{}/handoffs", session.id),
            &HandoffRequest {
                id,
                to: target.id,
                options: HandoffOptions {
                    direct: match args.direct {
                        DirectArg::Keep => DirectTarget::Keep,
                        DirectArg::Sync => DirectTarget::Sync,
                    },
                    workspace: args.workspace,
                    conflict: args.conflict,
                    await_confirm,
                },
                sealed_options,
            },
        )
        .await?;
    if !json {
        println!(
            "Handing off session {} from {} to {} (epoch {})",
            session.id, source.name, target.name, session.epoch
        );
        let info = target.providers.iter().find(|p| p.name == session.provider);
        if info.is_some_and(|p| p.handoff == HandoffSupport::Experimental) {
            eprintln!(
                "warning: handoff of {} sessions is experimental.",
                session.provider
            );
        }
        if let Some(p) = info.filter(|p| p.version_check == VersionCheck::Untested) {
            eprintln!(
                "warning: {} {} on {} is outside the versions Baton was tested with.",
                p.name,
                p.version.as_deref().unwrap_or("?"),
                target.name
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut printed = 0usize;
    let mut plan: Option<PlanSummary> = None;
    let mut bar = TransferBar::default();
    let mut h: HandoffRecord;
    loop {
        h = match client.get(&format!("/v1/handoffs/{id}")).await {
            Ok(h) => h,
            // The server restarting mid-handoff is survivable: it resumes or aborts the handoff.
            Err(baton_daemon::client::ClientError::Unreachable { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !json {
            // A phase is printed once it has ended (or, the last one, once the handoff ended).
            while printed < h.phases.len() {
                let p = &h.phases[printed];
                let Some(end) = p.ended_at else { break };
                println!(
                    "  {} {:<15} {:>6} ms",
                    if p.ok { "✓" } else { "✗" },
                    p.phase.as_str(),
                    end - p.started_at
                );
                printed += 1;
            }
        }
        if !json
            && let Some((hid, p)) = watcher.progress()
            && hid == id
            && h.result == HandoffResult::Active
        {
            bar.show(&p);
        }
        if plan.is_none()
            && let Some(sealed) = &h.plan
        {
            let p = cipher.open_plan(h.id, sealed).map_err(|e| {
                CliError::Other(anyhow::anyhow!("the workspace plan does not open: {e}"))
            })?;
            let dest = match &args.path {
                Some(p) => p.clone(),
                None => cipher
                    .open_meta(&session.sealed_meta)
                    .map(|m| m.workspace)
                    .unwrap_or_default(),
            };
            if !json {
                print_plan(&p, &dest, &target.name);
            }
            if await_confirm && h.result == HandoffResult::Active {
                let proceed = !args.dry_run && ask && confirm_replace(&p)?;
                let _: serde_json::Value = client
                    .post(
                        &format!("/v1/handoffs/{id}/confirm"),
                        &ConfirmHandoff { proceed },
                    )
                    .await?;
            }
            plan = Some(p);
        }
        if h.is_finished() {
            bar.finish();
            break;
        }
        if Instant::now() >= deadline {
            return Err(CliError::Other(anyhow::anyhow!(
                "the handoff is still running after {} s (phase {}); follow it with `baton handoffs {}`",
                args.timeout,
                h.phase.as_str(),
                session.id
            )));
        }
        watcher.wait(Duration::from_millis(500)).await;
    }
    if let Some(e) = h.error.as_mut()
        && e.code == baton_proto::ErrorCode::TargetPathMissing
    {
        // The daemon never names paths to the server; this machine knows which one it asked for.
        let wanted = match &args.path {
            Some(p) => p.clone(),
            None => cipher
                .open_meta(&session.sealed_meta)
                .map(|m| m.workspace)
                .unwrap_or_default(),
        };
        e.message = format!("{} [path on {}: {wanted}]", e.message, target.name);
    }
    if args.dry_run
        && h.error.as_ref().map(|e| e.code) == Some(baton_proto::ErrorCode::Cancelled)
        && let Some(plan) = plan
    {
        if json {
            print_json(&serde_json::json!({
                "handoff_id": h.id,
                "session_id": h.session_id,
                "dry_run": true,
                "plan": plan,
            }));
        } else {
            println!(
                "Dry run: nothing moved; the session stays on {}.",
                source.name
            );
        }
        return Ok(());
    }
    let after: SessionRecord = client.get(&format!("/v1/sessions/{}", session.id)).await?;
    let committed = h.result == HandoffResult::Committed;
    let workspace = if args.workspace && committed {
        workspace_out(&cipher, &h)?
    } else {
        None
    };
    let out = HandoffOut {
        handoff_id: h.id,
        session_id: h.session_id,
        result: h.result,
        from: source.clone(),
        to: MachineRef {
            id: target.id,
            name: target.name.clone(),
        },
        epoch_before: h.from_epoch,
        epoch_after: committed.then_some(after.epoch),
        phases: phases_out(&h),
        error: h.error.clone(),
        carried: if committed { CARRIED.to_vec() } else { vec![] },
        not_carried: if committed {
            NOT_CARRIED.to_vec()
        } else {
            vec![]
        },
        workspace,
        plan,
    };
    if json {
        print_json(&out);
    } else if committed {
        println!(
            "Session {} now runs on {} (epoch {} → {}); the id is unchanged.",
            session.id, target.name, h.from_epoch, after.epoch
        );
        match &out.workspace {
            Some(w) => {
                println!(
                    "Came along: the transcript, the provider's state and the workspace: {} files, {} ({} of file data sent), now at {} on {}.",
                    w.files,
                    human_bytes(w.bytes_total),
                    human_bytes(w.bytes_sent),
                    w.path,
                    target.name
                );
                for s in &w.skipped {
                    println!("  left out: {} ({})", s.path, s.reason);
                }
            }
            None => println!("Came along: the transcript and the provider's state."),
        }
        println!(
            "Did not come along: running tool processes and background jobs on {}.",
            source.name
        );
    }
    match (&h.result, &h.error) {
        (HandoffResult::Committed, None) => Ok(()),
        (HandoffResult::Committed, Some(e)) | (HandoffResult::Aborted, Some(e)) => {
            if !json && h.result == HandoffResult::Aborted {
                println!(
                    "Nothing moved: the session stays on {} (epoch {}).",
                    source.name, after.epoch
                );
            }
            Err(if json {
                CliError::Reported(e.clone())
            } else {
                CliError::Api(e.clone())
            })
        }
        _ => Err(CliError::Other(anyhow::anyhow!("the handoff aborted"))),
    }
}

/// The workspace transfer's progress: an indicatif bar on a terminal (files, bytes, rate, ETA),
/// plain lines at most once a second otherwise.
#[derive(Default)]
struct TransferBar {
    bar: Option<(WorkspacePass, indicatif::ProgressBar)>,
    last_line: Option<(Instant, TransferProgress)>,
}

impl TransferBar {
    fn show(&mut self, p: &TransferProgress) {
        let Some(pass) = p.pass else { return };
        let label = match pass {
            WorkspacePass::Plan => return,
            WorkspacePass::Precopy => "pre-copy",
            WorkspacePass::Final => "final delta",
        };
        if !std::io::stderr().is_terminal() {
            // A line when something changed: at most one a second, but always the pass's
            // first and last.
            let due = match &self.last_line {
                None => true,
                Some((_, last)) if last == p => false,
                Some((_, last)) if last.pass != p.pass || p.bytes_done >= p.bytes_total => true,
                Some((t, _)) => t.elapsed() >= Duration::from_secs(1),
            };
            if due {
                self.last_line = Some((Instant::now(), *p));
                println!(
                    "  {label}: {} of {}, {}/{} files in place",
                    human_bytes(p.bytes_done),
                    human_bytes(p.bytes_total),
                    p.files_done,
                    p.files_total
                );
            }
            return;
        }
        if self.bar.as_ref().is_none_or(|(q, _)| *q != pass) {
            self.finish();
            let bar = indicatif::ProgressBar::new(p.bytes_total);
            let style = indicatif::ProgressStyle::with_template(
                "  {prefix:<11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label);
            self.bar = Some((pass, bar));
        }
        if let Some((_, bar)) = &self.bar {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{}/{} files", p.files_done, p.files_total));
        }
    }

    fn finish(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish();
        }
    }
}

/// Prints what a workspace transfer will do at the destination.
fn print_plan(p: &PlanSummary, dest: &str, target: &str) {
    let state = match p.destination {
        DestinationState::Absent => "absent: it will be created",
        DestinationState::Empty => "an empty directory",
        DestinationState::Exists => match p.policy {
            ConflictPolicy::Sibling => "exists: the workspace lands beside it, untouched",
            ConflictPolicy::Replace => "exists: it will be replaced",
        },
    };
    println!("Workspace plan for {dest} on {target} ({state}):");
    println!("  {} files, {} in the tree", p.files, human_bytes(p.bytes));
    println!(
        "  add      {:>7} files {:>10}",
        p.add_files,
        human_bytes(p.add_bytes)
    );
    println!(
        "  change   {:>7} files {:>10}",
        p.change_files,
        human_bytes(p.change_bytes)
    );
    println!(
        "  remove   {:>7} files {:>10}",
        p.remove_files,
        human_bytes(p.remove_bytes)
    );
    println!("  same     {:>7} files", p.unchanged_files);
    if p.estimated {
        // Nothing at the destination to compare with: the tree streams while it is hashed.
        println!(
            "  to send: at most {} (repeated content travels once)",
            human_bytes(p.transfer_bytes)
        );
    } else {
        println!(
            "  to send: {} after delta ({} not sent: already at the destination or repeated in the tree)",
            human_bytes(p.transfer_bytes),
            human_bytes(p.reused_bytes)
        );
    }
    if p.policy == ConflictPolicy::Replace && p.destination == DestinationState::Exists {
        for path in &p.overwritten {
            println!("  overwritten: {path}");
        }
        for path in &p.removed {
            println!("  removed: {path}");
        }
        if p.lists_truncated {
            println!("  (and more)");
        }
    }
}

/// Asks on the terminal whether to replace the destination.
fn confirm_replace(p: &PlanSummary) -> Result<bool, CliError> {
    use std::io::Write;
    eprint!(
        "Replace the destination ({} files changed, {} removed)? [y/N] ",
        p.change_files, p.remove_files
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::Other(anyhow::anyhow!("reading the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// Bytes for a person: B, KiB, MiB, GiB.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Serialize)]
struct HistoryOut {
    id: HandoffId,
    from: MachineRef,
    to: MachineRef,
    result: HandoffResult,
    phase: HandoffPhase,
    created_at: i64,
    duration_ms: Option<i64>,
    bytes: u64,
    error: Option<ApiError>,
    phases: Vec<PhaseOut>,
}

/// `baton handoffs`.
pub async fn history(client: &Client, arg: SessionArg, json: bool) -> CliResult {
    let session = resolve_session(client, &arg.session).await?;
    let list: Vec<HandoffRecord> = client
        .get(&format!("/v1/sessions/{}/handoffs", session.id))
        .await?;
    let machines: Vec<MachineInfo> = client.get("/v1/machines").await?;
    let mref = |id| MachineRef {
        id,
        name: machines
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| id.to_string()),
    };
    let out: Vec<HistoryOut> = list
        .iter()
        .map(|h| HistoryOut {
            id: h.id,
            from: mref(h.from),
            to: mref(h.to),
            result: h.result,
            phase: h.phase,
            created_at: h.created_at,
            duration_ms: h.duration_ms(),
            bytes: h.bytes,
            error: h.error.clone(),
            phases: phases_out(h),
        })
        .collect();
    if json {
        print_json(&out);
        return Ok(());
    }
    if out.is_empty() {
        println!("No handoffs yet.");
    }
    for h in &out {
        println!(
            "{}  {} → {}  {:<9} {:>6} ms  {} bytes  {}{}",
            format_time(h.created_at),
            h.from.name,
            h.to.name,
            h.result.as_str(),
            h.duration_ms.map(|d| d.to_string()).unwrap_or("-".into()),
            h.bytes,
            h.phase.as_str(),
            h.error
                .as_ref()
                .map(|e| format!("  [{}] {}", e.code, e.message))
                .unwrap_or_default()
        );
    }
    Ok(())
}
