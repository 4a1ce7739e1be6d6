//! This machine's enrolment, kept in `BATON_HOME`: `config.json` (server URL, ids, name) and the
//! key file `keys.json` (mode 0600: machine keys and the account secret).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use baton_crypto::{AccountSecret, MachineKeys};
use baton_proto::{AccountId, MachineId};
use serde::{Deserialize, Serialize};

/// Errors reading or writing the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No enrolment in this BATON_HOME.
    #[error(
        "this machine is not logged in (no {0}); run `baton login --server URL --name NAME` first"
    )]
    NotLoggedIn(PathBuf),
    /// A file is unreadable or malformed.
    #[error("{path}: {detail}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// File I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> IdentityError {
    let context = context.into();
    move |source| IdentityError::Io { context, source }
}

/// Non-secret enrolment facts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Server base URL, as given at login.
    pub server: String,
    /// Account.
    pub account_id: AccountId,
    /// This machine.
    pub machine_id: MachineId,
    /// This machine's name.
    pub name: String,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    machine_keys: String,
    account_secret: String,
}

/// Everything this machine needs to act in its account.
pub struct Identity {
    /// Enrolment facts.
    pub config: Config,
    /// Machine keys.
    pub keys: MachineKeys,
    /// The account secret.
    pub secret: AccountSecret,
}

/// The default BATON_HOME: `$BATON_HOME`, else the platform's config dir + `baton`.
pub fn default_baton_home() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_HOME") {
        return PathBuf::from(p);
    }
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("baton")
}

/// Writes `bytes` to `path` atomically (temp file in the same dir, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl Identity {
    /// Loads the identity from `baton_home`.
    pub fn load(baton_home: &Path) -> Result<Self, IdentityError> {
        let config_path = baton_home.join("config.json");
        let keys_path = baton_home.join("keys.json");
        if !config_path.exists() || !keys_path.exists() {
            return Err(IdentityError::NotLoggedIn(config_path));
        }
        let corrupt = |path: &Path, detail: String| IdentityError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let config: Config = serde_json::from_slice(
            &std::fs::read(&config_path)
                .map_err(io(format!("reading {}", config_path.display())))?,
        )
        .map_err(|e| corrupt(&config_path, e.to_string()))?;
        let kf: KeyFile = serde_json::from_slice(
            &std::fs::read(&keys_path).map_err(io(format!("reading {}", keys_path.display())))?,
        )
        .map_err(|e| corrupt(&keys_path, e.to_string()))?;
        let mk = STANDARD
            .decode(kf.machine_keys)
            .map_err(|e| corrupt(&keys_path, e.to_string()))?;
        let keys = MachineKeys::from_bytes(&mk).map_err(|e| corrupt(&keys_path, e.to_string()))?;
        let sb: [u8; 32] = STANDARD
            .decode(kf.account_secret)
            .map_err(|e| corrupt(&keys_path, e.to_string()))?
            .try_into()
            .map_err(|_| corrupt(&keys_path, "account secret is not 32 bytes".into()))?;
        Ok(Self {
            config,
            keys,
            secret: AccountSecret::from_bytes(sb),
        })
    }

    /// Saves the identity into `baton_home` (keys with mode 0600).
    pub fn save(&self, baton_home: &Path) -> Result<(), IdentityError> {
        std::fs::create_dir_all(baton_home)
            .map_err(io(format!("creating {}", baton_home.display())))?;
        let kf = KeyFile {
            machine_keys: STANDARD.encode(self.keys.to_bytes()),
            account_secret: STANDARD.encode(self.secret.to_bytes()),
        };
        let keys_json = serde_json::to_vec_pretty(&kf).map_err(|e| IdentityError::Corrupt {
            path: baton_home.join("keys.json"),
            detail: e.to_string(),
        })?;
        write_atomic(&baton_home.join("keys.json"), &keys_json, 0o600)
            .map_err(io("writing keys.json"))?;
        let config_json =
            serde_json::to_vec_pretty(&self.config).map_err(|e| IdentityError::Corrupt {
                path: baton_home.join("config.json"),
                detail: e.to_string(),
            })?;
        write_atomic(&baton_home.join("config.json"), &config_json, 0o600)
            .map_err(io("writing config.json"))?;
        Ok(())
    }
}
