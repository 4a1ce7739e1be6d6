//! The tools Baton is compared with (`rsync` to an rsync daemon on loopback, a `tar | zstd -1 |
//! zstd -d | tar` pipeline, `cp -a`), and what every timed run needs around it: `sync`, dropping
//! the page cache, and the peak memory of a process.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A comparison tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `rsync -a` to an rsync daemon on 127.0.0.1.
    Rsync,
    /// `tar -c | zstd -1 | zstd -d | tar -x`.
    Tar,
    /// `cp -a`.
    Cp,
}

impl Tool {
    /// Every tool, in the report's order.
    pub const ALL: [Tool; 3] = [Tool::Rsync, Tool::Tar, Tool::Cp];

    /// Short name (`--compare` value, JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rsync => "rsync",
            Self::Tar => "tar",
            Self::Cp => "cp",
        }
    }

    /// The tool by its short name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// What runs, for the table.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Rsync => "rsync -a -> rsync daemon",
            Self::Tar => "tar | zstd -1 | zstd -d | tar",
            Self::Cp => "cp -a",
        }
    }

    /// The programs it needs, each with the argument that makes it print its version.
    fn programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Rsync => &[("rsync", "--version")],
            Self::Tar => &[
                ("tar", "--version"),
                ("zstd", "--version"),
                ("bash", "--version"),
            ],
            Self::Cp => &[("cp", "--version")],
        }
    }

    /// The versions of the programs it needs, or why it cannot run.
    pub fn check(self) -> Result<String, String> {
        let mut versions = Vec::new();
        for (prog, arg) in self.programs() {
            match Command::new(prog).arg(arg).stdin(Stdio::null()).output() {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let first = text.lines().next().unwrap_or("").trim();
                    versions.push(first.trim_start_matches("*** ").to_string());
                }
                Ok(out) => {
                    return Err(format!(
                        "`{prog} {arg}` failed ({}); install it (e.g. apt-get install -y {prog})",
                        out.status
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "{prog} is not installed ({e}); install it (e.g. apt-get install -y {prog})"
                    ));
                }
            }
        }
        Ok(versions.join("; "))
    }
}

/// Runs `cmd` and fails with its stderr unless it exits 0; returns its stdout.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sync`: every timed run ends with it, so that the figures include writing the data out and
/// not only filling the page cache.
pub fn sync() -> Result<()> {
    run(&mut Command::new("sync"), "sync").map(drop)
}

/// Writes dirty pages out and drops the page cache, dentries and inodes, so that the next run
/// reads its source from disk. Needs root; the error says why it could not.
pub fn drop_caches() -> Result<(), String> {
    sync().map_err(|e| e.to_string())?;
    std::fs::write("/proc/sys/vm/drop_caches", b"3")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches ({e}); run as root"))
}

/// A `/proc/PID/status` memory field (`VmHWM`, `VmRSS`) of process `pid`, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// Times `f` followed by `sync`, in seconds.
pub fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    sync()?;
    Ok(t.elapsed().as_secs_f64())
}

/// What `rsync --stats` reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsyncStats {
    /// "Total bytes sent": everything the client wrote to the daemon (file list, checksums,
    /// literal data, protocol).
    pub total_sent: u64,
    /// "Literal data": file bytes sent as they are.
    pub literal: u64,
    /// "Matched data": file bytes the receiver rebuilt from what it had.
    pub matched: u64,
    /// "File list size".
    pub file_list: u64,
}

impl RsyncStats {
    /// Parses the `--stats` block of rsync's output.
    pub fn parse(out: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = out.lines().find(|l| l.trim_start().starts_with(name))?;
            let rest = line.split_once(':')?.1;
            let digits: String = rest
                .split_whitespace()
                .next()?
                .chars()
                .filter(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        };
        Some(Self {
            total_sent: field("Total bytes sent")?,
            literal: field("Literal data").unwrap_or(0),
            matched: field("Matched data").unwrap_or(0),
            file_list: field("File list size").unwrap_or(0),
        })
    }
}

/// An `rsync --daemon` on 127.0.0.1 serving one writable module, `bench`, rooted at `dir`.
/// Stopped (by its pid) when dropped.
pub struct RsyncDaemon {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RsyncDaemon {
    /// Module name.
    const MODULE: &'static str = "bench";

    /// Starts the daemon with its configuration and log in `work`, the module at `dir`.
    pub fn start(work: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for rsync")?
            .port();
        let conf = work.join("rsyncd.conf");
        // `munge symlinks` would default to on without chroot; uid/gid keep the files the
        // benchmark's own, as the other tools leave them.
        let (uid, gid) = own_ids()?;
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nmunge symlinks = no\npid file = {pid}\nlog file = {log}\n\
                 [{m}]\n  path = {path}\n  read only = no\n  uid = {uid}\n  gid = {gid}\n",
                pid = work.join("rsyncd.pid").display(),
                log = work.join("rsyncd.log").display(),
                m = Self::MODULE,
                path = dir.display(),
            ),
        )
        .context("writing rsyncd.conf")?;
        let child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--port={port}"))
            .arg("--address=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting rsync --daemon")?;
        let mut d = Self {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = d.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("rsync --daemon exited ({status}): {}", err.trim());
            }
            if Instant::now() > deadline {
                bail!("rsync --daemon did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// The module's directory `sub` on disk.
    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.join(sub)
    }

    /// `rsync -a --stats [--exclude=/X ...] SRC/ rsync://127.0.0.1:PORT/bench/SUB/`.
    pub fn push(&self, src: &Path, sub: &str, excludes: &[String]) -> Result<RsyncStats> {
        let mut cmd = Command::new("rsync");
        cmd.arg("-a").arg("--stats");
        for e in excludes {
            cmd.arg(format!("--exclude=/{e}"));
        }
        cmd.arg(format!("{}/", src.display())).arg(format!(
            "rsync://127.0.0.1:{}/{}/{sub}/",
            self.port,
            Self::MODULE
        ));
        let out = run(&mut cmd, "rsync -a")?;
        RsyncStats::parse(&out).with_context(|| format!("no --stats in rsync's output: {out}"))
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's uid and gid, from /proc (no libc call needed).
fn own_ids() -> Result<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self")?;
    let id = |key: &str| -> Option<u32> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Ok((
        id("Uid:").context("no Uid in /proc/self/status")?,
        id("Gid:").context("no Gid in /proc/self/status")?,
    ))
}

/// `tar -C SRC --exclude=./X -cf - . | zstd -1 | zstd -d | tar -C DST -xf -`, failing if any
/// part of the pipeline fails.
pub fn tar_pipeline(src: &Path, dst: &Path, excludes: &[String]) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let excl: String = excludes
        .iter()
        .map(|e| format!(" --exclude=./{}", shell_quote(e)))
        .collect();
    let script = format!(
        "set -o pipefail; tar -C {src}{excl} -cf - . | zstd -1 -q -c | zstd -d -q -c | tar -C {dst} -xf -",
        src = shell_quote(&src.to_string_lossy()),
        dst = shell_quote(&dst.to_string_lossy()),
    );
    run(
        Command::new("bash").arg("-c").arg(&script),
        "the tar pipeline",
    )
    .map(drop)
}

/// `cp -a SRC/A SRC/B ... DST/` for the top-level entries `entries`.
pub fn cp_a(src: &Path, dst: &Path, entries: &[String]) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut cmd = Command::new("cp");
    cmd.arg("-a");
    for e in entries {
        cmd.arg(src.join(e));
    }
    cmd.arg(format!("{}/", dst.display()));
    run(&mut cmd, "cp -a").map(drop)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
