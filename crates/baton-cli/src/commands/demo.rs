//! `baton demo`: an embedded server and two daemons ("laptop", "desktop") as child processes on
//! this computer, a scripted session on laptop, two messages, a handoff to desktop (into a
//! different workspace path), and a third message whose answer proves the context came along.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::Value;

use crate::harness::Cluster;
use crate::output::{CliError, CliResult};

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the server and daemons running and print how to reach them.
    #[arg(long)]
    pub keep_running: bool,
    /// Directory for the demo's data (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs, json: bool) -> CliResult {
    tokio::task::spawn_blocking(move || demo(args, json))
        .await
        .map_err(|e| CliError::Other(anyhow!("the demo panicked: {e}")))?
        .map_err(CliError::Other)
}

fn say(json: bool, text: impl AsRef<str>) {
    if !json {
        println!("{}", text.as_ref());
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow!("missing {key} in {v}"))
}

fn demo(args: DemoArgs, json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("finding the baton binary")?;
    let (root, _tmp) = match args.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("baton-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            // Kept on disk with --keep-running (the processes use it).
            let keep = if args.keep_running {
                let _ = t.keep();
                None
            } else {
                Some(t)
            };
            (p, keep)
        }
    };
    say(json, format!("Demo directory: {}", root.display()));
    let mut cluster = Cluster::start(&exe, &root)?;
    say(
        json,
        format!(
            "1. Server running at {} (SQLite in {}/server)",
            cluster.url,
            root.display()
        ),
    );
    let laptop = cluster.add_machine("laptop", true)?;
    let desktop = cluster.add_machine("desktop", true)?;
    say(
        json,
        "2. Enrolled two machines: laptop created the account, desktop joined with a one-time pairing code.",
    );
    cluster.start_daemon(laptop)?;
    cluster.start_daemon(desktop)?;
    cluster.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))?;
    say(
        json,
        "3. Both daemons are online (each with its own HOME and BATON_HOME).",
    );

    let ws_laptop = cluster.machines[laptop].home.join("projects/demo");
    let ws_desktop = cluster.machines[desktop].home.join("code/demo");
    std::fs::create_dir_all(&ws_laptop)?;
    std::fs::create_dir_all(&ws_desktop)?;
    let ws_laptop = std::fs::canonicalize(&ws_laptop)?;
    let ws_desktop = std::fs::canonicalize(&ws_desktop)?;
    let created = cluster.json(
        laptop,
        &[
            "new",
            "--provider",
            "scripted",
            "--path",
            &ws_laptop.to_string_lossy(),
        ],
    )?;
    let session = str_of(&created, "session_id")?.to_string();
    say(
        json,
        format!(
            "4. Started session {session} on laptop in {}",
            ws_laptop.display()
        ),
    );

    let mut replies = Vec::new();
    for text in [
        "Please remember the word PERSIMMON.",
        "What did I ask you to remember?",
    ] {
        let r = cluster.json(laptop, &["send", &session, text])?;
        say(
            json,
            format!("   you:   {text}\n   agent: {}", str_of(&r, "reply")?),
        );
        replies.push(r);
    }
    let before = session_row(&cluster, laptop, &session)?;
    say(
        json,
        format!(
            "5. Before the handoff: owner {}, epoch {}",
            before["owner"]["name"], before["epoch"]
        ),
    );

    say(
        json,
        format!(
            "6. Handing the session off to desktop, workspace {}:",
            ws_desktop.display()
        ),
    );
    let out = cluster.baton(
        laptop,
        &[
            "--json",
            "handoff",
            &session,
            "--to",
            "desktop",
            "--path",
            &ws_desktop.to_string_lossy(),
        ],
    )?;
    let handoff: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("handoff output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if !out.status.success() || handoff["result"] != "committed" {
        bail!("the handoff failed: {handoff}");
    }
    for p in handoff["phases"].as_array().into_iter().flatten() {
        say(
            json,
            format!(
                "   ✓ {:<15} {:>5} ms",
                p["phase"].as_str().unwrap_or("?"),
                p["duration_ms"].as_i64().unwrap_or(0)
            ),
        );
    }
    let after = session_row(&cluster, laptop, &session)?;
    say(
        json,
        format!(
            "7. After the handoff: session id {} (unchanged), owner {}, epoch {}, workspace {}",
            after["id"].as_str().unwrap_or("?"),
            after["owner"]["name"],
            after["epoch"],
            after["workspace"].as_str().unwrap_or("?")
        ),
    );
    say(
        json,
        "   Came along: the transcript and the provider's state (paths rewritten for desktop).",
    );
    say(
        json,
        "   Did not come along: running tool processes and background jobs.",
    );

    let third = "Which word was it, and where are you working now?";
    let r = cluster.json(laptop, &["send", &session, third])?;
    let reply = str_of(&r, "reply")?.to_string();
    say(
        json,
        format!("8. Sent from laptop, answered on desktop:\n   you:   {third}\n   agent: {reply}"),
    );
    if !reply.contains("PERSIMMON") || !reply.contains(&*ws_desktop.to_string_lossy()) {
        bail!("the reply does not show the context came along: {reply}");
    }
    say(
        json,
        "   The reply quotes the first message and names desktop's workspace: the provider context came along.",
    );

    let log = cluster.json(laptop, &["log", &session])?;
    say(json, "9. The transcript (seq, epoch, role, text):");
    for e in log.as_array().into_iter().flatten() {
        say(
            json,
            format!(
                "   {:>3} e{} {:<9} {}",
                e["seq"],
                e["epoch"],
                e["role"].as_str().unwrap_or("?"),
                e["text"].as_str().unwrap_or("")
            ),
        );
    }
    if json {
        crate::output::print_json(&serde_json::json!({
            "session_id": session,
            "before": before,
            "after": after,
            "handoff": handoff,
            "replies": replies,
            "third_reply": reply,
            "transcript": log,
        }));
    }
    if args.keep_running {
        let url = cluster.url.clone();
        let homes: Vec<(String, PathBuf, PathBuf)> = cluster
            .machines
            .iter()
            .map(|m| (m.name.clone(), m.home.clone(), m.baton_home.clone()))
            .collect();
        cluster.detach();
        println!(
            "\nStill running. Server: {url}. Logs: {}/logs/",
            root.display()
        );
        for (name, home, bh) in homes {
            println!(
                "As {name}: HOME={} BATON_HOME={} baton sessions",
                home.display(),
                bh.display()
            );
        }
        println!(
            "Stop everything with: pkill -f '{} (server|daemon)'",
            exe.display()
        );
    } else {
        cluster.shutdown();
        say(json, "10. Stopped the server and both daemons. Done.");
    }
    Ok(())
}

fn session_row(cluster: &Cluster, idx: usize, id: &str) -> Result<Value> {
    let list = cluster.json(idx, &["sessions"])?;
    list.as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id))
        .cloned()
        .ok_or_else(|| anyhow!("session {id} not listed"))
}
