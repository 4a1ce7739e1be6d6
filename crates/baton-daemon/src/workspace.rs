//! The daemon's side of workspace transfer in a handoff (DESIGN §5): the source's read-only
//! check of what it would send. Scanning and hashing are blocking work and run on the blocking
//! pool, never on the executor.

use std::path::PathBuf;

use baton_proto::ws::DaemonReply;
use baton_proto::{ApiError, ErrorCode, HandoffId, Sealed, SessionRecord};
use baton_workspace::{ScanOptions, check_source, scan};

use crate::Daemon;
use crate::participant::{api, open_options};

/// Source, in preflight: refuses an unsafe workspace (`unsafe_workspace_path`: `/`, the home
/// directory, anything resolving to them, non-directories) before anything is stopped, then
/// measures the selection the ignored-files option gives, for the server's caps.
pub async fn check(
    d: &Daemon,
    handoff: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
) -> Result<DaemonReply, ApiError> {
    let cipher = d.client.cipher(session).map_err(api)?;
    let meta = cipher
        .open_meta(&session.sealed_meta)
        .map_err(|e| api(e.into()))?;
    let options = open_options(&cipher, handoff, sealed_options)?;
    let path = PathBuf::from(&meta.workspace);
    let home = d.home.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        let root = check_source(&path, Some(&home))?;
        let opts = ScanOptions {
            ignored: options.ignored,
            ..ScanOptions::default()
        };
        scan(&root, &opts, None)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("The scan stopped: {e}.")))?
    .map_err(|e| e.to_api())?;
    let manifest = &scanned.manifest;
    Ok(DaemonReply::WorkspaceChecked {
        files: manifest.file_count(),
        bytes: manifest.total_bytes(),
    })
}

/// Free space kept beyond the tree's bytes, so a transfer never fills a disk to the last block.
const SPACE_RESERVE: u64 = 16 * 1024 * 1024;

/// Target, in preflight: the destination (`--path`, else the source's path) must be a safe
/// place to create or fill (never `/` or the home directory), and its filesystem must hold the
/// selected bytes (`insufficient_space`), so neither problem is found half-way.
pub async fn check_destination(
    d: &Daemon,
    cipher: &baton_crypto::SessionCipher,
    handoff: HandoffId,
    meta: &baton_proto::SessionMeta,
    sealed_options: Option<&Sealed>,
    bytes: u64,
) -> Result<(), ApiError> {
    let options = open_options(cipher, handoff, sealed_options)?;
    let wanted = PathBuf::from(
        options
            .target_path
            .unwrap_or_else(|| meta.workspace.clone()),
    );
    let home = d.home.clone();
    tokio::task::spawn_blocking(move || {
        let dest = baton_workspace::check_destination(&wanted, Some(&home))?;
        // Staging is made beside the destination, so the space that counts is its parent's
        // filesystem (or the nearest ancestor that exists yet).
        let mut probe = dest.parent().unwrap_or(&dest).to_path_buf();
        while !probe.exists() {
            match probe.parent() {
                Some(p) => probe = p.to_path_buf(),
                None => break,
            }
        }
        let available =
            baton_workspace::available_bytes(&probe).map_err(|e| baton_workspace::Error::Io {
                action: "measure free space on",
                path: probe.clone(),
                source: e,
            })?;
        let needed = bytes.saturating_add(SPACE_RESERVE);
        if available < needed {
            return Err(baton_workspace::Error::InsufficientSpace {
                path: probe,
                needed,
                available,
            });
        }
        Ok(())
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("The check stopped: {e}.")))?
    .map_err(|e| e.to_api())
}
