//! What a machine already holds, chunk by chunk: the target uses it to skip chunks it has (delta
//! transfer), the source to serve chunks by hash.
//!
//! Every chunk read is proved to be the indexed bytes before it is returned: by its BLAKE3, or,
//! for a file indexed from a scan, by the file being provably the one the scan hashed (same
//! size, mtime, inode and ctime, and a ctime older than the scan's read by [`RACY_NS`]), the same
//! proof that lets a rescan reuse a file's hashes without reading it.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use baton_proto::workspace::{ChunkParams, ContentHash, WorkspaceManifest};

use crate::chunk::hash_bytes;
use crate::fsutil::{ctime_ns, mtime_ns};
use crate::scan::{LocalStat, RACY_NS, Scanned};

/// Where one chunk can be read: a file of an indexed tree, an offset and a length (16 bytes).
#[derive(Clone, Copy, Debug)]
struct Location {
    file: u32,
    len: u32,
    offset: u64,
}

/// What a scan saw of an indexed file, when that proves an unchanged file holds the bytes it
/// hashed (its change time was not racily close to the read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    mtime_ns: i64,
    dev: u64,
    ino: u64,
    ctime_ns: i64,
}

impl Seen {
    fn new(size: u64, mtime_ns: i64, local: &LocalStat) -> Option<Self> {
        (local.ctime_ns < local.read_ns.saturating_sub(RACY_NS)).then_some(Self {
            size,
            mtime_ns,
            dev: local.dev,
            ino: local.ino,
            ctime_ns: local.ctime_ns,
        })
    }

    fn unchanged(&self, md: &Metadata) -> bool {
        md.is_file()
            && md.len() == self.size
            && mtime_ns(md) == self.mtime_ns
            && md.dev() == self.dev
            && md.ino() == self.ino
            && ctime_ns(md) == self.ctime_ns
    }
}

/// Where an indexed chunk lies: its file, its offset there, and what the scan saw of the file.
#[derive(Clone, Debug)]
pub struct Located {
    /// The file that held the chunk when it was indexed.
    pub path: PathBuf,
    /// Where the chunk starts in it.
    pub offset: u64,
    seen: Option<Seen>,
}

impl Located {
    /// True when `md` is provably the file the scan hashed, unchanged since (see [`Seen`]).
    pub(crate) fn unchanged(&self, md: &Metadata) -> bool {
        self.seen.is_some_and(|s| s.unchanged(md))
    }
}

/// One indexed file: its root, where its path below the root lies in the index's name arena,
/// and what the scan saw of it if anything.
#[derive(Debug)]
struct Indexed {
    root: u32,
    name_len: u32,
    name_start: u64,
    seen: Option<Seen>,
}

/// How a chunk read from the index was proved to be the indexed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Its BLAKE3 was computed and matched.
    Hashed,
    /// Its file is provably the one the scan hashed; the bytes were not hashed again.
    Unchanged,
}

/// Chunk hash → a place on this machine holding those bytes. Built from scans made with the
/// same chunk parameters; every read is verified, so a file changed since is simply a miss.
///
/// Kept compact, since a big tree indexes hundreds of thousands of chunks: a sorted array of
/// (hash, location) pairs rather than a hash map (48 bytes a chunk instead of about 90), and
/// the files' paths in one arena rather than a `String` each.
#[derive(Debug)]
pub struct ChunkIndex {
    params: ChunkParams,
    roots: Vec<PathBuf>,
    files: Vec<Indexed>,
    names: String,
    /// Sorted by hash, one location per hash.
    chunks: Vec<(ContentHash, Location)>,
}

impl ChunkIndex {
    /// An empty index for chunks cut with `params`.
    pub fn new(params: ChunkParams) -> Self {
        Self {
            params,
            roots: Vec::new(),
            files: Vec::new(),
            names: String::new(),
            chunks: Vec::new(),
        }
    }

    /// The first 8 bytes of each chunk's hash, big-endian, in ascending order: a compact key
    /// (an eighth of an entry) saying whether this index may hold a chunk, see
    /// [`ChunkIndex::key_of`].
    pub fn keys(&self) -> Vec<u64> {
        self.chunks.iter().map(|(h, _)| Self::key_of(h)).collect()
    }

