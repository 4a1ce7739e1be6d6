//! Machines and what providers they offer.

use serde::{Deserialize, Serialize};

use crate::{MachineId, Millis};

/// Where a provider's credentials come from on a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthState {
    /// A credential stored (encrypted) in the account and passed to the CLI by the daemon.
    ConnectedService,
    /// The provider's own login on this machine.
    MachineLocal,
    /// No credentials found.
    Missing,
}

/// Whether Baton can hand off this provider's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffSupport {
    /// Tested and supported.
    Supported,
    /// Allowed, flagged to the user.
    Experimental,
    /// Refused with `provider_unsupported`.
    Unsupported,
}

/// How the detected CLI version relates to the versions Baton's adapter was tested against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionCheck {
    /// Within the tested range.
    #[default]
    Tested,
    /// Outside the tested range; handoff is allowed with a warning.
    Untested,
    /// Its state format is known to differ; handoff is refused with `agent_version_unsupported`.
    Incompatible,
}

/// One provider as detected on a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Provider name (`scripted`, `claude`, `codex`, `opencode`).
    pub name: String,
    /// True when the provider's CLI was found.
    pub installed: bool,
    /// The CLI's reported version, when installed.
    pub version: Option<String>,
    /// Where its credentials come from.
    pub auth: AuthState,
    /// Handoff support level.
    pub handoff: HandoffSupport,
    /// How the version relates to the tested range.
    #[serde(default)]
    pub version_check: VersionCheck,
}

/// A conversation found in a provider's own files on a machine (`baton provider-sessions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSessionInfo {
    /// Provider name.
    pub provider: String,
    /// The provider's own session id.
    pub provider_ref: String,
    /// Title, or the first prompt, when known.
    pub title: Option<String>,
    /// Absolute workspace path the conversation ran in.
    pub cwd: String,
    /// Last change, in milliseconds since the epoch.
    pub updated_at: Millis,
}

/// What an enrolled member of an account is: a machine running `baton daemon` (and the CLI),
/// or a browser enrolled for the web UI, which runs no sessions and never owns one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineKind {
    /// A machine with a daemon and the CLI.
    #[default]
    Daemon,
    /// A browser enrolled for the web UI.
    Browser,
}

impl MachineKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daemon => "daemon",
            Self::Browser => "browser",
        }
    }

    /// Parses [`MachineKind::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daemon" => Some(Self::Daemon),
            "browser" => Some(Self::Browser),
            _ => None,
        }
    }
}

/// A machine as shown to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Machine id.
    pub id: MachineId,
    /// Name, unique within the account.
    pub name: String,
    /// True while its daemon holds a WebSocket to the server.
    pub online: bool,
    /// Last time the server heard from its daemon.
    pub last_seen: Option<Millis>,
    /// Providers its daemon last reported.
    pub providers: Vec<ProviderInfo>,
    /// A daemon machine or an enrolled browser.
    #[serde(default)]
    pub kind: MachineKind,
}
