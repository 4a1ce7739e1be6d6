//! Workspace transfer shapes (DESIGN §5): the manifest a source sends, the policies a handoff
//! carries, and the plan a target reports back.
//!
//! Shapes only. Scanning, chunking, validation of received manifests, staging and apply live in
//! `baton-workspace`; a manifest read from the network is hostile until that crate validated it.

use std::fmt;

use serde::de::{self, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the manifest shape and of its meaning (path rules, chunk rules); bumped on any
/// incompatible change.
pub const MANIFEST_VERSION: u32 = 1;

/// Most paths a plan summary lists by name; counts are always complete.
pub const PLAN_LIST_CAP: usize = 200;

/// A BLAKE3 digest: 64 hex digits in human-readable encodings (JSON), 32 raw bytes otherwise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0x0f)] as char);
        }
        s
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve digits identify a chunk in logs without flooding them.
        write!(f, "ContentHash({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HashVisitor;
        impl<'de> Visitor<'de> for HashVisitor {
            type Value = ContentHash;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a BLAKE3 hash (64 hex digits or 32 bytes)")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ContentHash, E> {
                ContentHash::from_hex(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ContentHash, E> {
                <[u8; 32]>::try_from(v)
                    .map(ContentHash)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentHash, A::Error> {
                let mut out = [0u8; 32];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(de::Error::invalid_length(33, &self));
                }
                Ok(ContentHash(out))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(HashVisitor)
        } else {
            d.deserialize_bytes(HashVisitor)
        }
    }
}

/// The content-defined chunking algorithm that cut a manifest's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkAlgorithm {
    /// FastCDC as in the 2020 paper (`fastcdc::v2020`), default gear table, seed 0.
    #[serde(rename = "fastcdc_v2020")]
    FastCdc2020,
}

/// How files were cut into chunks. Both sides must cut with the same parameters for the target's
/// existing chunks to match the source's, so they travel in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkParams {
    /// Algorithm and its fixed tables.
    pub algorithm: ChunkAlgorithm,
    /// No chunk but a file's last is shorter (bytes); smaller files are one chunk.
    pub min_size: u32,
    /// Target average chunk size (bytes).
    pub avg_size: u32,
    /// No chunk is longer (bytes).
    pub max_size: u32,
    /// FastCDC normalisation level (0–3).
    pub normalization: u8,
}

impl ChunkParams {
    /// 16 KiB / 64 KiB / 256 KiB, normalisation level 1.
    pub const DEFAULT: ChunkParams = ChunkParams {
        algorithm: ChunkAlgorithm::FastCdc2020,
        min_size: 16 * 1024,
        avg_size: 64 * 1024,
        max_size: 256 * 1024,
        normalization: 1,
    };

    /// Largest `max_size` accepted: bounds what one chunk costs in memory and on the wire.
    pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

    /// Checks the parameters are ones a receiver can reproduce; the error says which is wrong.
    pub fn check(&self) -> Result<(), String> {
        let Self {
            min_size: min,
            avg_size: avg,
            max_size: max,
            ..
        } = *self;
        // The bounds are the chunker's own (fastcdc v2020 MINIMUM_MIN..AVERAGE_MAX); odd sizes
        // shift its two-byte scan, so they are refused too.
        if !(64..=1024 * 1024).contains(&min) {
            return Err(format!("min_size {min} is outside 64..=1048576"));
        }
        if !(256..=4 * 1024 * 1024).contains(&avg) {
            return Err(format!("avg_size {avg} is outside 256..=4194304"));
        }
        if !(1024..=Self::MAX_CHUNK).contains(&max) {
            return Err(format!(
                "max_size {max} is outside 1024..={}",
                Self::MAX_CHUNK
            ));
        }
        if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            return Err("chunk sizes must be even".into());
        }
        if !(min <= avg && avg <= max) {
            return Err(format!(
                "chunk sizes are not ordered: {min} <= {avg} <= {max}"
            ));
        }
        if self.normalization > 3 {
            return Err(format!("normalization {} is above 3", self.normalization));
        }
        Ok(())
    }
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One chunk of a file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub hash: ContentHash,
    /// Length in bytes (never zero, never above the manifest's `max_size`).
    pub len: u32,
}