    /// The key of `hash` among [`ChunkIndex::keys`].
    pub fn key_of(hash: &ContentHash) -> u64 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&hash.0[..8]);
        u64::from_be_bytes(k)
    }

    /// An index of one scanned tree. What the scan saw of each file (size, mtime, inode, ctime)
    /// lets a read of an unchanged file skip hashing its chunk again.
    pub fn from_scan(scanned: &Scanned) -> Self {
        let mut idx = Self::new(scanned.manifest.params);
        idx.insert(scanned.root(), &scanned.manifest, scanned.local());
        idx
    }

    /// Adds the chunks of `manifest`, a scan of `root`. Returns false (and adds nothing) when the
    /// manifest was cut with other parameters, since none of its chunks could match. Every read
    /// of these chunks is hashed.
    pub fn add(&mut self, root: &Path, manifest: &WorkspaceManifest) -> bool {
        self.insert(root, manifest, &[])
    }

    /// [`ChunkIndex::add`], with what a scan saw per manifest entry (`local`, possibly empty).
    /// A chunk already indexed keeps its first location, and a file none of whose chunks is new
    /// is not kept.
    pub(crate) fn insert(
        &mut self,
        root: &Path,
        manifest: &WorkspaceManifest,
        local: &[Option<LocalStat>],
    ) -> bool {
        let Some(mut fresh) = self.fresh(manifest) else {
            return false;
        };
        let root_number = self.roots.len() as u32;
        // Only the files that end up used are recorded, numbered in manifest order: at most
        // one number per entry, so within the room `fresh` checked.
        fresh.sort_by_key(|(_, loc)| loc.file);
        let mut kept: Option<(u32, u32)> = None;
        for (_, loc) in &mut fresh {
            let entry_index = loc.file;
            let number = match kept {
                Some((e, n)) if e == entry_index => n,
                _ => {
                    let entry = &manifest.entries[entry_index as usize];
                    let size = entry.file().map_or(0, |f| f.size);
                    let seen = local
                        .get(entry_index as usize)
                        .copied()
                        .flatten()
                        .and_then(|l| Seen::new(size, entry.mtime_ns, &l));
                    let n = self.files.len() as u32;
                    self.files.push(Indexed {
                        root: root_number,
                        name_len: entry.path.len() as u32,
                        name_start: self.names.len() as u64,
                        seen,
                    });
                    self.names.push_str(&entry.path);
                    kept = Some((entry_index, n));
                    n
                }
            };
            loc.file = number;
        }
        self.roots.push(root.to_path_buf());
        self.chunks.append(&mut fresh);
        self.chunks.sort_unstable_by_key(|(h, _)| *h);
        // What growing reserved would otherwise stay for as long as the index.
        self.chunks.shrink_to_fit();
        self.files.shrink_to_fit();
        self.names.shrink_to_fit();
        true
    }

    /// The chunks of `manifest` not indexed yet, one location each (the first in manifest
    /// order), sorted by hash, each naming its manifest entry. `None` when the manifest was cut
    /// with other parameters or its entries would not fit the file numbers left.
    fn fresh(&self, manifest: &WorkspaceManifest) -> Option<Vec<(ContentHash, Location)>> {
        if manifest.params != self.params {
            return None;
        }
        let room = u32::MAX as usize - self.files.len();
        if manifest.entries.len() > room || self.roots.len() >= u32::MAX as usize {
            return None;
        }
        let mut fresh: Vec<(ContentHash, Location)> = Vec::new();
        for (i, entry) in manifest.entries.iter().enumerate() {
            let Some(data) = entry.file() else { continue };
            let mut offset = 0u64;
            for c in &data.chunks {
                if self.find(&c.hash).is_none() {
                    fresh.push((
                        c.hash,
                        Location {
                            file: i as u32,
                            len: c.len,
                            offset,
                        },
                    ));
                }
                offset += u64::from(c.len);
            }
        }
        // Stable: among equal hashes the first in manifest order stays.
        fresh.sort_by_key(|(h, _)| *h);
        fresh.dedup_by(|later, first| later.0 == first.0);
        Some(fresh)
    }

    /// The path of file number `file` and what its scan saw of it.
    fn file(&self, file: u32) -> Option<(PathBuf, Option<Seen>)> {
        let f = self.files.get(file as usize)?;
        let root = self.roots.get(f.root as usize)?;
        let start = usize::try_from(f.name_start).ok()?;
        let rel = self.names.get(start..start + f.name_len as usize)?;
        Some((root.join(rel), f.seen))
    }

    fn find(&self, hash: &ContentHash) -> Option<&Location> {
        let i = self.chunks.binary_search_by(|(h, _)| h.cmp(hash)).ok()?;
        Some(&self.chunks[i].1)
    }

    /// The parameters chunks were cut with.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// True when the chunk is indexed (it may still turn out stale when read).
    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.find(hash).is_some()
    }

    /// Number of distinct chunks indexed.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Reads the chunk into `buf` (replacing its contents) and checks it: its file is provably
    /// unchanged since the scan (see [`ChunkIndex::from_scan`]), or else its BLAKE3 matches.
    /// False when the chunk is not indexed, its file is gone, or its bytes changed since the scan.
    pub fn read_into(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> bool {
        self.read_proved(hash, buf).is_some()
    }

    /// Where `hash` lies, if indexed (the file may have changed since: see
    /// [`Located::unchanged`]).
    pub fn locate(&self, hash: &ContentHash) -> Option<Located> {
        let loc = self.find(hash)?;
        let (path, seen) = self.file(loc.file)?;
        Some(Located {
            path,
            offset: loc.offset,
            seen,
        })
    }

    /// [`ChunkIndex::read_into`], saying how the bytes were proved.
    pub(crate) fn read_proved(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> Option<Proof> {
        let loc = self.find(hash)?;
        let (path, seen) = self.file(loc.file)?;
        let file = open_nofollow(&path).ok()?;
        // Reused buffers are not zeroed again: the read overwrites every byte kept.
        let len = loc.len as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf.truncate(len);
        file.read_exact_at(buf, loc.offset).ok()?;
        // Stat after the read: a write that could have touched what was read has changed the
        // ctime by then.
        if let Some(seen) = &seen
            && file.metadata().is_ok_and(|md| seen.unchanged(&md))
        {
            return Some(Proof::Unchanged);
        }
        (hash_bytes(buf) == *hash).then_some(Proof::Hashed)
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

#[cfg(test)]
mod tests {
    use baton_proto::workspace::EntryKind;

    use super::*;
    use crate::fsutil::set_mtime;
    use crate::testutil::{aged, index_of, noise, scanned};

    fn tree() -> (tempfile::TempDir, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let big = noise(5, 700_000);
        std::fs::write(t.path().join("big.bin"), &big).unwrap();
        std::fs::write(t.path().join("small.txt"), b"small").unwrap();
        (t, big)
    }

    #[test]
    fn an_unchanged_file_is_served_without_hashing_again() {
        let (t, _) = tree();
        let s = scanned(t.path());
        let mut buf = Vec::new();
        let idx = index_of(&s, &aged(&s));
        for (_, f) in s.manifest.files() {
            for c in &f.chunks {
                assert_eq!(idx.read_proved(&c.hash, &mut buf), Some(Proof::Unchanged));
                assert_eq!(hash_bytes(&buf), c.hash);
            }
        }
        // Proof that no hash was computed: a name the bytes do not have is served all the same.
        let mut lying = s.clone();
        let EntryKind::File(f) = &mut lying.manifest.entries[1].kind else {
            panic!("small.txt is a file")
        };
        f.chunks[0].hash = ContentHash([7; 32]);
        let idx = index_of(&lying, &aged(&s));
        assert_eq!(
            idx.read_proved(&ContentHash([7; 32]), &mut buf),
            Some(Proof::Unchanged)
        );
        assert_eq!(buf, b"small");
        // Without what the scan saw, or with a change too recent to rule out a racy write, the
        // same read hashes and refuses.
        let mut no_stats = ChunkIndex::new(s.manifest.params);
        no_stats.add(s.root(), &lying.manifest);
        assert_eq!(no_stats.read_proved(&ContentHash([7; 32]), &mut buf), None);
        let racy = ChunkIndex::from_scan(&lying);
        assert_eq!(racy.read_proved(&ContentHash([7; 32]), &mut buf), None);
        let small = s.manifest.get("small.txt").unwrap().file().unwrap().hash;
        assert_eq!(
            ChunkIndex::from_scan(&s).read_proved(&small, &mut buf),
            Some(Proof::Hashed)
        );
    }

    #[test]
    fn a_chunk_keeps_its_first_location_and_files_without_new_chunks_are_not_kept() {
        let t = tempfile::tempdir().unwrap();
        for (name, body) in [("a", "same"), ("b", "same"), ("c", "other")] {
            std::fs::write(t.path().join(name), body).unwrap();
        }
        let s = scanned(t.path());
        let mut idx = ChunkIndex::from_scan(&s);
        assert_eq!(
            (idx.len(), idx.files.len()),
            (2, 2),
            "b holds only a's chunk"
        );
        let same = s.manifest.get("a").unwrap().file().unwrap().hash;
        let f = &idx.files[idx.find(&same).unwrap().file as usize];
        let start = f.name_start as usize;
        assert_eq!(&idx.names[start..start + f.name_len as usize], "a");

        // A second tree adds only what the first did not hold, and the first still serves.
        let u = tempfile::tempdir().unwrap();
        std::fs::write(u.path().join("x"), "same").unwrap();
        std::fs::write(u.path().join("y"), "new").unwrap();
        assert!(idx.add(u.path(), &scanned(u.path()).manifest));
        assert_eq!((idx.len(), idx.files.len()), (3, 3));
        let mut buf = Vec::new();
        assert!(idx.read_into(&same, &mut buf));
        assert_eq!(buf, b"same");
        let new = hash_bytes(b"new");
        assert!(idx.read_into(&new, &mut buf));
        assert_eq!(buf, b"new");
        assert!(!idx.contains(&hash_bytes(b"absent")));
    }

    #[test]
    fn an_index_serves_its_scan_and_the_trees_added_after() {
        let (t, big) = tree();
        let s = scanned(t.path());
        let mut idx = ChunkIndex::from_scan(&s);
        let u = tempfile::tempdir().unwrap();
        std::fs::write(u.path().join("other"), b"other bytes").unwrap();
        assert!(idx.add(u.path(), &scanned(u.path()).manifest));

        let mut buf = Vec::new();
        let first = &s.manifest.get("big.bin").unwrap().file().unwrap().chunks[0];
        // Just scanned: too recent to prove unchanged, so hashed.
        assert_eq!(idx.read_proved(&first.hash, &mut buf), Some(Proof::Hashed));
        assert_eq!(buf, big[..first.len as usize]);
        assert!(idx.read_into(&hash_bytes(b"small"), &mut buf));
        assert_eq!(buf, b"small");
        assert!(idx.read_into(&hash_bytes(b"other bytes"), &mut buf));
        assert_eq!(buf, b"other bytes");
        // What a received tree's scan saw still proves an unchanged file.
        let later = crate::scan::now_ns() + 2 * RACY_NS;
        let aged_scan = Scanned::of_received(s.manifest.clone(), s.root().to_path_buf(), later);
        let idx = ChunkIndex::from_scan(&aged_scan);
        assert_eq!(
            idx.read_proved(&first.hash, &mut buf),
            Some(Proof::Unchanged)
        );
    }

    #[test]
    fn a_file_rewritten_with_its_size_and_mtime_is_hashed_and_missed() {
        let (t, mut big) = tree();
        let s = scanned(t.path());
        let idx = index_of(&s, &aged(&s));
        let entry = s.manifest.get("big.bin").unwrap();
        let chunks = &entry.file().unwrap().chunks;
        assert!(chunks.len() > 2, "{} chunks", chunks.len());

        // Same size, same mtime, one byte changed in the first chunk: only ctime tells.
        big[10] ^= 1;
        let p = t.path().join("big.bin");
        std::fs::write(&p, &big).unwrap();
        set_mtime(&p, entry.mtime_ns).unwrap();
        let mut buf = Vec::new();
        assert_eq!(idx.read_proved(&chunks[0].hash, &mut buf), None);
        assert!(!idx.read_into(&chunks[0].hash, &mut buf));
        // The rest of the file still holds its chunks, proved by hashing now.
        assert_eq!(
            idx.read_proved(&chunks[1].hash, &mut buf),
            Some(Proof::Hashed)
        );

        // Replaced by another file (new inode) with the very same bytes: hashed, and served.
        let small = s.manifest.get("small.txt").unwrap().file().unwrap().hash;
        let q = t.path().join("small.txt");
        std::fs::write(t.path().join("new"), b"small").unwrap();
        std::fs::rename(t.path().join("new"), &q).unwrap();
        assert_eq!(idx.read_proved(&small, &mut buf), Some(Proof::Hashed));
        // Truncated: a miss.
        std::fs::write(&q, b"").unwrap();
        assert_eq!(idx.read_proved(&small, &mut buf), None);
    }
}
