//! The scripted agent program (`baton scripted-agent …`): a blocking, std-only stand-in for a
//! provider CLI in headless stream-JSON mode.
//!
//! State lives under `$HOME/.scripted-agent/`: `auth` (the machine-local login) and one
//! append-only conversation file per session at `projects/<enc(cwd)>/<id>.jsonl`, whose lines all
//! carry the absolute cwd (as Claude's do), so that moving a session needs path rewriting.
//! `--resume` looks only in the project directory of the given cwd, so state that was not moved
//! and rewritten for a new cwd is not found.
//!
//! Protocol: stdout carries one JSON object per line (`ready`, `tool_call`, `tool_result`,
//! `permission`, `assistant`, `error`, `turn_end`), flushed after every line; stdin takes
//! `{"type":"user","text":…}`, `{"type":"interrupt"}` and `{"type":"permission_answer","id":…,
//! "allow":…}` lines; stdin EOF ends the program with exit code 0.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{STATE_DIR, SUBCOMMAND, VERSION, is_valid_session_id, session_rel_path};

/// Exit code for failures the agent reports (not logged in, unknown session, …).
const EXIT_FAILED: i32 = 1;
/// Exit code for a malformed command line.
const EXIT_USAGE: i32 = 2;
/// Exit code of a `/crash` turn.
const EXIT_CRASH: i32 = 3;

/// Input lines buffered between the stdin reader thread and the turn loop.
const INPUT_QUEUE: usize = 64;

/// Runs the agent with the arguments that follow `scripted-agent` and returns its exit code.
/// The caller must exit the process with that code right away: a thread may still be blocked
/// reading stdin.
pub fn main(args: Vec<String>) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let home = match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => return fail("HOME is not set"),
    };
    let state = home.join(STATE_DIR);
    match args.as_slice() {
        ["--version"] => emit_text(&format!("{SUBCOMMAND} {VERSION}")),
        ["auth", "status"] => {
            if logged_in(&state) {
                emit_text("logged in")
            } else {
                // Like `claude auth status`: the answer goes to stdout, the exit code says it.
                emit_text("not logged in");
                EXIT_FAILED
            }
        }
        ["auth", "login"] => match login(&state) {
            Ok(()) => emit_text("logged in"),
            Err(e) => fail(&format!("cannot save login: {e}")),
        },
        ["run", rest @ ..] => match RunArgs::parse(rest) {
            Ok(run_args) => run(&state, run_args),
            Err(msg) => usage(&msg),
        },
        _ => usage("unknown command"),
    }
}

/// Prints a usage error.
fn usage(msg: &str) -> i32 {
    eprintln!(
        "{SUBCOMMAND}: {msg}\nusage: {SUBCOMMAND} --version | auth status | auth login | \
         run --cwd DIR (--session-id ID | --resume ID)"
    );
    EXIT_USAGE
}

/// Prints an error and returns the failure exit code.
fn fail(msg: &str) -> i32 {
    eprintln!("{SUBCOMMAND}: {msg}");
    EXIT_FAILED
}

/// Prints a plain text line on stdout (for the non-streaming commands).
fn emit_text(line: &str) -> i32 {
    let mut out = io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => EXIT_FAILED,
    }
}

/// Prints one protocol line on stdout and flushes it.
fn emit(v: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()
}

/// Logged in: the machine-local `auth` file, or a key in the environment (as Claude Code takes
/// `ANTHROPIC_API_KEY`), which is how a connected service reaches it.
fn logged_in(state: &Path) -> bool {
    state.join("auth").is_file()
        || std::env::var_os(super::API_KEY_ENV).is_some_and(|v| !v.is_empty())
}

/// Creates `auth` (0600) in the state directory.
fn login(state: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)?;
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(state.join("auth"))?;
    f.write_all(b"scripted-agent machine-local login\n")?;
    f.sync_all()
}

/// Parsed `run` arguments.
#[derive(Debug, PartialEq)]
struct RunArgs {
    cwd: String,
    id: String,
    resume: bool,
}

