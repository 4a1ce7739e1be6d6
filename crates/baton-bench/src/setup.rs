//! What every benchmark needs around its measurements: the `baton` binary to run (built first,
//! so figures belong to the code in the tree), where figures go, and the state of the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The cargo profile a binary in `dir` was built with, when `dir` is a cargo profile directory
/// (`target/release`, `target/debug`, …).
pub fn cargo_profile_of(dir: &Path) -> Option<String> {
    if !dir.join(".fingerprint").is_dir() {
        return None;
    }
    let name = dir.file_name()?.to_str()?;
    // The dev profile's directory is called `debug`.
    Some(if name == "debug" { "dev" } else { name }.to_string())
}

/// The `baton` binary to benchmark, and how it was found (for the report).
pub struct BatonBinary {
    /// The binary.
    pub path: PathBuf,
    /// Cargo profile it was built with, when known.
    pub profile: Option<String>,
}

/// Finds the `baton` binary. By default it is the one beside this executable, and it is first
/// built with the same profile: a benchmark of a stale binary would report figures for code that
/// no longer exists, and an up-to-date build costs cargo about a second. (`cargo run` has
/// released the build lock before it starts this program, so the nested build does not wait on
/// it; another build in progress only makes it wait.)
/// `baton` is the `--baton` option, `no_build` the `--no-build` flag.
pub fn locate_baton(baton: Option<&Path>, no_build: bool) -> Result<BatonBinary> {
    if let Some(p) = baton {
        let path = std::fs::canonicalize(p)
            .with_context(|| format!("--baton {}: no such file", p.display()))?;
        let profile = path.parent().and_then(cargo_profile_of);
        return Ok(BatonBinary { path, profile });
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let path = dir.join("baton");
    let profile = cargo_profile_of(&dir);
    match (&profile, no_build) {
        (Some(profile), false) => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
            eprintln!(
                "Bringing {} up to date: cargo build --profile {profile} -p baton-cli",
                path.display()
            );
            let mut build = Command::new(&cargo);
            build
                .args([
                    "build",
                    "--profile",
                    profile,
                    "-p",
                    "baton-cli",
                    "--bin",
                    "baton",
                ])
                .arg("--manifest-path")
                .arg(&manifest);
            // `cargo run` gives this program the variables cargo sets for a crate (CARGO_PKG_NAME
            // = baton-bench, ...). Build scripts watch some of them (ring's and cc's ask to rerun
            // when they change), so passing them on would rebuild ring, rustls and everything
            // above them here, and again at the user's next plain build.
            for (key, _) in std::env::vars_os() {
                let Some(k) = key.to_str() else { continue };
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_CFG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        k,
                        "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                    )
                {
                    build.env_remove(&key);
                }
            }
            let status = build.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build --profile {profile} -p baton-cli failed ({status})");
            }
        }
        _ if !path.is_file() => bail!(
            "{} does not exist; build it with `cargo build --release -p baton-cli` or pass --baton PATH",
            path.display()
        ),
        _ => {}
    }
    if !path.is_file() {
        bail!("{} does not exist after the build", path.display());
    }
    Ok(BatonBinary { path, profile })
}

/// Where a benchmark's JSON goes by default: `bench/FILE` in the workspace's target directory.
pub fn default_out(file: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let target = std::fs::canonicalize(&target).unwrap_or(target);
    target.join("bench").join(file)
}

/// The 1-minute load average (Linux), to tell a quiet machine's figures from a busy one's.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cargo profile this benchmark binary was built with, when known.
pub fn bench_profile() -> Option<String> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(cargo_profile_of))
}

/// The `cargo run` profile option that reproduces a run of a benchmark built with `profile`.
pub fn profile_flag(profile: Option<&str>) -> String {
    match profile {
        Some("release") | None => " --release".to_string(),
        Some("dev") => String::new(),
        Some(p) => format!(" --profile {p}"),
    }
}

/// Writes `report` as pretty JSON to `out`, creating its directory.
pub fn write_json(out: &Path, report: &serde_json::Value) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", out.display()))
}

/// The line every benchmark prints about what ran where: the `baton` binary and its build, the
/// CPUs, and the load average before and after (`competing` names what the load competed with).
pub fn machine_line(
    baton: &BatonBinary,
    load_before: Option<f64>,
    load_after: Option<f64>,
    competing: &str,
) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.2}"));
    format!(
        "baton: {} ({} build); {cpus} CPUs, 1-min load average {} before and {} after (other processes compete with {competing}).",
        baton.path.display(),
        baton.profile.as_deref().unwrap_or("unknown"),
        load(load_before),
        load(load_after)
    )
}
