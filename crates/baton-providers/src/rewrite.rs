//! Rewriting absolute paths inside provider state when a session moves to another workspace path
//! or home directory.
//!
//! Rules (providers.md §6): replace old prefixes by new ones only at path boundaries (so `/a/b`
//! never matches inside `/a/bc` or `/x/a/b`), longest old prefix first, in one pass (replaced
//! text is never rewritten again), and JSON-aware: only decoded string values and keys change,
//! every other byte of a JSONL line is kept as it was.

use serde_json::Value;

use crate::{ProviderError, Result};

/// How a rule decides where a match may start and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An absolute path prefix: boundaries are path boundaries.
    Path,
    /// A plain token such as `enc(old_cwd)`: boundaries are word boundaries of `[A-Za-z0-9_-]`.
    Token,
}

/// One compiled replacement.
#[derive(Clone, Debug)]
struct Rule {
    old: String,
    new: String,
    kind: Kind,
}

/// A set of prefix replacements (old → new) applied at path boundaries, plus plain tokens.
#[derive(Clone, Debug)]
pub struct PathMap {
    /// Path pairs as given (normalised), kept so that [`PathMap::inverse`] can swap them.
    paths: Vec<(String, String)>,
    /// Token pairs as given.
    tokens: Vec<(String, String)>,
    /// Compiled rules, longest `old` first.
    rules: Vec<Rule>,
    /// First bytes of every rule's `old`, to skip positions quickly.
    first_bytes: [bool; 256],
}

impl PathMap {
    /// A map of absolute path prefixes (old → new). Trailing `/` are ignored; pairs whose old
    /// prefix is empty or `/`, or equals its new prefix, are dropped; for a repeated old prefix the
    /// first pair wins.
    pub fn new<I, A, B>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (A, B)>,
        A: Into<String>,
        B: Into<String>,
    {
        let mut map = Self::default();
        for (old, new) in pairs {
            let old = trim_slash(old.into());
            let new = trim_slash(new.into());
            if old.is_empty() || old == new || map.paths.iter().any(|(o, _)| *o == old) {
                continue;
            }
            map.paths.push((old, new));
        }
        map.compile();
        map
    }

    /// Adds plain-token replacements (e.g. `enc(old_cwd)` → `enc(new_cwd)`), matched where the
    /// token is not part of a longer `[A-Za-z0-9_-]` word.
    pub fn with_tokens<I, A, B>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (A, B)>,
        A: Into<String>,
        B: Into<String>,
    {
        for (old, new) in pairs {
            let (old, new) = (old.into(), new.into());
            if old.is_empty() || old == new || self.tokens.iter().any(|(o, _)| *o == old) {
                continue;
            }
            self.tokens.push((old, new));
        }
        self.compile();
        self
    }

    /// The map that undoes this one (new → old), for paths and tokens alike.
    pub fn inverse(&self) -> PathMap {
        let swap = |v: &[(String, String)]| -> Vec<(String, String)> {
            v.iter().map(|(o, n)| (n.clone(), o.clone())).collect()
        };
        PathMap::new(swap(&self.paths)).with_tokens(swap(&self.tokens))
    }