impl RunArgs {
    /// Parses `--cwd DIR (--session-id ID | --resume ID)` in any order.
    fn parse(args: &[&str]) -> Result<Self, String> {
        let (mut cwd, mut new_id, mut resume_id) = (None, None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let slot = match *flag {
                "--cwd" => &mut cwd,
                "--session-id" => &mut new_id,
                "--resume" => &mut resume_id,
                other => return Err(format!("unknown argument {other:?}")),
            };
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if slot.replace((*value).to_string()).is_some() {
                return Err(format!("{flag} given twice"));
            }
        }
        let cwd = cwd.ok_or("--cwd is required")?;
        let (id, resume) = match (new_id, resume_id) {
            (Some(id), None) => (id, false),
            (None, Some(id)) => (id, true),
            _ => return Err("give exactly one of --session-id and --resume".into()),
        };
        Ok(Self { cwd, id, resume })
    }
}

/// An open conversation.
struct Conversation {
    file: File,
    cwd: String,
    first_message: Option<String>,
    turns: u64,
}

/// `run`: opens or creates the conversation, prints `ready`, then serves turns until EOF.
fn run(state: &Path, args: RunArgs) -> i32 {
    if !logged_in(state) {
        return fail("not logged in · run `scripted-agent auth login`");
    }
    if !Path::new(&args.cwd).is_absolute() || !Path::new(&args.cwd).is_dir() {
        return fail(&format!(
            "--cwd {} is not an existing absolute directory",
            args.cwd
        ));
    }
    if !is_valid_session_id(&args.id) {
        return fail(&format!("invalid session id {:?}", args.id));
    }
    let path = state.join(session_rel_path(&args.cwd, &args.id));
    let conv = if args.resume {
        open_existing(&path, &args)
    } else {
        create_new(&path, &args)
    };
    let mut conv = match conv {
        Ok(c) => c,
        Err(msg) => return fail(&msg),
    };
    let ready = json!({
        "type": "ready",
        "session_id": args.id,
        "resumed": args.resume,
        "turns": conv.turns,
        "cwd": conv.cwd,
    });
    if emit(&ready).is_err() {
        return EXIT_FAILED;
    }
    serve(&mut conv, spawn_stdin_reader())
}

/// Creates a new conversation file with its meta line.
fn create_new(path: &Path, args: &RunArgs) -> Result<Conversation, String> {
    let in_use = || format!("Session ID {} is already in use.", args.id);
    if path.exists() {
        return Err(in_use());
    }
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => in_use(),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    lock(&file, &args.id)?;
    let mut conv = Conversation {
        file,
        cwd: args.cwd.clone(),
        first_message: None,
        turns: 0,
    };
    let meta = json!({
        "type": "meta",
        "session_id": args.id,
        "cwd": args.cwd,
        "created_at": baton_proto::now_millis(),
        "version": VERSION,
    });
    conv.append(&meta)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(conv)
}

/// Opens an existing conversation for `--resume`, checking that it belongs to this cwd.
fn open_existing(path: &Path, args: &RunArgs) -> Result<Conversation, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "No conversation found with session ID: {}",
                args.id
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let corrupt =
        |n: usize, why: &str| format!("conversation {} is corrupt: line {n}: {why}", args.id);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or_else(|| corrupt(1, "empty file"))?;
    let meta: Value = serde_json::from_str(first).map_err(|e| corrupt(1, &e.to_string()))?;
    if meta.get("type").and_then(Value::as_str) != Some("meta") {
        return Err(corrupt(1, "first line is not meta"));
    }
    let cwd = meta
        .get("cwd")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt(1, "meta has no cwd"))?;
    if cwd != args.cwd {
        return Err(format!("conversation {} belongs to {cwd}", args.id));
    }
    let (mut turns, mut first_message) = (0, None);
    for (i, line) in lines {
        let v: Value = serde_json::from_str(line).map_err(|e| corrupt(i + 1, &e.to_string()))?;
        if v.get("type").and_then(Value::as_str) != Some("turn") {
            continue;
        }
        turns += 1;
        if first_message.is_none() {
            let user = v.get("user").and_then(Value::as_str);
            first_message = Some(
                user.ok_or_else(|| corrupt(i + 1, "turn has no user"))?
                    .to_string(),
            );
        }
    }
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    lock(&file, &args.id)?;
    Ok(Conversation {
        file,
        cwd: args.cwd.clone(),
        first_message,
        turns,
    })
}

/// Takes an exclusive lock on the conversation file for the life of the process, so that two
/// agents never append to one conversation (a handoff must stop the source first).
fn lock(file: &File, id: &str) -> Result<(), String> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "Session {id} is already running in another process."
        ))
    }
}

impl Conversation {
    /// Appends one line and makes it durable before the caller reports the turn as done.
    fn append(&mut self, v: &Value) -> io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()
    }
}

