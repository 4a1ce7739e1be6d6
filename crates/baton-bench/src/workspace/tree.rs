//! The synthetic repository the workspace benchmark moves, generated from a seed: source-like
//! text files, large incompressible files, a git-ignored `node_modules`-like tree and a `.git`.
//!
//! The same seed and shape give the same file contents. A generated tree is kept (with a stamp
//! file beside it that names its shape) and reused by later runs, since writing 1.3 GiB takes a
//! while; the benchmark never writes into it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Bumped when the generator changes, so that old trees are regenerated.
const GENERATOR_VERSION: u32 = 1;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Largest size of a source file in the tree, in KiB.
pub const DEFAULT_SOURCE_MAX_KIB: u64 = 20;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Seed of the generator.
    pub seed: u64,
    /// Source-like text files (1 KiB to `source_max_kib` KiB each).
    pub source_files: u64,
    /// Largest size of a source file, in KiB (20 in the tree; smaller makes trees of a
    /// million files fit on a test machine's disk).
    pub source_max_kib: u64,
    /// Large incompressible files (1-8 MiB each).
    pub big_files: u64,
    /// Bytes of the ignored `node_modules` tree (files of 1-20 KiB).
    pub ignored_bytes: u64,
}

impl Shape {
    /// The tree: 20 000 source files, 200 large files, 200 MiB ignored.
    pub fn full(seed: u64) -> Self {
        Self {
            seed,
            source_files: 20_000,
            source_max_kib: DEFAULT_SOURCE_MAX_KIB,
            big_files: 200,
            ignored_bytes: 200 * MIB,
        }
    }

    /// A tenth of it, for a quick check.
    pub fn small(seed: u64) -> Self {
        Self {
            seed,
            source_files: 2_000,
            source_max_kib: DEFAULT_SOURCE_MAX_KIB,
            big_files: 20,
            ignored_bytes: 20 * MIB,
        }
    }

    /// One line that names this shape (the stamp file's content).
    fn stamp(&self) -> String {
        // Named only when not the default, so that trees generated before it are reused.
        let max = if self.source_max_kib == DEFAULT_SOURCE_MAX_KIB {
            String::new()
        } else {
            format!(" source_max_kib {}", self.source_max_kib)
        };
        format!(
            "baton-bench workspace tree v{GENERATOR_VERSION}: seed {} source_files {}{max} big_files {} ignored_bytes {}\n",
            self.seed, self.source_files, self.big_files, self.ignored_bytes
        )
    }

    /// A short name for directories (`full-s1`, `small-s1`, or the counts).
    pub fn name(&self) -> String {
        if *self == Self::full(self.seed) {
            format!("full-s{}", self.seed)
        } else if *self == Self::small(self.seed) {
            format!("small-s{}", self.seed)
        } else {
            let max = if self.source_max_kib == DEFAULT_SOURCE_MAX_KIB {
                String::new()
            } else {
                format!("-k{}", self.source_max_kib)
            };
            format!(
                "f{}{max}-b{}-i{}-s{}",
                self.source_files, self.big_files, self.ignored_bytes, self.seed
            )
        }
    }
}

/// How the `.git` directory was made.
#[derive(Clone, Debug)]
pub enum GitKind {
    /// `git init`, one commit of the source files, `git gc`.
    Real(String),
    /// No `git` on PATH: a synthetic pack of the given size.
    Synthetic(String),
}

impl GitKind {
    /// For the report.
    pub fn describe(&self) -> String {
        match self {
            Self::Real(v) => format!("real ({v}: one commit of the text files, then git gc)"),
            Self::Synthetic(why) => format!("synthetic pack ({why})"),
        }
    }
}

/// A generated tree.
#[derive(Clone, Debug)]
pub struct Tree {
    /// Its root.
    pub root: PathBuf,
    /// How `.git` was made.
    pub git: GitKind,
    /// Whether this run generated it (false: an earlier run's tree was reused).
    pub generated: bool,
    /// Seconds it took to generate (0 when reused).
    pub generate_secs: f64,
}