    /// True when the map replaces nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rewrites every old prefix or token found at a boundary in `s`.
    pub fn rewrite_str(&self, s: &str) -> String {
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut i = 0;
        let bytes = s.as_bytes();
        while i < bytes.len() {
            if self.first_bytes[usize::from(bytes[i])]
                && let Some(rule) = self.rule_at(s, i)
            {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len() + 64));
                o.push_str(&s[copied..i]);
                o.push_str(&rule.new);
                i += rule.old.len();
                copied = i;
                continue;
            }
            i += 1;
            // Only stop on char boundaries: rules' `old` are valid UTF-8, so a match can only
            // start at one, and skipping continuation bytes keeps slicing safe.
            while i < bytes.len() && !s.is_char_boundary(i) {
                i += 1;
            }
        }
        match out {
            Some(mut o) => {
                o.push_str(&s[copied..]);
                o
            }
            None => s.to_string(),
        }
    }

    /// True when some old prefix or token occurs at a boundary in `s`.
    pub fn matches(&self, s: &str) -> bool {
        s.char_indices().any(|(i, _)| {
            self.first_bytes[usize::from(s.as_bytes()[i])] && self.rule_at(s, i).is_some()
        })
    }

    /// Rewrites every string value and object key of `v`, recursively.
    pub fn rewrite_json(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                let r = self.rewrite_str(s);
                if r != *s {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.rewrite_json(item)),
            Value::Object(obj) => {
                let entries = std::mem::take(obj);
                for (k, mut val) in entries {
                    self.rewrite_json(&mut val);
                    obj.insert(self.rewrite_str(&k), val);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Rewrites a JSONL text line by line, keeping line order, unknown fields and every byte
    /// outside changed strings. Blank lines are kept; a line that is not JSON is an
    /// [`ProviderError::InvalidBundle`] naming its (1-based) number.
    pub fn rewrite_jsonl(&self, text: &str) -> Result<String> {
        let mut out = String::with_capacity(text.len() + 256);
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let body = line.trim_end_matches(['\n', '\r']);
            let ending = &line[body.len()..];
            if body.trim().is_empty() {
                out.push_str(line);
                continue;
            }
            // Validating first guarantees that every `"` met outside a string below opens one.
            serde_json::from_str::<serde::de::IgnoredAny>(body).map_err(|e| {
                ProviderError::InvalidBundle(format!("line {} is not JSON: {e}", n + 1))
            })?;
            self.rewrite_json_text(body, &mut out);
            out.push_str(ending);
        }
        Ok(out)
    }

    /// Rewrites the string literals of one valid JSON text, copying everything else verbatim.
    fn rewrite_json_text(&self, json: &str, out: &mut String) {
        let bytes = json.as_bytes();
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'"' {
                i += 1;
                continue;
            }
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let end = (i + 1).min(bytes.len());
            i = end;
            let literal = &json[start..end];
            // A literal that does not decode (e.g. a lone surrogate escape) is kept as it is.
            let Ok(decoded) = serde_json::from_str::<String>(literal) else {
                continue;
            };
            let rewritten = self.rewrite_str(&decoded);
            if rewritten == decoded {
                continue;
            }
            out.push_str(&json[copied..start]);
            out.push_str(&Value::String(rewritten).to_string());
            copied = end;
        }
        out.push_str(&json[copied..]);
    }

    /// The longest rule matching at byte `i` of `s` with its boundaries satisfied.
    fn rule_at(&self, s: &str, i: usize) -> Option<&Rule> {
        let rest = &s[i..];
        self.rules.iter().find(|r| {
            rest.starts_with(r.old.as_str())
                && match r.kind {
                    Kind::Path => path_starts_at(s, i) && path_ends_at(s, i + r.old.len()),
                    Kind::Token => token_bounded(s, i, i + r.old.len()),
                }
        })
    }

    /// Builds the rule list from the pairs: each path also in its JSON-escaped form (`\/`), which
    /// occurs when JSON text is embedded inside a string.
    fn compile(&mut self) {
        let mut rules = Vec::new();
        for (old, new) in &self.paths {
            rules.push(Rule {
                old: old.clone(),
                new: new.clone(),
                kind: Kind::Path,
            });
            if old.contains('/') {
                rules.push(Rule {
                    old: old.replace('/', "\\/"),
                    new: new.replace('/', "\\/"),
                    kind: Kind::Path,
                });
            }
        }
        for (old, new) in &self.tokens {
            rules.push(Rule {
                old: old.clone(),
                new: new.clone(),
                kind: Kind::Token,
            });
        }
        // Stable sort: longest first, ties keep the order given.
        rules.sort_by_key(|r| std::cmp::Reverse(r.old.len()));
        let mut first_bytes = [false; 256];
        for r in &rules {
            first_bytes[usize::from(r.old.as_bytes()[0])] = true;
        }
        self.rules = rules;
        self.first_bytes = first_bytes;
    }
}

impl Default for PathMap {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            tokens: Vec::new(),
            rules: Vec::new(),
            first_bytes: [false; 256],
        }
    }
}

/// Drops trailing `/` (a prefix `/a/b/` means `/a/b`).
fn trim_slash(mut s: String) -> String {
    while s.ends_with('/') {
        s.pop();
    }
    s
}

/// Characters that can be part of a path component in the texts we rewrite. Punctuation that
/// usually delimits a path in prose, shell or markup (quotes, `=`, `:`, `,`, brackets,
/// backslash) is not.
fn is_path_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~' | '+' | '@' | '%' | '#')
    } else {
        !c.is_whitespace() && !matches!(c, '‘' | '’' | '“' | '”' | '«' | '»' | '…')
    }
}

/// Whether a path match may start at byte `i` of `s`: at the start, after a non-path character,
/// or right after `://` (a `file:///abs` URL). Never after another path character or `/`, so
/// `/a/b` does not match inside `/x/a/b`.
fn path_starts_at(s: &str, i: usize) -> bool {
    let before = &s[..i];
    match before.chars().next_back() {
        None => true,
        Some('/') => before.ends_with("://"),
        Some(c) => !is_path_char(c),
    }
}

