//! Test helper: runs the scripted agent as `baton-scripted-agent scripted-agent <args…>`, the way
//! `baton scripted-agent <args…>` does, so this crate's tests can spawn it as a real process
//! (integration tests get its path from `CARGO_BIN_EXE_baton-scripted-agent`). Not installed for
//! users; the `baton` binary is the real host of the agent.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new("scripted-agent")) {
        eprintln!("usage: baton-scripted-agent scripted-agent <args…>");
        return ExitCode::from(2);
    }
    let args: Result<Vec<String>, _> = args.map(|a| a.into_string()).collect();
    let Ok(args) = args else {
        eprintln!("baton-scripted-agent: arguments must be UTF-8");
        return ExitCode::from(2);
    };
    let code = baton_providers::scripted::agent::main(args);
    // Exit at once: the agent's stdin reader thread may still be blocked.
    std::process::exit(code)
}
