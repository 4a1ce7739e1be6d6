//! The pinned provider CLIs (claude, codex, opencode), installed once with `npm ci` from this crate's
//! `npm/package-lock.json` into a cache directory shared by every test process.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PACKAGE_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/npm/package.json");
const PACKAGE_LOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/npm/package-lock.json");
/// Written after a successful `npm ci`; its absence means the directory may hold a half-done install.
const MARKER: &str = ".baton-installed";
/// The binaries and the npm package each one comes from (its pinned version is read from package.json).
const BINARIES: [(&str, &str); 3] = [
    ("claude", "@anthropic-ai/claude-code"),
    ("codex", "@openai/codex"),
    ("opencode", "opencode-ai"),
];
const NPM_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// The pinned provider CLIs, installed.
#[derive(Debug, Clone)]
pub struct Clis {
    /// Directory holding `claude`, `codex` and `opencode` (`<cache>/node_modules/.bin`).
    pub bin_dir: PathBuf,
}

impl Clis {
    /// Absolute path of one CLI (`"claude"`, `"codex"`, `"opencode"`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A PATH value with `bin_dir` first, then the current PATH.
    pub fn path_var(&self) -> OsString {
        let mut dirs = vec![self.bin_dir.clone()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        // Only fails for a directory containing ':'; fall back to the bin dir alone rather than lose it.
        std::env::join_paths(dirs).unwrap_or_else(|_| self.bin_dir.clone().into_os_string())
    }
}

/// Installs the CLIs once (npm ci of crates/baton-testkit/npm/{package.json,package-lock.json} into a cache dir,
/// under an exclusive file lock so parallel tests/processes don't race; reused afterwards). Returns None after
/// printing the reason when npm is absent or the install fails — unless BATON_REQUIRE_PROVIDERS=1, then panics.
/// Blocking; call from sync code or spawn_blocking.
pub fn require() -> Option<Clis> {
    static CLIS: OnceLock<Option<Clis>> = OnceLock::new();
    CLIS.get_or_init(|| match install() {
        Ok(clis) => Some(clis),
        Err(reason) => {
            if std::env::var("BATON_REQUIRE_PROVIDERS").is_ok_and(|v| v == "1") {
                panic!("provider CLIs unavailable and BATON_REQUIRE_PROVIDERS=1: {reason}");
            }
            eprintln!("skipping: provider CLIs unavailable: {reason}");
            None
        }
    })
    .clone()
}

/// The directory the CLIs are installed into.
pub fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("BATON_PROVIDER_CLIS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    };
    Ok(target.join("provider-clis").join(lock_hash()?))
}

/// First 12 hex digits of SHA-256 over package.json and the lockfile: a new pin gets a new directory.
fn lock_hash() -> Result<String, String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for file in [PACKAGE_JSON, PACKAGE_LOCK] {
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
        h.update(&bytes);
    }
    Ok(h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn pinned_versions() -> Result<Vec<(&'static str, String)>, String> {
    let text = std::fs::read_to_string(PACKAGE_JSON)
        .map_err(|e| format!("cannot read {PACKAGE_JSON}: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{PACKAGE_JSON} is not JSON: {e}"))?;
    BINARIES
        .iter()
        .map(|(bin, pkg)| {
            let version = json
                .pointer(&format!("/dependencies/{}", pkg.replace('/', "~1")))
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("{PACKAGE_JSON} pins no version of {pkg}"))?;
            Ok((*bin, version.to_owned()))
        })
        .collect()
}

fn install() -> Result<Clis, String> {
    let dir = cache_dir()?;
    let parent = dir
        .parent()
        .ok_or_else(|| format!("cache dir {} has no parent", dir.display()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let lock_path = PathBuf::from(format!("{}.lock", dir.display()));
    let _lock = FileLock::exclusive(&lock_path)?;
    let clis = Clis {
        bin_dir: dir.join("node_modules/.bin"),
    };
    let versions = pinned_versions()?;
    if dir.join(MARKER).exists() && verify(&clis, &dir, &versions).is_ok() {
        return Ok(clis);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // A marker from an earlier install must not vouch for whatever this attempt leaves behind.
    let _ = std::fs::remove_file(dir.join(MARKER));
    for (src, name) in [
        (PACKAGE_JSON, "package.json"),
        (PACKAGE_LOCK, "package-lock.json"),
    ] {
        std::fs::copy(src, dir.join(name))
            .map_err(|e| format!("cannot copy {src} into {}: {e}", dir.display()))?;
    }
    eprintln!(
        "installing the pinned provider CLIs into {} (npm ci, about 20 s)",
        dir.display()
    );
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    let out = run_with_timeout(&mut cmd, NPM_TIMEOUT).map_err(|e| format!("npm ci: {e}"))?;
    if !out.success {
        return Err(format!(
            "npm ci failed ({}); stderr ends with:\n{}",
            out.status,
            tail(&out.stderr, 20)
        ));
    }
    verify(&clis, &dir, &versions)?;
    std::fs::write(dir.join(MARKER), "ok\n")
        .map_err(|e| format!("cannot write the install marker: {e}"))?;
    Ok(clis)
}

/// Checks that every binary runs and reports its pinned version.
fn verify(clis: &Clis, dir: &Path, versions: &[(&str, String)]) -> Result<(), String> {
    // A scratch HOME so a version probe cannot touch the real user's provider state.
    let home = dir.join("version-probe-home");
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    // In parallel: `opencode --version` alone takes several seconds, and every test process pays this once.
    std::thread::scope(|scope| {
        let probes: Vec<_> = versions
            .iter()
            .map(|(bin, version)| {
                let home = &home;
                scope.spawn(move || {
                    let mut cmd = Command::new(clis.path(bin));
                    cmd.arg("--version")
                        .env("HOME", home)
                        .env("PATH", clis.path_var());
                    for var in crate::rig::ISOLATE {
                        cmd.env_remove(var);
                    }
                    let out = run_with_timeout(&mut cmd, VERSION_TIMEOUT)
                        .map_err(|e| format!("{bin} --version: {e}"))?;
                    if !out.success || !out.stdout.contains(version.as_str()) {
                        return Err(format!(
                            "{bin} --version printed {:?} ({}), expected {version}; stderr: {}",
                            out.stdout.trim(),
                            out.status,
                            tail(&out.stderr, 5)
                        ));
                    }
                    Ok(())
                })
            })
            .collect();
        probes.into_iter().try_for_each(|p| {
            p.join()
                .unwrap_or_else(|_| Err("version probe panicked".to_owned()))
        })
    })
}

struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion with stdin closed, killing its process group when it overruns.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("not found on PATH ({e})")
        } else {
            e.to_string()
        }
    })?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe while we wait.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out_t = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_t = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                // Negative pid: the whole group, so npm's children (postinstall scripts) go too.
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) with a process-group id we created; no memory is involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.wait();
                return Err(format!("timed out after {} s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("wait failed: {e}")),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An exclusive `flock` held until drop (the kernel also releases it if the process dies).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
        loop {
            // SAFETY: flock(2) on a file descriptor owned by `file`, which outlives the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("cannot lock {}: {err}", path.display()));
            }
        }
    }
}
