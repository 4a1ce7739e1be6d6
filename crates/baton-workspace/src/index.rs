//! What a machine already holds, chunk by chunk: the target uses it to skip chunks it has (delta
//! transfer), the source to serve chunks by hash.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use baton_proto::workspace::{ChunkParams, ContentHash, WorkspaceManifest};

use crate::chunk::hash_bytes;
use crate::scan::Scanned;

/// Where one chunk can be read: a file of an indexed tree, an offset and a length.
#[derive(Clone, Copy, Debug)]
struct Location {
    file: u32,
    offset: u64,
    len: u32,
}

/// Chunk hash → a place on this machine holding those bytes. Built from scans made with the
/// same chunk parameters; every read is verified, so a file changed since is simply a miss.
#[derive(Debug)]
pub struct ChunkIndex {
    params: ChunkParams,
    roots: Vec<PathBuf>,
    files: Vec<(u32, String)>,
    map: HashMap<ContentHash, Location>,
}

impl ChunkIndex {
    /// An empty index for chunks cut with `params`.
    pub fn new(params: ChunkParams) -> Self {
        Self {
            params,
            roots: Vec::new(),
            files: Vec::new(),
            map: HashMap::new(),
        }
    }

    /// An index of one scanned tree.
    pub fn from_scan(scanned: &Scanned) -> Self {
        let mut idx = Self::new(scanned.manifest.params);
        idx.add(scanned.root(), &scanned.manifest);
        idx
    }

    /// Adds the chunks of `manifest`, a scan of `root`. Returns false (and adds nothing) when the
    /// manifest was cut with other parameters, since none of its chunks could match.
    pub fn add(&mut self, root: &Path, manifest: &WorkspaceManifest) -> bool {
        if manifest.params != self.params {
            return false;
        }
        let Ok(r) = u32::try_from(self.roots.len()) else {
            return false;
        };
        self.roots.push(root.to_path_buf());
        for (entry, data) in manifest.files() {
            let Ok(file) = u32::try_from(self.files.len()) else {
                break;
            };
            let mut offset = 0u64;
            let mut used = false;
            for c in &data.chunks {
                self.map.entry(c.hash).or_insert_with(|| {
                    used = true;
                    Location {
                        file,
                        offset,
                        len: c.len,
                    }
                });
                offset += u64::from(c.len);
            }
            if used {
                self.files.push((r, entry.path.clone()));
            }
        }
        true
    }

    /// The parameters chunks were cut with.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// True when the chunk is indexed (it may still turn out stale when read).
    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.map.contains_key(hash)
    }

    /// Number of distinct chunks indexed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Reads the chunk into `buf` (replacing its contents) and checks its BLAKE3. False when the
    /// chunk is not indexed, its file is gone, or its bytes changed since the scan.
    pub fn read_into(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> bool {
        let Some(loc) = self.map.get(hash) else {
            return false;
        };
        let (root, rel) = &self.files[loc.file as usize];
        let path = self.roots[*root as usize].join(rel);
        let Ok(file) = open_nofollow(&path) else {
            return false;
        };
        buf.clear();
        buf.resize(loc.len as usize, 0);
        file.read_exact_at(buf, loc.offset).is_ok() && hash_bytes(buf) == *hash
    }

    /// The chunk's bytes, verified; `None` as for [`ChunkIndex::read_into`].
    pub fn read(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(hash, &mut buf).then_some(buf)
    }
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}
