//! `hashFiles(patterns…)`: which files a call selects, in which order, and how
//! their digests combine (spec `actions-runtime.md` §6). Pure: the executor
//! lists candidate files in the guest and hashes them there; this module
//! decides everything else.
//!
//! The semantics are those of GitHub's runner, whose helper drives
//! `@actions/glob` (0.4) and minimatch (3.x) with `dot`, `nobrace`, `noext`,
//! `nocomment` and `nonegate`:
//! - Arguments are joined with newlines; each line is trimmed; empty lines and
//!   lines starting with `#` are skipped. A leading `!` (repeatable) negates.
//! - `*`, `?`, `[...]` (with `!`/`^` negation and ranges) and `**` (whole
//!   segments only). No braces, no extglobs. `\` escapes the next character.
//! - Relative patterns are rooted at the workspace; a leading `./` too; a
//!   leading `~/` at the home directory. `.` (except leading) and `..`
//!   segments are errors.
//! - A trailing `/` matches directories only. A pattern that does not end in
//!   `**` (or ends in `/`) also matches everything below what it matches.
//! - Patterns apply in order: a positive pattern adds, a negative one removes
//!   (bitwise over "matches as directory" and "matches as file"); the last
//!   pattern that matches decides.
//! - Only files strictly inside `<workspace>/` count; directories are skipped;
//!   dotfiles are included.
//! - Order: one search root per distinct literal prefix (in pattern order,
//!   roots below another root dropped), each walked depth-first with a
//!   directory's entries in byte order, i.e. component-wise byte order.
//! - The result is the lowercase hex SHA-256 over the concatenated raw 32-byte
//!   SHA-256 digests of the files, or `''` when no file matched.

use sha2::{Digest, Sha256};
use std::cmp::Ordering;

/// The one option `hashFiles` accepts, as its first argument.
pub const FOLLOW_SYMLINKS: &str = "--follow-symbolic-links";
/// At most this many arguments (GitHub's limit).
pub const MAX_ARGS: usize = 255;