/// What a regular file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file (what `b3sum` prints).
    pub hash: ContentHash,
    /// The file's chunks in order; their lengths sum to `size`; empty for an empty file.
    pub chunks: Vec<ChunkRef>,
}

/// The kind of a manifest entry and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory (listed so that empty ones travel too).
    Dir,
    /// A regular file.
    File(FileData),
    /// A symbolic link whose target is relative and stays inside the tree.
    Symlink {
        /// The link's target, exactly as stored in the link.
        target: String,
    },
}

/// One path of the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceEntry {
    /// Relative to the workspace root, `/`-separated, no `.`/`..`/empty components, UTF-8.
    pub path: String,
    /// Unix permission bits (`st_mode & 0o7777`); setuid/setgid are never restored.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Directory, file or symlink.
    pub kind: EntryKind,
}

impl WorkspaceEntry {
    /// The file's data when this is a regular file.
    pub fn file(&self) -> Option<&FileData> {
        match &self.kind {
            EntryKind::File(f) => Some(f),
            _ => None,
        }
    }
}

/// Why a path of the source tree does not travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A symlink whose target leaves the tree.
    SymlinkOutside,
    /// A symlink with an absolute target, which would not follow the tree to its new place.
    SymlinkAbsolute,
    /// A socket, FIFO or device node.
    SpecialFile,
    /// The name is not valid UTF-8, so it cannot be named on the wire.
    NonUtf8Name,
    /// The path could not be read (permissions, or it vanished during the scan).
    Unreadable,
}

impl SkipReason {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SymlinkOutside => "symlink_outside",
            Self::SymlinkAbsolute => "symlink_absolute",
            Self::SpecialFile => "special_file",
            Self::NonUtf8Name => "non_utf8_name",
            Self::Unreadable => "unreadable",
        }
    }

    /// A sentence for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Self::SymlinkOutside => "symlink pointing outside the workspace",
            Self::SymlinkAbsolute => "symlink with an absolute target",
            Self::SpecialFile => "socket, FIFO or device file",
            Self::NonUtf8Name => "name is not valid UTF-8",
            Self::Unreadable => "could not be read",
        }
    }
}

/// A path left out of the transfer, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    /// Relative path (lossily decoded when the name is not UTF-8).
    pub path: String,
    /// Why it stays behind.
    pub reason: SkipReason,
}

/// Everything a target needs to rebuild a workspace: what each path is and which chunks make it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceManifest {
    /// [`MANIFEST_VERSION`] of the writer.
    pub version: u32,
    /// How files were cut.
    pub params: ChunkParams,
    /// Permission bits of the workspace root.
    pub root_mode: u32,
    /// Modification time of the workspace root (ns since the epoch).
    pub root_mtime_ns: i64,
    /// Entries sorted by path (byte order), each directory before its contents.
    pub entries: Vec<WorkspaceEntry>,
    /// Paths that do not travel, for the user to see.
    #[serde(default)]
    pub skipped: Vec<SkippedEntry>,
}

impl WorkspaceManifest {
    /// An empty manifest of the current version.
    pub fn new(params: ChunkParams) -> Self {
        Self {
            version: MANIFEST_VERSION,
            params,
            root_mode: 0o755,
            root_mtime_ns: 0,
            entries: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Drops the spare capacity of the entry list and of each file's chunk list. A parsed list
    /// keeps room for at least four chunks where most files have one, which for a tree of 10⁵
    /// files is tens of MB held for as long as the manifest is.
    pub fn compact(&mut self) {
        self.entries.shrink_to_fit();
        for e in &mut self.entries {
            if let EntryKind::File(f) = &mut e.kind {
                f.chunks.shrink_to_fit();
            }
        }
    }

    /// The entry at `path`, if any (entries are sorted, so this is a binary search).
    pub fn get(&self, path: &str) -> Option<&WorkspaceEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Regular files with their data.
    pub fn files(&self) -> impl Iterator<Item = (&WorkspaceEntry, &FileData)> {
        self.entries.iter().filter_map(|e| e.file().map(|f| (e, f)))
    }

    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.files().count() as u64
    }

    /// Sum of the sizes of all regular files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.size).sum()
    }
}

