//! The `opencode` provider: drives the OpenCode CLI (`opencode-ai` on npm, tested with 1.18.33)
//! headless, one `opencode run --format json` process per turn, and moves its sessions between
//! machines through `opencode export` / `opencode import` with the absolute paths inside the
//! exported JSON rewritten for the target (providers.md §4, §6).
//!
//! OpenCode keeps its state in a SQLite database (`<data>/opencode/opencode.db`) that is never
//! copied: it also holds other sessions and credentials. The export JSON is the portable form.

mod adapter;
mod cli;
mod config;
mod library;
mod session;
mod state;

pub use adapter::OpenCodeProvider;
pub use state::{ExportCompare, compare_exports, rewrite_export};

use baton_proto::VersionCheck;

use crate::files::workspace_str;
use crate::{ProviderError, Result};

/// Provider name.
pub const NAME: &str = "opencode";

/// Name of the CLI binary.
pub const BIN: &str = "opencode";

/// Provider-state bundle format written and accepted.
const BUNDLE_FORMAT: u32 = 1;

/// Directory of bundle files (relative to the provider's state, as bundles name them).
const BUNDLE_DIR: &str = "opencode";

/// Whether `id` looks like an OpenCode id with `prefix` (`ses`, `msg`, `prt`): `<prefix>_`, 12
/// hex digits of time, then base62 characters (26 after the prefix in 1.18). Ids end up in file
/// names and SQL literals, so nothing else is accepted.
fn is_valid_id(prefix: &str, id: &str) -> bool {
    let Some(rest) = id.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    // All ASCII first, so that slicing at 12 is on a char boundary.
    (20..=40).contains(&rest.len())
        && rest.chars().all(|c| c.is_ascii_alphanumeric())
        && rest[..12].chars().all(|c| c.is_ascii_hexdigit())
}

/// Refuses anything that is not a `ses_…` id.
fn check_ref(provider_ref: &str) -> Result<()> {
    if is_valid_id("ses", provider_ref) {
        Ok(())
    } else {
        Err(ProviderError::InvalidBundle(format!(
            "invalid OpenCode session id {provider_ref:?} (want ses_…)"
        )))
    }
}

/// How a reported version relates to the tested one.
///
/// What is known: 1.18.33 was exercised end to end (run, export, import, resume). 1.18 keeps
/// sessions in SQLite and `export`/`import` move them as `{info, messages:[{info, parts}]}` JSON;
/// earlier releases kept JSON files under `<data>/opencode/storage/{session,message,part}/` and
/// migrated them into the database on first start. Exactly which release introduced the
/// database and the `opencode db` command this adapter queries was not measured; 1.14 is the
/// oldest we believe has both, so older releases (and 0.x) are treated as incompatible and
/// other 1.x as untested. A different major version may change anything: untested, not refused,
/// since the export JSON is OpenCode's own portable format.
fn version_check(version: &str) -> VersionCheck {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u64>().ok());
    match (major, minor) {
        (Some(1), Some(18)) => VersionCheck::Tested,
        (Some(1), Some(m)) if m >= 14 => VersionCheck::Untested,
        (Some(0 | 1), Some(_)) => VersionCheck::Incompatible,
        _ => VersionCheck::Untested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("ses", "ses_def1b3a23ffecFm2f0UV4BVMo2"));
        assert!(is_valid_id("msg", "msg_210e4cbc3001gnBAAZlkYNtwst"));
        assert!(!is_valid_id("ses", "msg_210e4cbc3001gnBAAZlkYNtwst"));
        assert!(!is_valid_id("ses", "ses_"));
        assert!(!is_valid_id("ses", "ses_zzzzzzzzzzzzFm2f0UV4BVMo2"));
        assert!(!is_valid_id("ses", "ses_def1b3a23ffec'; drop table x"));
        assert!(!is_valid_id("ses", "ses_def1b3a23ffec/../../x0000"));
        assert!(check_ref("0b9c1f0e-baton-id").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(version_check("1.18.33"), VersionCheck::Tested);
        assert_eq!(version_check("1.18.0"), VersionCheck::Tested);
        assert_eq!(version_check("1.19.2"), VersionCheck::Untested);
        assert_eq!(version_check("1.14.0"), VersionCheck::Untested);
        assert_eq!(version_check("1.13.9"), VersionCheck::Incompatible);
        assert_eq!(version_check("0.15.8"), VersionCheck::Incompatible);
        assert_eq!(version_check("2.0.0"), VersionCheck::Untested);
        assert_eq!(version_check("garbage"), VersionCheck::Untested);
    }
}