/// The tree of `shape` at `root`: reused when the stamp beside it matches, generated otherwise.
pub fn ensure(root: &Path, shape: &Shape) -> Result<Tree> {
    let stamp_path = stamp_path(root);
    let want = shape.stamp();
    if root.is_dir()
        && let Ok(have) = fs::read_to_string(&stamp_path)
        && let Some((stamp, git)) = have.split_once("git: ")
        && stamp == want
    {
        let git = git.trim();
        let git = match git.strip_prefix("real ") {
            Some(v) => GitKind::Real(v.to_string()),
            None => GitKind::Synthetic(git.trim_start_matches("synthetic ").to_string()),
        };
        return Ok(Tree {
            root: root.to_path_buf(),
            git,
            generated: false,
            generate_secs: 0.0,
        });
    }
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
        if let Some(parent) = root.parent() {
            super::note_removal(parent);
        }
    }
    let _ = fs::remove_file(&stamp_path);
    let t = Instant::now();
    eprintln!(
        "Generating the tree in {} ({} source files, {} large files, {} MiB ignored)",
        root.display(),
        shape.source_files,
        shape.big_files,
        shape.ignored_bytes / MIB
    );
    let git = generate(root, shape)?;
    let generate_secs = t.elapsed().as_secs_f64();
    let git_line = match &git {
        GitKind::Real(v) => format!("real {v}"),
        GitKind::Synthetic(why) => format!("synthetic {why}"),
    };
    fs::write(&stamp_path, format!("{want}git: {git_line}\n"))
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    eprintln!("Generated in {generate_secs:.1} s");
    Ok(Tree {
        root: root.to_path_buf(),
        git,
        generated: true,
        generate_secs,
    })
}

/// The stamp file beside `root` (outside it, so it is not part of the tree).
fn stamp_path(root: &Path) -> PathBuf {
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push(".stamp");
    root.with_file_name(name)
}

/// SplitMix64: small, fast, and good enough to make file contents.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and a stream number (so that parts of the tree do not share bytes).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Fills `out` with random bytes.
    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

const KEYWORDS: [&str; 24] = [
    "fn", "let", "pub", "struct", "impl", "return", "if", "else", "for", "match", "use", "self",
    "mut", "const", "=>", "->", "::", "&", "Some", "None", "Ok", "Err", "in", "where",
];

/// Source-like text: indented lines of identifiers (drawn with a skew, as real code repeats a
/// few names often), keywords and punctuation. zstd -1 shrinks it about 3x.
pub struct TextGen {
    words: Vec<String>,
}

impl TextGen {
    /// A vocabulary of a few thousand identifiers drawn from `rng`.
    pub fn new(rng: &mut Rng) -> Self {
        const SYLLABLES: [&str; 32] = [
            "ba", "ton", "han", "doff", "ses", "sion", "work", "space", "ma", "chine", "dae",
            "mon", "ser", "ver", "chunk", "hash", "file", "path", "tree", "scan", "stage", "plan",
            "read", "write", "sync", "lock", "map", "key", "id", "err", "ok", "buf",
        ];
        let mut words: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
        for _ in 0..3000 {
            let n = rng.range(1, 4);
            let mut w = String::new();
            for i in 0..n {
                let s = SYLLABLES[rng.range(0, SYLLABLES.len() as u64 - 1) as usize];
                if i > 0 && rng.next_u64().is_multiple_of(3) {
                    w.push('_');
                }
                w.push_str(s);
            }
            if rng.next_u64().is_multiple_of(5) {
                w = format!("{}{}", w[..1].to_uppercase(), &w[1..]);
            }
            words.push(w);
        }
        Self { words }
    }