/// What happens to files the ignore rules (.gitignore, .ignore, git excludes) leave out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredFiles {
    /// Ignored files stay behind (default): what git tracks or would track travels.
    #[default]
    Skip,
    /// Everything travels, ignore rules or not.
    Include,
    /// Ignored paths matching any of these gitignore-style globs travel too (e.g. `.env`,
    /// `*.local`); a glob matching a directory brings the whole directory.
    Globs(Vec<String>),
}

impl IgnoredFiles {
    /// Parses the option's text: `skip`, `include`, or comma-separated globs.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("empty value: use skip, include or a comma-separated list of globs".into()),
            "skip" => Ok(Self::Skip),
            "include" => Ok(Self::Include),
            list => {
                let globs: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect();
                if globs.is_empty() {
                    return Err(format!("no glob in {list:?}"));
                }
                if let Some(g) = globs.iter().find(|g| g.starts_with('!')) {
                    return Err(format!(
                        "glob {g:?} is a negation; list only what should travel"
                    ));
                }
                Ok(Self::Globs(globs))
            }
        }
    }
}

impl fmt::Display for IgnoredFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Skip => f.write_str("skip"),
            Self::Include => f.write_str("include"),
            Self::Globs(g) => f.write_str(&g.join(",")),
        }
    }
}

/// What to do when the destination path already holds something (DESIGN §3.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Put the result beside it, at `<dest>-handoff`, `<dest>-handoff-2`, … (default).
    #[default]
    Sibling,
    /// Move the existing tree to a backup, put the result in its place; the backup is removed at
    /// commit and restored on abort.
    Replace,
}

impl ConflictPolicy {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sibling => "sibling",
            Self::Replace => "replace",
        }
    }

    /// Parses the stable string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sibling" => Some(Self::Sibling),
            "replace" => Some(Self::Replace),
            _ => None,
        }
    }
}

/// What the destination path holds before a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationState {
    /// Nothing there.
    #[default]
    Absent,
    /// An empty directory, which the result takes the place of under either policy.
    Empty,
    /// Something with contents (or a file or symlink): the conflict policy decides.
    Exists,
}

impl DestinationState {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Empty => "empty",
            Self::Exists => "exists",
        }
    }
}

/// What a workspace transfer will do, computed by the target before anything moves.
///
/// Counts compare the source with what the destination holds now, whatever the policy; the path
/// lists are filled only under [`ConflictPolicy::Replace`], since only then is existing data set
/// aside (kept as a backup until commit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// What the destination holds.
    pub destination: DestinationState,
    /// The policy the plan was made for.
    pub policy: ConflictPolicy,
    /// Regular files in the source manifest.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Paths the destination lacks: files among them.
    pub add_files: u64,
    /// Bytes of the added files.
    pub add_bytes: u64,
    /// Files present on both sides with different content, kind or mode.
    pub change_files: u64,
    /// Bytes of the changed files (source side).
    pub change_bytes: u64,
    /// Files identical on both sides.
    pub unchanged_files: u64,
    /// Destination files absent from the source.
    pub remove_files: u64,
    /// Bytes of the removed files.
    pub remove_bytes: u64,
    /// Distinct chunks the target lacks and must receive.
    pub transfer_chunks: u64,
    /// Bytes those chunks hold: what actually travels.
    pub transfer_bytes: u64,
    /// Bytes the target copies from chunks it already holds.
    pub reused_bytes: u64,
    /// Estimated space the staging tree takes (files rounded up to 4 KiB blocks, plus
    /// directories).
    pub disk_bytes: u64,
    /// Under `replace`: destination paths whose content is replaced (at most [`PLAN_LIST_CAP`]).
    #[serde(default)]
    pub overwritten: Vec<String>,
    /// Under `replace`: destination paths that disappear (at most [`PLAN_LIST_CAP`]).
    #[serde(default)]
    pub removed: Vec<String>,
    /// True when a list above was cut at [`PLAN_LIST_CAP`].
    #[serde(default)]
    pub lists_truncated: bool,
    /// True when the destination was absent and the plan was made from the source's counts
    /// before its files were hashed: the transfer figures are then upper bounds (identical
    /// chunks travel once, so fewer bytes may move).
    #[serde(default)]
    pub estimated: bool,
}