/// A parsed `hashFiles(...)` call, resolved against a workspace and home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `--follow-symbolic-links` was given: symlinked directories are
    /// descended and broken symlinks are ignored.
    pub follow_symlinks: bool,
    /// The patterns in order, each followed by its implicit-descendants form.
    patterns: Vec<Pattern>,
    workspace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    negate: bool,
    /// Segments below `/`.
    segs: Vec<Seg>,
    /// The pattern ended with `/`: it matches directories only.
    dirs_only: bool,
    /// Added for implicit descendants (matched without the trailing-slash quirk).
    implicit: bool,
    /// The literal path before the first glob segment.
    search_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: any number of segments.
    Globstar,
    /// A segment without glob characters (escapes removed).
    Literal(String),
    /// A segment with glob characters; never matches an empty name.
    Glob(Vec<Tok>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`
    Any,
    /// `*`
    Star,
    /// `[...]`: inclusive ranges; a single character is a range of one.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// What a path matches as: the bits of `@actions/glob`'s `MatchKind`.
const MATCH_DIR: u8 = 1;
const MATCH_FILE: u8 = 2;
const MATCH_ALL: u8 = MATCH_DIR | MATCH_FILE;

/// What the guest found at a candidate path (after following symlinks when
/// the query follows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, or a symlink to one.
    File,
    /// A symlink to a directory that is not descended (skipped, like directories).
    SymlinkToDir,
    /// A symlink whose target does not exist.
    Broken,
    /// A FIFO, socket or device (or a symlink to one): it cannot be hashed.
    Special,
}

/// One candidate below a search root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The absolute path as found (symlinks in it not resolved); raw bytes.
    pub path: Vec<u8>,
    pub kind: EntryKind,
}

/// Parses the evaluated arguments of a `hashFiles` call. `workspace` roots
/// relative patterns, `home` replaces a leading `~`. The error is for users.
pub fn parse_query(args: &[String], workspace: &str, home: &str) -> Result<Query, String> {
    if args.is_empty() || args.len() > MAX_ARGS {
        return Err(format!(
            "hashFiles() takes 1 to {MAX_ARGS} arguments, got {}",
            args.len()
        ));
    }
    let mut follow_symlinks = false;
    let mut rest = args;
    if let Some(first) = args.first().filter(|a| a.starts_with("--")) {
        if !first.eq_ignore_ascii_case(FOLLOW_SYMLINKS) {
            return Err(format!(
                "hashFiles(): invalid option `{first}`; the only option is `{FOLLOW_SYMLINKS}`, \
                 as the first argument"
            ));
        }
        follow_symlinks = true;
        rest = &args[1..];
    }
    let workspace = workspace.trim_end_matches('/');
    let home = home.trim_end_matches('/');
    let mut patterns = Vec::new();
    for line in rest.join("\n").split('\n').map(js_trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p = parse_pattern(line, workspace, home)?;
        let implicit = (p.dirs_only || p.segs.last() != Some(&Seg::Globstar)).then(|| {
            let mut segs = p.segs.clone();
            segs.push(Seg::Globstar);
            Pattern {
                negate: p.negate,
                segs,
                dirs_only: false,
                implicit: true,
                search_path: p.search_path.clone(),
            }
        });
        patterns.push(p);
        patterns.extend(implicit);
    }
    Ok(Query {
        follow_symlinks,
        patterns,
        workspace: workspace.to_string(),
    })
}

/// JavaScript's `String.prototype.trim` (it differs from Rust's at U+0085 and U+FEFF).
fn js_trim(s: &str) -> &str {
    let ws = |c: char| c != '\u{85}' && (c.is_whitespace() || c == '\u{feff}');
    s.trim_matches(ws)
}

/// Collapses repeated `/`.
fn normalize_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn parse_pattern(line: &str, workspace: &str, home: &str) -> Result<Pattern, String> {
    let mut negate = false;
    let mut text = line;
    while let Some(r) = text.strip_prefix('!') {
        negate = !negate;
        text = js_trim(r);
    }
    if text.is_empty() {
        return Err(format!(
            "hashFiles(): invalid pattern `{line}`: nothing follows the `!`"
        ));
    }
    let text = normalize_slashes(text);
    let dirs_only = text.ends_with('/') && text != "/";
    let body = if dirs_only {
        &text[..text.len() - 1]
    } else {
        &text[..]
    };
    let raw: Vec<&str> = body.split('/').collect();
    for (i, s) in raw.iter().enumerate() {
        let lit = literal(s);
        if lit.as_deref() == Some("..") || (lit.as_deref() == Some(".") && i > 0) {
            return Err(format!(
                "hashFiles(): invalid pattern `{line}`: `.` and `..` segments are not allowed \
                 (only a leading `./`); patterns are relative to the workspace"
            ));
        }
    }
    // The root the pattern starts from, as literal segments.
    let (root, user): (&str, &[&str]) = match raw.first() {
        Some(&"") => ("", &raw[1..]),
        Some(&".") => (workspace, &raw[1..]),
        Some(&"~") => (home, &raw[1..]),
        _ => (workspace, &raw[..]),
    };
    let mut segs: Vec<Seg> = root
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| Seg::Literal(s.to_string()))
        .collect();
    segs.extend(
        user.iter()
            .filter(|s| !s.is_empty())
            .map(|s| parse_segment(s)),
    );
    let mut search_path = String::new();
    for s in root.split('/').filter(|s| !s.is_empty()) {
        search_path.push('/');
        search_path.push_str(s);
    }
    for s in user.iter().filter(|s| !s.is_empty()) {
        match literal(s) {
            Some(l) => {
                search_path.push('/');
                search_path.push_str(&l);
            }
            None => break,
        }
    }
    if search_path.is_empty() {
        search_path.push('/');
    }
    Ok(Pattern {
        negate,
        segs,
        dirs_only,
        implicit: false,
        search_path,
    })
}

/// `@actions/glob`'s literal form of a segment: escapes removed and
/// one-character sets (`[a]`) unwrapped; `None` when it has glob characters.
fn literal(seg: &str) -> Option<String> {
    let c: Vec<char> = seg.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' if i + 1 < c.len() => {
                out.push(c[i + 1]);
                i += 2;
                continue;
            }
            '*' | '?' => return None,
            '[' if i + 1 < c.len() => {
                let mut set = String::new();
                let mut closed = None;
                let mut j = i + 1;
                while j < c.len() {
                    if c[j] == '\\' && j + 1 < c.len() {
                        set.push(c[j + 1]);
                        j += 2;
                        continue;
                    }
                    if c[j] == ']' {
                        closed = Some(j);
                        break;
                    }
                    set.push(c[j]);
                    j += 1;
                }
                if let Some(end) = closed {
                    if set.chars().count() > 1 {
                        return None;
                    }
                    if !set.is_empty() {
                        out.push_str(&set);
                        i = end + 1;
                        continue;
                    }
                }
            }
            _ => {}
        }
        out.push(c[i]);
        i += 1;
    }
    Some(out)
}

/// Parses one segment the way minimatch does with `noext`.
fn parse_segment(seg: &str) -> Seg {
    if seg == "**" {
        return Seg::Globstar;
    }
    let chars: Vec<char> = seg.chars().collect();
    let (toks, magic) = tokens(&chars);
    if magic {
        Seg::Glob(toks)
    } else {
        Seg::Literal(
            toks.iter()
                .map(|t| match t {
                    Tok::Lit(c) => *c,
                    _ => '?',
                })
                .collect(),
        )
    }
}

/// Tokens of a segment and whether any of them is a glob.
fn tokens(c: &[char]) -> (Vec<Tok>, bool) {
    let mut out = Vec::new();
    let mut magic = false;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' if i + 1 < c.len() => {
                out.push(Tok::Lit(c[i + 1]));
                i += 2;
            }
            '*' => {
                if out.last() != Some(&Tok::Star) {
                    out.push(Tok::Star);
                }
                magic = true;
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                magic = true;
                i += 1;
            }
            '[' => match class(c, i) {
                Some((tok, end)) => {
                    out.push(tok);
                    magic = true;
                    i = end + 1;
                }
                None => {
                    // Unclosed or invalid: a literal `[`; what follows is
                    // parsed normally (minimatch re-parses it the same way).
                    out.push(Tok::Lit('['));
                    i += 1;
                }
            },
            ch => {
                out.push(Tok::Lit(ch));
                i += 1;
            }
        }
    }
    (out, magic)
}

/// A character class starting at `c[start] == '['`: the token and the index
/// of its `]`, or `None` when it is unclosed or invalid (a reversed range).
fn class(c: &[char], start: usize) -> Option<(Tok, usize)> {
    let mut i = start + 1;
    let mut negated = false;
    if matches!(c.get(i), Some('!' | '^')) {
        negated = true;
        i += 1;
    }
    // (character, was it a bare `-`)
    let mut items: Vec<(char, bool)> = Vec::new();
    let mut end = None;
    while i < c.len() {
        match c[i] {
            '\\' if i + 1 < c.len() => {
                // minimatch keeps an escaped `-` as a bare `-` in its regexp.
                items.push((c[i + 1], c[i + 1] == '-'));
                i += 2;
                continue;
            }
            ']' if i != start + 1 => {
                end = Some(i);
                break;
            }
            ch => items.push((ch, ch == '-')),
        }
        i += 1;
    }
    let end = end?;
    let mut ranges = Vec::new();
    let mut k = 0;
    while k < items.len() {
        let (a, _) = items[k];
        if k + 2 < items.len() && items[k + 1].1 {
            let (b, _) = items[k + 2];
            if a > b {
                return None;
            }
            ranges.push((a, b));
            k += 3;
        } else {
            ranges.push((a, a));
            k += 1;
        }
    }
    Some((Tok::Class { negated, ranges }, end))
}

/// Whether `name` (one path segment) matches a glob segment's tokens.
fn glob_match(toks: &[Tok], name: &[char]) -> bool {
    if name.is_empty() {
        return false;
    }
    let one = |t: &Tok, ch: char| match t {
        Tok::Lit(c) => *c == ch,
        Tok::Any => true,
        Tok::Class { negated, ranges } => {
            ranges.iter().any(|(a, b)| (*a..=*b).contains(&ch)) != *negated
        }
        Tok::Star => false,
    };
    let (mut t, mut n) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while n < name.len() {
        if t < toks.len() && toks[t] == Tok::Star {
            back = Some((t, n));
            t += 1;
        } else if t < toks.len() && one(&toks[t], name[n]) {
            t += 1;
            n += 1;
        } else if let Some((bt, bn)) = back {
            t = bt + 1;
            n = bn + 1;
            back = Some((bt, bn + 1));
        } else {
            return false;
        }
    }
    toks[t..].iter().all(|x| *x == Tok::Star)
}

fn seg_match(seg: &Seg, name: &str) -> bool {
    match seg {
        Seg::Globstar => true,
        Seg::Literal(l) => l == name,
        Seg::Glob(toks) => glob_match(toks, &name.chars().collect::<Vec<_>>()),
    }
}

/// minimatch's segment matching: `**` matches zero or more segments, but a
/// trailing `**` at least one (an empty one counts); a trailing empty file
/// segment (from a trailing `/`) is ignored at the end.
fn segs_match(p: &[Seg], f: &[&str]) -> bool {
    match p.split_first() {
        None => f.is_empty() || f == [""],
        Some((Seg::Globstar, [])) => !f.is_empty(),
        Some((Seg::Globstar, rest)) => (0..=f.len()).any(|k| segs_match(rest, &f[k..])),
        Some((seg, rest)) => match f.split_first() {
            Some((name, tail)) => seg_match(seg, name) && segs_match(rest, tail),
            None => false,
        },
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> u8 {
        let mut f: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // `@actions/glob` appends a `/` when the pattern ends in `**`, so
        // `a/**` matches `a` itself (not for the implicit form).
        if self.segs.last() == Some(&Seg::Globstar) && !self.implicit {
            f.push("");
        }
        if !segs_match(&self.segs, &f) {
            0
        } else if self.dirs_only {
            MATCH_DIR
        } else {
            MATCH_ALL
        }
    }
}

impl Query {
    /// The match bits of `path` over all patterns, in order.
    fn match_kind(&self, path: &str) -> u8 {
        self.patterns.iter().fold(0, |acc, p| {
            if p.negate {
                acc & !p.matches(path)
            } else {
                acc | p.matches(path)
            }
        })
    }

    /// Whether `path` (absolute) is selected as a file.
    pub fn matches_file(&self, path: &str) -> bool {
        self.match_kind(path) & MATCH_FILE != 0
    }

    /// The directories (or files) to list, in order: one per distinct literal
    /// prefix of a positive pattern, without those below another. Roots that
    /// cannot hold a workspace file are dropped, and a root above the
    /// workspace is narrowed to the workspace (what lies beside it is
    /// filtered out anyway).
    pub fn search_roots(&self) -> Vec<String> {
        let positive: Vec<&str> = self
            .patterns
            .iter()
            .filter(|p| !p.negate)
            .map(|p| p.search_path.as_str())
            .collect();
        let mut roots: Vec<&str> = Vec::new();
        for &sp in &positive {
            if roots.contains(&sp) {
                continue;
            }
            let below_another = ancestors(sp).any(|a| positive.contains(&a));
            if !below_another {
                roots.push(sp);
            }
        }
        let ws_prefix = format!("{}/", self.workspace);
        let mut out: Vec<String> = Vec::new();
        for r in roots {
            let narrowed = if r.starts_with(&ws_prefix) {
                r.to_string()
            } else if r == self.workspace || ancestors(&self.workspace).any(|a| a == r) {
                self.workspace.clone()
            } else {
                continue;
            };
            if !out.contains(&narrowed) {
                out.push(narrowed);
            }
        }
        out
    }

    /// The files to hash, in order, from the entries found under each search
    /// root (`per_root[i]` under `search_roots()[i]`, in any order). Fails
    /// when a selected path cannot be hashed (a broken symlink without
    /// `--follow-symbolic-links`, a FIFO or device, a name that is not UTF-8).
    pub fn select(&self, per_root: Vec<Vec<Entry>>) -> Result<Vec<Vec<u8>>, String> {
        let ws_prefix = format!("{}/", self.workspace);
        let mut out = Vec::new();
        for mut entries in per_root {
            entries.sort_by(|a, b| component_order(&a.path, &b.path));
            for e in entries {
                let text = String::from_utf8_lossy(&e.path);
                if !self.matches_file(&text) || !text.starts_with(&ws_prefix) {
                    continue;
                }
                let shown = text.strip_prefix(&ws_prefix).unwrap_or(&text);
                if std::str::from_utf8(&e.path).is_err() {
                    return Err(format!(
                        "hashFiles(): cannot hash `{shown}`: its name is not valid UTF-8"
                    ));
                }
                match e.kind {
                    EntryKind::File => out.push(e.path),
                    EntryKind::SymlinkToDir => {}
                    EntryKind::Broken => {
                        return Err(format!(
                            "hashFiles(): `{shown}` is a broken symbolic link; exclude it with \
                             a `!` pattern or pass `{FOLLOW_SYMLINKS}` first (broken links are \
                             then skipped)"
                        ));
                    }
                    EntryKind::Special => {
                        return Err(format!(
                            "hashFiles(): `{shown}` is not a regular file (a FIFO, socket or \
                             device) and cannot be hashed; exclude it with a `!` pattern"
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Proper ancestors of an absolute path, nearest first (`/a/b` → `/a`, `/`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(path);
    std::iter::from_fn(move || {
        let p = cur?;
        let parent = match p.rfind('/') {
            Some(0) if p.len() > 1 => "/",
            Some(0) | None => {
                cur = None;
                return None;
            }
            Some(i) => &p[..i],
        };
        cur = Some(parent);
        Some(parent)
    })
}

/// Depth-first order with each directory's entries in byte order: compare
/// path components as bytes (`a/x` before `a.txt`).
pub fn component_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Combines per-file SHA-256 digests: SHA-256 over their concatenation, as
/// lowercase hex; `""` when there are none.
pub fn combine(digests: &[[u8; 32]]) -> String {
    if digests.is_empty() {
        return String::new();
    }
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a digest.
pub fn parse_hex_digest(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