/// One line of input.
#[derive(Debug)]
enum Input {
    User(String),
    Interrupt,
    Answer { id: String, allow: bool },
    Eof,
}

/// Reads stdin on its own thread so that a sleeping turn can still see an interrupt.
fn spawn_stdin_reader() -> Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let input = match serde_json::from_str::<Value>(&line) {
                Ok(v) => match v.get("type").and_then(Value::as_str) {
                    Some("user") => match v.get("text").and_then(Value::as_str) {
                        Some(t) => Input::User(t.to_string()),
                        None => {
                            eprintln!("{SUBCOMMAND}: user line without text ignored");
                            continue;
                        }
                    },
                    Some("interrupt") => Input::Interrupt,
                    Some("permission_answer") => Input::Answer {
                        id: v
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        allow: v.get("allow").and_then(Value::as_bool).unwrap_or(false),
                    },
                    other => {
                        eprintln!("{SUBCOMMAND}: input type {other:?} ignored");
                        continue;
                    }
                },
                Err(e) => {
                    eprintln!("{SUBCOMMAND}: input line is not JSON ({e}), ignored");
                    continue;
                }
            };
            if tx.send(input).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Eof);
    });
    rx
}

/// How a turn ended.
enum TurnOutcome {
    Done,
    Exit(i32),
}

/// Serves turns until stdin ends.
fn serve(conv: &mut Conversation, rx: Receiver<Input>) -> i32 {
    // Input that arrived while a turn was sleeping, handled after it.
    let mut pending = VecDeque::new();
    loop {
        let input = pending
            .pop_front()
            .unwrap_or_else(|| rx.recv().unwrap_or(Input::Eof));
        match input {
            Input::User(text) => match turn(conv, &text, &rx, &mut pending) {
                Ok(TurnOutcome::Done) => {}
                Ok(TurnOutcome::Exit(code)) => return code,
                // stdout or the state file is gone: nothing sensible is left to do.
                Err(e) => return fail(&format!("turn failed: {e}")),
            },
            // Nothing is running between turns, so there is nothing to interrupt or answer.
            Input::Interrupt => {}
            Input::Answer { id, .. } => {
                eprintln!("{SUBCOMMAND}: answer to {id:?}, which is not open, ignored");
            }
            Input::Eof => return 0,
        }
    }
}

/// Test commands found in a message.
#[derive(Debug, Default, PartialEq)]
struct Commands {
    sleep: Option<Duration>,
    tool: bool,
    /// `/ask WORD`: ask permission to run the `echo` tool on WORD first.
    ask: Option<String>,
    crash: bool,
    error: bool,
}

impl Commands {
    /// Finds `/sleep MS`, `/tool`, `/ask WORD`, `/crash` and `/error` as whitespace-separated
    /// words.
    fn parse(text: &str) -> Self {
        let mut c = Self::default();
        let mut words = text.split_whitespace().peekable();
        while let Some(w) = words.next() {
            match w {
                "/sleep" => {
                    if let Some(ms) = words.peek().and_then(|n| n.parse::<u64>().ok()) {
                        c.sleep = Some(Duration::from_millis(ms));
                        words.next();
                    }
                }
                "/tool" => c.tool = true,
                "/ask" => c.ask = words.next().map(str::to_string),
                "/crash" => c.crash = true,
                "/error" => c.error = true,
                _ => {}
            }
        }
        c
    }
}

/// The deterministic reply of turn `n`.
fn reply(n: u64, first: &str, text: &str, cwd: &str) -> String {
    format!(
        "Turn {n}. Your first message was: \"{first}\". You said: \"{text}\". Working in {cwd}."
    )
}