    /// Exactly `len` bytes of text.
    pub fn text(&self, rng: &mut Rng, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 128);
        let n = self.words.len() as u64;
        let mut depth = 0u64;
        while out.len() < len {
            out.extend(std::iter::repeat_n(b' ', 4 * depth as usize));
            let tokens = rng.range(2, 9);
            for t in 0..tokens {
                // Skewed towards the front of the vocabulary (keywords, then common names).
                let u = rng.next_u64() % n;
                let idx = (u * u / n) as usize;
                if t > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(self.words[idx].as_bytes());
                if rng.next_u64().is_multiple_of(6) {
                    out.extend_from_slice(b"(");
                    out.extend_from_slice(self.words[(u % 64) as usize].as_bytes());
                    out.extend_from_slice(b")");
                }
            }
            match rng.next_u64() % 8 {
                0 if depth < 5 => {
                    out.extend_from_slice(b" {\n");
                    depth += 1;
                }
                1 if depth > 0 => {
                    out.extend_from_slice(b";\n");
                    depth -= 1;
                    out.extend(std::iter::repeat_n(b' ', 4 * depth as usize));
                    out.extend_from_slice(b"}\n");
                }
                _ => out.extend_from_slice(b";\n"),
            }
        }
        out.truncate(len);
        if let Some(last) = out.last_mut() {
            *last = b'\n';
        }
        out
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

const EXTENSIONS: [&str; 5] = ["rs", "ts", "py", "go", "md"];

/// The relative path of source file `i` (in 50 packages of 20 modules).
pub fn source_path(i: u64) -> String {
    let ext = EXTENSIONS[(i % EXTENSIONS.len() as u64) as usize];
    format!(
        "src/pkg{:02}/mod{:02}/file{i:05}.{ext}",
        i % 50,
        (i / 50) % 20
    )
}

fn generate(root: &Path, shape: &Shape) -> Result<GitKind> {
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut vocab_rng = Rng::new(shape.seed, 0);
    let text = TextGen::new(&mut vocab_rng);

    // Top-level files of a project.
    write_file(
        &root.join(".gitignore"),
        b"# dependencies\nnode_modules/\n# build output\n/target/\n/dist/\n*.log\n",
    )?;
    write_file(
        &root.join("README.md"),
        b"# Synthetic repository\n\nGenerated by baton-bench for the workspace benchmark.\n",
    )?;
    write_file(
        &root.join("package.json"),
        b"{\n  \"name\": \"synthetic\",\n  \"version\": \"1.0.0\",\n  \"private\": true\n}\n",
    )?;

    // Source files: 1-20 KiB of text each (by default).
    let mut rng = Rng::new(shape.seed, 1);
    let max = shape.source_max_kib.max(1) * KIB;
    for i in 0..shape.source_files {
        let len = rng.range(KIB, max) as usize;
        write_file(&root.join(source_path(i)), &text.text(&mut rng, len))?;
    }

    // Large files: 1-8 MiB of random bytes (media, archives, models: incompressible).
    let mut rng = Rng::new(shape.seed, 2);
    let mut buf = Vec::new();
    for i in 0..shape.big_files {
        let len = rng.range(MIB, 8 * MIB) as usize;
        buf.resize(len, 0);
        rng.fill(&mut buf);
        let path = root.join(format!("assets/set{:02}/blob{i:04}.bin", i % 10));
        write_file(&path, &buf)?;
    }

    // The ignored dependency tree: packages of small JavaScript-like files.
    let mut rng = Rng::new(shape.seed, 3);
    let mut written = 0u64;
    let mut pkg = 0u64;
    while written < shape.ignored_bytes {
        let dir = root.join(format!("node_modules/dep{pkg:04}"));
        write_file(
            &dir.join("package.json"),
            format!("{{\n  \"name\": \"dep{pkg:04}\",\n  \"main\": \"index.js\"\n}}\n").as_bytes(),
        )?;
        for f in 0..rng.range(10, 40) {
            if written >= shape.ignored_bytes {
                break;
            }
            let len = rng.range(KIB, 20 * KIB).min(shape.ignored_bytes - written) as usize;
            let name = match f {
                0 => "index.js".to_string(),
                f if f % 3 == 0 => format!("dist/chunk{f}.min.js"),
                f => format!("lib/part{f}.js"),
            };
            write_file(&dir.join(name), &text.text(&mut rng, len))?;
            written += len as u64;
        }
        pkg += 1;
    }

    match git_version() {
        Some(v) => {
            make_git(root)?;
            Ok(GitKind::Real(v))
        }
        None => {
            let bytes = (shape.source_files * 10 * KIB / 4).max(MIB);
            synthetic_git(root, shape.seed, bytes)?;
            Ok(GitKind::Synthetic(format!(
                "git is not on PATH; {} MiB of pack",
                bytes / MIB
            )))
        }
    }
}

/// `git --version`, when git runs.
fn git_version() -> Option<String> {
    let out = Command::new("git").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Paths of the commit, relative to the tree: what `git add` of these would take.
const COMMITTED: [&str; 4] = [".gitignore", "README.md", "package.json", "src"];

/// `git init`, one commit of the text files, then `git gc`: a `.git` of the size a real
/// repository of these sources has. The commit is written by `git fast-import` straight into a
/// pack rather than by `git add`, whose loose objects `git gc` would then delete by the tens of
/// thousands: on ext4 without a journal every file created in the next minutes skips those
/// freed inodes one by one, which would slow the first rounds of whichever tool they fall on.
fn make_git(root: &Path) -> Result<()> {
    let git = |args: &[&str]| -> Command {
        let mut cmd = Command::new("git");
        cmd.args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(["-c", "commit.gpgsign=false", "-c", "gc.auto=0"])
        .args(args)
        .current_dir(root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdout(Stdio::null());
        cmd
    };
    let run = |args: &[&str]| -> Result<()> {
        let status = git(args)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running git {args:?}"))?;
        if !status.success() {
            bail!("git {args:?} failed ({status})");
        }
        Ok(())
    };
    eprintln!("  git init, commit of the text files (fast-import), git gc");
    run(&["init", "-q", "-b", "main"])?;
    let mut files = Vec::new();
    for top in COMMITTED {
        collect_files(root, Path::new(top), &mut files)?;
    }
    files.sort();
    let mut child = git(&["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running git fast-import")?;
    let stdin = child.stdin.take().context("git fast-import has no stdin")?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
    let written = (|| -> Result<()> {
        for (i, rel) in files.iter().enumerate() {
            let data = fs::read(root.join(rel)).with_context(|| format!("reading {rel}"))?;
            write!(w, "blob\nmark :{}\ndata {}\n", i + 1, data.len())?;
            w.write_all(&data)?;
            w.write_all(b"\n")?;
        }
        // 2024-01-01T00:00:00Z, as the commit had when `git commit` made it.
        let who = "Bench <bench@example.invalid> 1704067200 +0000";
        let msg = "Synthetic sources";
        write!(
            w,
            "commit refs/heads/main\nauthor {who}\ncommitter {who}\ndata {}\n{msg}\n",
            msg.len()
        )?;
        for (i, rel) in files.iter().enumerate() {
            let md = fs::metadata(root.join(rel))?;
            let mode = match std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o111 {
                0 => "100644",
                _ => "100755",
            };
            writeln!(w, "M {mode} :{} {rel}", i + 1)?;
        }
        writeln!(w, "done")?;
        w.flush()?;
        Ok(())
    })();
    drop(w);
    let status = child.wait().context("waiting for git fast-import")?;
    written.context("feeding git fast-import")?;
    if !status.success() {
        bail!("git fast-import failed ({status})");
    }
    // The index, as `git add` would have left it.
    run(&["read-tree", "HEAD"])?;
    run(&["update-index", "-q", "--refresh"])?;
    run(&["gc", "-q"])?;
    Ok(())
}

/// Regular files at or under `rel` (relative to `root`), as `/`-separated paths; a symlink is
/// refused (the generated tree has none to commit).
fn collect_files(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let p = root.join(rel);
    let md = fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
    if md.is_dir() {
        for entry in fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
            collect_files(root, &rel.join(entry?.file_name()), out)?;
        }
    } else if md.is_file() {
        let s = rel
            .to_str()
            .with_context(|| format!("{} is not UTF-8", rel.display()))?;
        out.push(s.to_string());
    } else {
        bail!("{} is neither a file nor a directory", p.display());
    }
    Ok(())
}

/// A `.git` without git: the usual skeleton and one pack of `bytes` random-ish bytes.
fn synthetic_git(root: &Path, seed: u64, bytes: u64) -> Result<()> {
    let git = root.join(".git");
    write_file(&git.join("HEAD"), b"ref: refs/heads/main\n")?;
    write_file(
        &git.join("config"),
        b"[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
    )?;
    write_file(
        &git.join("refs/heads/main"),
        b"0000000000000000000000000000000000000000\n",
    )?;
    let mut rng = Rng::new(seed, 4);
    fs::create_dir_all(git.join("objects/pack")).context("creating .git/objects/pack")?;
    let mut pack = fs::File::create(git.join("objects/pack/pack-synthetic.pack"))
        .context("creating the synthetic pack")?;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        pack.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut idx = vec![0u8; (bytes / 200).max(1024) as usize];
    rng.fill(&mut idx);
    write_file(&git.join("objects/pack/pack-synthetic.idx"), &idx)?;
    Ok(())
}

/// Writes a one-line edit into the middle of the text file `rel` under `root` (an agent's
/// typical change): a new line inserted, so the file's size and mtime change.
pub fn edit_one_file(root: &Path, rel: &str, run: usize) -> Result<u64> {
    let path = root.join(rel);
    let mut data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mid = data.len() / 2;
    let at = data[mid..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(data.len(), |p| mid + p + 1);
    let line = format!("    // edited by the benchmark, run {run}\n");
    data.splice(at..at, line.bytes());
    fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(data.len() as u64)
}