/// One part of a workspace manifest sent in parts (blob `seq` of a transfer pass): the source
/// sends the start of a big tree while it still reads the rest. Parts concatenate, in order,
/// into the pass's manifest; each prefix is itself a valid manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPart {
    /// True for the last part of the pass.
    pub last: bool,
    /// Regular files the whole selection holds (known before any file is read).
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// This part's entries (and, in the last part, the skipped ones); `version`, `params` and
    /// the root's mode and mtime are the same in every part. Under `delta`, the entries are
    /// those added or changed since the base.
    pub manifest: WorkspaceManifest,
    /// Set when the pass's manifest travels as a change to the complete manifest of an earlier
    /// pass of the same handoff, which both daemons hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<PartDelta>,
}

/// How a manifest part sent as a change relates to its base (see [`ManifestPart::delta`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartDelta {
    /// The earlier pass (its transfer id) whose complete manifest this pass changes.
    pub base: crate::ids::HandoffId,
    /// This part's share of the base's paths that are gone, sorted across the parts.
    pub removed: Vec<String>,
    /// In the last part: the digest of the whole resulting manifest, which the target checks
    /// after applying the change.
    pub digest: Option<ContentHash>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trips_and_rejects_junk() {
        let h = ContentHash([0xab; 32]);
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ContentHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(ContentHash::from_hex("ab"), None);
        assert_eq!(ContentHash::from_hex(&"zz".repeat(32)), None);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<ContentHash>("\"abc\"").is_err());
    }

    #[test]
    fn manifest_json_shape() {
        let mut m = WorkspaceManifest::new(ChunkParams::DEFAULT);
        m.entries.push(WorkspaceEntry {
            path: "a".into(),
            mode: 0o755,
            mtime_ns: 1,
            kind: EntryKind::Dir,
        });
        m.entries.push(WorkspaceEntry {
            path: "a/f".into(),
            mode: 0o644,
            mtime_ns: 2,
            kind: EntryKind::File(FileData {
                size: 3,
                hash: ContentHash([1; 32]),
                chunks: vec![ChunkRef {
                    hash: ContentHash([1; 32]),
                    len: 3,
                }],
            }),
        });
        m.entries.push(WorkspaceEntry {
            path: "a/l".into(),
            mode: 0o777,
            mtime_ns: 3,
            kind: EntryKind::Symlink { target: "f".into() },
        });
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["params"]["algorithm"], "fastcdc_v2020");
        assert_eq!(v["entries"][0]["kind"], "dir");
        assert_eq!(v["entries"][1]["kind"]["file"]["size"], 3);
        assert_eq!(v["entries"][2]["kind"]["symlink"]["target"], "f");
        let back: WorkspaceManifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.get("a/f").map(|e| e.mode), Some(0o644));
        assert_eq!(back.total_bytes(), 3);
    }

    #[test]
    fn default_params_are_valid_and_bad_ones_are_named() {
        ChunkParams::DEFAULT.check().unwrap();
        let mut p = ChunkParams::DEFAULT;
        p.max_size = 64 * 1024 * 1024;
        assert!(p.check().unwrap_err().contains("max_size"));
        let mut p = ChunkParams::DEFAULT;
        p.min_size = p.avg_size * 2;
        assert!(p.check().unwrap_err().contains("ordered"));
    }

    #[test]
    fn ignored_option_parses() {
        assert_eq!(IgnoredFiles::parse("skip"), Ok(IgnoredFiles::Skip));
        assert_eq!(IgnoredFiles::parse("include"), Ok(IgnoredFiles::Include));
        assert_eq!(
            IgnoredFiles::parse(".env, *.local"),
            Ok(IgnoredFiles::Globs(vec![".env".into(), "*.local".into()]))
        );
        assert!(IgnoredFiles::parse("").is_err());
        assert!(IgnoredFiles::parse(",").is_err());
        assert!(IgnoredFiles::parse("!x").is_err());
        assert_eq!(
            IgnoredFiles::parse(".env,*.local").unwrap().to_string(),
            ".env,*.local"
        );
    }

    #[test]
    fn policies_parse() {
        for p in [ConflictPolicy::Sibling, ConflictPolicy::Replace] {
            assert_eq!(ConflictPolicy::parse(p.as_str()), Some(p));
        }
        assert_eq!(ConflictPolicy::default(), ConflictPolicy::Sibling);
    }
}
