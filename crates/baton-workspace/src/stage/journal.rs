//! The staging journal: a header naming the manifest (its digest), then one 32-byte record per
//! chunk written at all its places. Append-only, so a crash loses at most the records not yet
//! written out (appends are buffered), and those chunks are simply asked for again.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use baton_proto::workspace::{ContentHash, WorkspaceManifest};

use crate::error::{Result, io_err};
use crate::fsutil::fsync_dir;

const NAME: &str = "journal";
const MAGIC: &[u8] = b"baton-staging-journal v2\n";
const HEADER: usize = MAGIC.len() + 32;
/// Records buffered before they are written out: one write per 128 chunks rather than per chunk.
const BUFFERED: usize = 128;

/// The manifest's digest ([`crate::digest`]): ties a journal to the manifest it was written for.
pub(super) fn manifest_digest(m: &WorkspaceManifest) -> [u8; 32] {
    crate::delta::digest(m).0
}

/// An open journal, positioned for appending. Records are buffered, and written out every
/// [`BUFFERED`] appends, by [`Journal::flush`], and on drop.
pub(super) struct Journal {
    file: BufWriter<File>,
    path: PathBuf,
}

impl Journal {
    /// Writes a journal for `digest` listing `written`, replacing any journal atomically.
    pub(super) fn write(
        dir: &Path,
        digest: &[u8; 32],
        written: impl Iterator<Item = ContentHash>,
    ) -> Result<Self> {
        let path = dir.join(NAME);
        let tmp = dir.join(format!("{NAME}.tmp"));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        // Streamed: a big tree's journal holds hundreds of thousands of records.
        let mut out = BufWriter::with_capacity(64 * 1024, f);
        let mut put = |bytes: &[u8]| out.write_all(bytes).map_err(io_err("write", &tmp));
        put(MAGIC)?;
        put(digest)?;
        for h in written {
            put(h.as_bytes())?;
        }
        let f = out
            .into_inner()
            .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        fsync_dir(dir).map_err(io_err("sync", dir))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Ok(Self::appending(file, path))
    }

    fn appending(file: File, path: PathBuf) -> Self {
        Self {
            file: BufWriter::with_capacity(BUFFERED * 32, file),
            path,
        }
    }

    /// The journal in `dir` if it was written for `digest`, with the chunks it records; `None`
    /// when there is none or it belongs to another manifest.
    pub(super) fn open(
        dir: &Path,
        digest: &[u8; 32],
    ) -> Result<Option<(Self, HashSet<ContentHash>)>> {
        let path = dir.join(NAME);
        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        if bytes.len() < HEADER
            || &bytes[..MAGIC.len()] != MAGIC
            || &bytes[MAGIC.len()..HEADER] != digest
        {
            return Ok(None);
        }
        let body = &bytes[HEADER..];
        let whole = body.len() / 32 * 32;
        if whole != body.len() {
            // A record cut short by a crash; drop it so later appends stay aligned.
            file.set_len((HEADER + whole) as u64)
                .map_err(io_err("truncate", &path))?;
        }
        let written = body[..whole]
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                ContentHash(h)
            })
            .collect();
        Ok(Some((Self::appending(file, path), written)))
    }

    /// Records one chunk as written everywhere; call it only once the chunk's data is written.
    /// Buffered and not fsynced: the record only spares a resend, and `finish` verifies every
    /// file whatever the journal says.
    pub(super) fn append(&mut self, hash: &ContentHash) -> Result<()> {
        self.file
            .write_all(hash.as_bytes())
            .map_err(io_err("write", &self.path))
    }

    /// Writes out the buffered records (not fsynced).
    pub(super) fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(io_err("write", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_only_for_its_manifest_and_drops_a_torn_record() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut j = Journal::write(t.path(), &a, [ContentHash([9; 32])].into_iter()).unwrap();
        j.append(&ContentHash([8; 32])).unwrap();
        j.flush().unwrap();
        j.file.get_mut().write_all(&[0; 5]).unwrap();
        drop(j);
        assert!(Journal::open(t.path(), &b).unwrap().is_none());
        let (mut j, seen) = Journal::open(t.path(), &a).unwrap().unwrap();
        assert_eq!(seen.len(), 2);
        j.append(&ContentHash([7; 32])).unwrap();
        drop(j);
        let (_, seen) = Journal::open(t.path(), &a).unwrap().unwrap();
        assert!(seen.contains(&ContentHash([7; 32])) && seen.len() == 3);
    }

    fn on_disk(dir: &Path) -> usize {
        (fs::metadata(dir.join(NAME)).unwrap().len() as usize - HEADER) / 32
    }

    #[test]
    fn appends_are_buffered_until_flushed_full_or_dropped() {
        let t = tempfile::tempdir().unwrap();
        let mut j = Journal::write(t.path(), &[1; 32], std::iter::empty()).unwrap();
        for i in 0..BUFFERED - 1 {
            j.append(&ContentHash([i as u8; 32])).unwrap();
        }
        assert_eq!(on_disk(t.path()), 0, "one write per chunk");
        j.append(&ContentHash([200; 32])).unwrap();
        j.append(&ContentHash([201; 32])).unwrap();
        assert!(
            on_disk(t.path()) >= BUFFERED,
            "a full buffer is written out"
        );
        j.append(&ContentHash([202; 32])).unwrap();
        j.flush().unwrap();
        assert_eq!(on_disk(t.path()), BUFFERED + 2);
        j.append(&ContentHash([203; 32])).unwrap();
        drop(j);
        let (_, seen) = Journal::open(t.path(), &[1; 32]).unwrap().unwrap();
        assert_eq!(seen.len(), BUFFERED + 3);
    }
}