/// Runs one turn.
fn turn(
    conv: &mut Conversation,
    text: &str,
    rx: &Receiver<Input>,
    pending: &mut VecDeque<Input>,
) -> io::Result<TurnOutcome> {
    let n = conv.turns + 1;
    let cmds = Commands::parse(text);
    if let Some(sleep) = cmds.sleep {
        let deadline = Instant::now() + sleep;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(Input::Interrupt) => {
                    emit(&json!({"type": "turn_end", "turn": n, "interrupted": true}))?;
                    return Ok(TurnOutcome::Done);
                }
                Ok(other) => pending.push_back(other),
                Err(RecvTimeoutError::Timeout) => break,
                // The reader is gone (EOF already queued): no interrupt can come any more.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(left),
            }
        }
    }
    if cmds.crash {
        eprintln!("{SUBCOMMAND}: crash requested in turn {n}");
        return Ok(TurnOutcome::Exit(EXIT_CRASH));
    }
    if cmds.error {
        // An errored turn is not recorded, like a failed API call.
        emit(&json!({"type": "error", "message": "scripted error requested"}))?;
        emit(&json!({"type": "turn_end", "turn": n}))?;
        return Ok(TurnOutcome::Done);
    }
    if cmds.tool {
        emit(&json!({"type": "tool_call", "name": "echo", "input": {"text": text}}))?;
        emit(&json!({"type": "tool_result", "output": text}))?;
    }
    // Like a model that follows Baton's instruction to repeat an approved call.
    let ask = cmds
        .ask
        .map(|w| ("echo".to_string(), json!({ "text": w })))
        .or_else(|| crate::approval::parse_retry_prompt(text));
    if let Some((tool, input)) = ask {
        let id = format!("perm-{n}");
        emit(&json!({"type": "permission", "id": id, "tool": tool, "input": input}))?;
        let allow = loop {
            match rx.recv() {
                Ok(Input::Answer { id: got, allow }) if got == id => break allow,
                Ok(Input::Answer { id: got, .. }) => {
                    eprintln!("{SUBCOMMAND}: answer to {got:?}, which is not open, ignored");
                }
                Ok(Input::Interrupt) => {
                    emit(&json!({"type": "turn_end", "turn": n, "interrupted": true}))?;
                    return Ok(TurnOutcome::Done);
                }
                Ok(other @ Input::User(_)) => pending.push_back(other),
                // Stdin closed while waiting: the session is being shut down.
                Ok(Input::Eof) | Err(_) => return Ok(TurnOutcome::Exit(0)),
            }
        };
        if allow {
            let output = input
                .get("text")
                .and_then(Value::as_str)
                .map_or_else(|| input.to_string(), str::to_string);
            emit(&json!({"type": "tool_call", "name": tool, "input": input}))?;
            emit(&json!({"type": "tool_result", "output": output}))?;
        } else {
            emit(
                &json!({"type": "assistant", "text": format!("The {tool} tool was not allowed.")}),
            )?;
        }
    }
    let first = conv
        .first_message
        .clone()
        .unwrap_or_else(|| text.to_string());
    let answer = reply(n, &first, text, &conv.cwd);
    emit(&json!({"type": "assistant", "text": answer}))?;
    let record = json!({
        "type": "turn",
        "n": n,
        "cwd": conv.cwd,
        "user": text,
        "reply": answer,
        "at": baton_proto::now_millis(),
    });
    conv.append(&record)?;
    conv.turns = n;
    conv.first_message = Some(first);
    emit(&json!({"type": "turn_end", "turn": n}))?;
    Ok(TurnOutcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args() {
        assert_eq!(
            RunArgs::parse(&["--cwd", "/w", "--resume", "s1"]),
            Ok(RunArgs {
                cwd: "/w".into(),
                id: "s1".into(),
                resume: true
            })
        );
        assert_eq!(
            RunArgs::parse(&["--session-id", "s1", "--cwd", "/w"]).map(|a| a.resume),
            Ok(false)
        );
        assert!(RunArgs::parse(&["--cwd", "/w"]).is_err());
        assert!(RunArgs::parse(&["--cwd", "/w", "--resume", "a", "--session-id", "b"]).is_err());
        assert!(RunArgs::parse(&["--cwd"]).is_err());
        assert!(RunArgs::parse(&["--cwd", "/w", "--cwd", "/x", "--resume", "a"]).is_err());
        assert!(RunArgs::parse(&["--bogus", "x"]).is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(
            Commands::parse("please /sleep 250 then /tool"),
            Commands {
                sleep: Some(Duration::from_millis(250)),
                tool: true,
                ..Commands::default()
            }
        );
        assert_eq!(Commands::parse("/toolbox /sleep x"), Commands::default());
        assert!(Commands::parse("/crash").crash);
        assert_eq!(Commands::parse("x /ask hi y").ask.as_deref(), Some("hi"));
        assert!(Commands::parse("x /error").error);
    }

    #[test]
    fn reply_text() {
        assert_eq!(
            reply(3, "hi", "again", "/w"),
            "Turn 3. Your first message was: \"hi\". You said: \"again\". Working in /w."
        );
    }
}