/// Whether a path match may end at byte `j` of `s`: at the end, before `/` or a non-path
/// character, or before a `.` that ends a sentence (followed by the end or a non-path
/// character), as in `Working in /a/b.`.
fn path_ends_at(s: &str, j: usize) -> bool {
    let mut after = s[j..].chars();
    match after.next() {
        None | Some('/') => true,
        Some('.') => match after.next() {
            None => true,
            Some(c) => c != '/' && !is_path_char(c),
        },
        Some(c) => !is_path_char(c),
    }
}

/// Whether a token match spanning `i..j` is not part of a longer `[A-Za-z0-9_-]` word.
fn token_bounded(s: &str, i: usize, j: usize) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    !s[..i].chars().next_back().is_some_and(word) && !s[j..].chars().next().is_some_and(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map() -> PathMap {
        PathMap::new(vec![("/home/a/ws", "/srv/b/proj"), ("/home/a", "/srv/b")])
            .with_tokens(vec![("-home-a-ws", "-srv-b-proj")])
    }

    #[test]
    fn boundaries() {
        let m = map();
        let cases = [
            ("/home/a/ws", "/srv/b/proj"),
            ("/home/a/ws/x.rs", "/srv/b/proj/x.rs"),
            ("cd /home/a/ws && ls", "cd /srv/b/proj && ls"),
            ("\"/home/a/ws\"", "\"/srv/b/proj\""),
            ("PATH=/home/a/bin:/home/a/ws", "PATH=/srv/b/bin:/srv/b/proj"),
            ("<cwd>/home/a/ws</cwd>", "<cwd>/srv/b/proj</cwd>"),
            ("(/home/a/ws)", "(/srv/b/proj)"),
            ("/home/a/ws, /home/a", "/srv/b/proj, /srv/b"),
            ("Working in /home/a/ws.", "Working in /srv/b/proj."),
            ("file:///home/a/ws/x", "file:///srv/b/proj/x"),
            // Longest prefix first: the workspace wins over home.
            ("/home/a/wsx", "/srv/b/wsx"),
            // Not at a boundary: left alone.
            ("/home/ab", "/home/ab"),
            ("/x/home/a/ws", "/x/home/a/ws"),
            ("x/home/a", "x/home/a"),
            ("/home/a.txt", "/home/a.txt"),
            ("/home/a./x", "/home/a./x"),
            ("http://host/home/a", "http://host/home/a"),
            // Tokens.
            (
                "/home/a/.claude/projects/-home-a-ws/memory",
                "/srv/b/.claude/projects/-srv-b-proj/memory",
            ),
            ("-home-a-ws-old", "-home-a-ws-old"),
            ("x-home-a-ws", "x-home-a-ws"),
            // JSON-escaped form inside embedded JSON text.
            (
                "{\"cwd\":\"\\/home\\/a\\/ws\"}",
                "{\"cwd\":\"\\/srv\\/b\\/proj\"}",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(m.rewrite_str(input), want, "input {input:?}");
        }
    }

    #[test]
    fn one_pass_does_not_rewrite_replacements() {
        // A swap: each side would undo the other if replaced text were scanned again.
        let m = PathMap::new(vec![("/a", "/b"), ("/b", "/a")]);
        assert_eq!(m.rewrite_str("/a /b /a/x"), "/b /a /b/x");
    }

    #[test]
    fn normalisation() {
        let m = PathMap::new(vec![
            ("/a/", "/b/"),
            ("/", "/x"),
            ("/c", "/c"),
            ("/a", "/z"),
        ]);
        assert_eq!(m.rewrite_str("/a/q /c /"), "/b/q /c /");
        assert!(PathMap::new(Vec::<(String, String)>::new()).is_empty());
    }

    #[test]
    fn json_values_and_keys() {
        let m = map();
        let mut v = json!({
            "cwd": "/home/a/ws",
            "/home/a/ws/k": [1, "/home/a/ws/f", {"n": null, "t": true}],
            "other": "/home/ab",
        });
        m.rewrite_json(&mut v);
        assert_eq!(
            v,
            json!({
                "cwd": "/srv/b/proj",
                "/srv/b/proj/k": [1, "/srv/b/proj/f", {"n": null, "t": true}],
                "other": "/home/ab",
            })
        );
    }

    #[test]
    fn jsonl_keeps_bytes_and_order() {
        let m = map();
        let text = "{\"z\":1, \"cwd\":\"\\/home\\/a\\/ws\",\"n\":1.50}\n\n{\"b\":\"x\",\"a\":\"/home/a\"}\r\n{}";
        let out = m.rewrite_jsonl(text).unwrap();
        assert_eq!(
            out,
            "{\"z\":1, \"cwd\":\"/srv/b/proj\",\"n\":1.50}\n\n{\"b\":\"x\",\"a\":\"/srv/b\"}\r\n{}"
        );
    }

    #[test]
    fn jsonl_rejects_non_json_with_line_number() {
        let err = map().rewrite_jsonl("{}\n{}\nnot json\n").unwrap_err();
        assert!(matches!(err, ProviderError::InvalidBundle(ref m) if m.contains("line 3")));
    }

    /// Old prefixes live under `/home` and `-home`, new ones under `/NEW` and `-NEW`; fillers
    /// use lowercase and punctuation only, so inputs never contain a new prefix.
    fn maps() -> impl Strategy<Value = PathMap> {
        ("[a-z]{1,4}", "[a-z]{1,4}", "[A-Z]{1,4}", "[A-Z]{1,4}").prop_map(|(u, w, nu, nw)| {
            let (old_home, new_home) = (format!("/home/{u}"), format!("/NEW/{nu}"));
            let (old_ws, new_ws) = (format!("{old_home}/{w}"), format!("/NEW/{nu}/{nw}"));
            PathMap::new(vec![(old_ws.clone(), new_ws.clone()), (old_home, new_home)])
                .with_tokens(vec![(crate::enc::enc(&old_ws), crate::enc::enc(&new_ws))])
        })
    }

    /// Pieces that place old prefixes in many positions, glued with fillers.
    fn text_for(m: &PathMap) -> BoxedStrategy<String> {
        let mut olds: Vec<String> = m.paths.iter().map(|(o, _)| o.clone()).collect();
        olds.extend(m.tokens.iter().map(|(o, _)| o.clone()));
        let piece =
            (0..olds.len(), 0..8usize, "[a-z0-9._/-]{0,6}").prop_map(move |(k, how, tail)| {
                let o = &olds[k];
                match how {
                    0 => o.clone(),
                    1 => format!("{o}/{tail}"),
                    2 => format!("\"{o}\""),
                    3 => format!("{o}X{tail}"),
                    4 => format!("x{o}"),
                    5 => format!("{o}.{tail}"),
                    6 => o.replace('/', "\\/"),
                    _ => format!("file://{o}"),
                }
            });
        let filler = "[a-z0-9 \"=:(<),./\\\\-]{0,5}";
        proptest::collection::vec((filler, piece), 0..8)
            .prop_map(|parts| parts.into_iter().map(|(f, p)| f + &p).collect::<String>())
            .boxed()
    }

    fn map_and_text() -> impl Strategy<Value = (PathMap, String)> {
        maps().prop_flat_map(|m| {
            let t = text_for(&m);
            (Just(m), t)
        })
    }

    fn map_and_json() -> impl Strategy<Value = (PathMap, Value)> {
        maps().prop_flat_map(|m| {
            let leaf = prop_oneof![
                text_for(&m).prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
                Just(Value::Null),
            ];
            let keys = text_for(&m);
            let doc = leaf.prop_recursive(3, 24, 4, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(keys.clone(), inner, 0..4)
                        .prop_map(|o| Value::Object(o.into_iter().collect())),
                ]
            });
            (Just(m), doc)
        })
    }

    proptest! {
        #[test]
        fn str_round_trip((m, s) in map_and_text()) {
            prop_assume!(!m.inverse().matches(&s));
            let r = m.rewrite_str(&s);
            prop_assert!(!m.matches(&r), "old prefix survived in {r:?}");
            prop_assert_eq!(m.inverse().rewrite_str(&r), s);
        }

        #[test]
        fn json_round_trip((m, v) in map_and_json()) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assume!(!m.inverse().matches(&text));
            let mut r = v.clone();
            m.rewrite_json(&mut r);
            prop_assert!(!m.matches(&serde_json::to_string(&r).unwrap()));
            m.inverse().rewrite_json(&mut r);
            prop_assert_eq!(&r, &v);

            // The same document as JSONL, byte for byte.
            let lines = format!("{text}\n{text}\n");
            let out = m.rewrite_jsonl(&lines).unwrap();
            prop_assert_eq!(m.inverse().rewrite_jsonl(&out).unwrap(), lines);
        }
    }
}
