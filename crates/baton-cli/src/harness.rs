//! Real processes on one computer: a server and several "machines", each a daemon with its own
//! HOME and BATON_HOME, driven through the real `baton` binary. Used by `baton demo`, the
//! end-to-end tests and the benchmarks, so all three exercise exactly what a user runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// One enrolled machine.
pub struct Machine {
    /// Machine name.
    pub name: String,
    /// Its `$HOME`.
    pub home: PathBuf,
    /// Its `BATON_HOME`.
    pub baton_home: PathBuf,
    /// Extra environment for its daemon.
    pub daemon_env: Vec<(String, String)>,
    /// Extra arguments for its daemon.
    pub daemon_args: Vec<String>,
    daemon: Option<Child>,
}

impl Machine {
    /// The daemon's process id while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }
}

/// A server and machines, all child processes, removed on drop.
pub struct Cluster {
    exe: PathBuf,
    root: PathBuf,
    server: Option<Child>,
    server_args: Vec<String>,
    /// Server URL.
    pub url: String,
    /// Enrolled machines.
    pub machines: Vec<Machine>,
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn stop_child(mut child: Child, grace: Duration) {
    signal(&child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Cluster {
    /// Starts a server on a free loopback port with its data under `root/server`.
    pub fn start(exe: &Path, root: &Path) -> Result<Self> {
        Self::start_with(exe, root, Vec::new())
    }

    /// Starts a server with extra arguments (e.g. `--database-url`).
    pub fn start_with(exe: &Path, root: &Path, extra: Vec<String>) -> Result<Self> {
        std::fs::create_dir_all(root.join("logs"))?;
        let mut c = Self {
            exe: exe.to_path_buf(),
            root: root.to_path_buf(),
            server: None,
            server_args: extra,
            url: String::new(),
            machines: Vec::new(),
        };
        c.start_server("127.0.0.1:0")?;
        Ok(c)
    }

    /// The directory everything lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The server's process id while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Path of a process's log file.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }

    fn start_server(&mut self, listen: &str) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path("server"))?;
        let mut child = Command::new(&self.exe)
            .arg("server")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(self.root.join("server"))
            .args(&self.server_args)
            .env("BATON_LOG", "info,baton_server=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawning baton server")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no server stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| {
                anyhow!(
                    "the server did not start (see {}): {line:?}",
                    self.log_path("server").display()
                )
            })?
            .to_string();
        self.url = url;
        self.server = Some(child);
        Ok(())
    }

    /// SIGKILLs the server.
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    /// Starts the server again on the same address (after [`Cluster::kill_server`]).
    pub fn restart_server(&mut self) -> Result<()> {
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.start_server(&addr) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "server restart retry");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `baton ARGS` as machine `idx` and returns its output.
    pub fn baton(&self, idx: usize, args: &[&str]) -> Result<Output> {
        let m = &self.machines[idx];
        Command::new(&self.exe)
            .args(args)
            .env("HOME", &m.home)
            .env("BATON_HOME", &m.baton_home)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running baton {args:?}"))
    }

    /// Runs `baton --json ARGS` as machine `idx`; fails unless it exits 0; parses stdout.
    pub fn json(&self, idx: usize, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.baton(idx, &full)?;
        if !out.status.success() {
            bail!(
                "baton {args:?} on {} failed ({}): {}{}",
                self.machines[idx].name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing the output of baton {args:?}"))
    }

    /// Enrols a machine: the first creates the account, later ones join by pairing code.
    /// Its scripted agent is logged in unless `login_agent` is false.
    pub fn add_machine(&mut self, name: &str, login_agent: bool) -> Result<usize> {
        let base = self.root.join(name);
        let home = base.join("home");
        let baton_home = base.join("baton");
        std::fs::create_dir_all(&home)?;
        self.machines.push(Machine {
            name: name.to_string(),
            home: home.clone(),
            baton_home,
            daemon_env: Vec::new(),
            daemon_args: Vec::new(),
            daemon: None,
        });
        let idx = self.machines.len() - 1;
        let url = self.url.clone();
        if idx == 0 {
            self.json(idx, &["login", "--server", &url, "--name", name])?;
        } else {
            let pair = self.json(0, &["pair"])?;
            let code = pair["code"]
                .as_str()
                .ok_or_else(|| anyhow!("pair gave no code: {pair}"))?
                .to_string();
            self.json(
                idx,
                &["login", "--server", &url, "--name", name, "--code", &code],
            )?;
        }
        if login_agent {
            let out = self.baton(idx, &["scripted-agent", "auth", "login"])?;
            if !out.status.success() {
                bail!("scripted-agent auth login failed on {name}");
            }
        }
        Ok(idx)
    }

    /// Enrols a machine in a new account of its own (for isolation tests).
    pub fn add_account(&mut self, name: &str) -> Result<usize> {
        let base = self.root.join(name);
        let home = base.join("home");
        std::fs::create_dir_all(&home)?;
        self.machines.push(Machine {
            name: name.to_string(),
            home,
            baton_home: base.join("baton"),
            daemon_env: Vec::new(),
            daemon_args: Vec::new(),
            daemon: None,
        });
        let idx = self.machines.len() - 1;
        let url = self.url.clone();
        self.json(idx, &["login", "--server", &url, "--name", name])?;
        Ok(idx)
    }

    /// Starts machine `idx`'s daemon.
    pub fn start_daemon(&mut self, idx: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&self.machines[idx].name))?;
        let m = &self.machines[idx];
        let child = Command::new(&self.exe)
            .args(["daemon", "--backoff-cap-ms", "1000"])
            .args(&m.daemon_args)
            .env("HOME", &m.home)
            .env("BATON_HOME", &m.baton_home)
            .env("BATON_LOG", "info,baton_daemon=debug")
            .envs(m.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning baton daemon")?;
        self.machines[idx].daemon = Some(child);
        Ok(())
    }

    /// Stops machine `idx`'s daemon (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_daemon(&mut self, idx: usize) {
        if let Some(c) = self.machines[idx].daemon.take() {
            stop_child(c, Duration::from_secs(5));
        }
    }

    /// SIGKILLs machine `idx`'s daemon.
    pub fn kill_daemon(&mut self, idx: usize) {
        if let Some(mut c) = self.machines[idx].daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every named machine shows `online` as wanted.
    pub fn wait_online(&self, names: &[&str], online: bool, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let list = self.json(0, &["machines"])?;
            let all = names.iter().all(|n| {
                list.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|m| m["name"] == *n && m["online"].as_bool() == Some(online))
                })
            });
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("machines {names:?} not online={online} after {timeout:?}: {list}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops everything (daemons first, then the server).
    pub fn shutdown(&mut self) {
        for i in 0..self.machines.len() {
            self.stop_daemon(i);
        }
        if let Some(s) = self.server.take() {
            stop_child(s, Duration::from_secs(5));
        }
    }

    /// Leaves the processes running (for `demo --keep-running`): forgets them.
    pub fn detach(mut self) {
        self.server = None;
        for m in &mut self.machines {
            m.daemon = None;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
