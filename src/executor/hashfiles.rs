//! `hashFiles()` in the guest, without node: one exec lists the candidate
//! files under the search roots with portable `find` (no `-print0`, no
//! `-printf`), the host matches and orders them
//! ([`crate::workflow::hashfiles`]), a second exec hashes the selected files
//! with whatever the guest has (`sha256sum`, illumos `digest -a sha256`,
//! `shasum -a 256`, `openssl dgst -sha256`), and the host combines the
//! digests. Paths travel as lines; a path with a newline travels hex-encoded
//! (`od`) and is hashed on its own.

use std::time::Duration;

use tokio::sync::mpsc;

use super::runtime::Runtime;
use crate::guest::{OutputChunk, Stream, shell_quote};
use crate::workflow::expr::{Contexts, pending_hash_files};
use crate::workflow::hashfiles::{self, Entry, EntryKind};

/// Upper bound for each of the two execs of one call, as GitHub's runner
/// allows its helper.
const HASH_FILES_LIMIT: Duration = Duration::from_secs(120);
/// Paths per digest command line, and their total size: far below the
/// smallest `ARG_MAX` of the guests (illumos, busybox).
const BATCH_FILES: usize = 500;
const BATCH_BYTES: usize = 64 * 1024;

impl Runtime<'_> {
    /// Fills `ctx.hash_files` for every `hashFiles` call that evaluating
    /// `texts` reaches: templates with `${{ }}`, or bare conditions when
    /// `condition` is true. Err = the message the step fails with.
    pub(super) async fn prepare_hash_files(
        &self,
        ctx: &mut Contexts,
        texts: &[&str],
        condition: bool,
    ) -> Result<(), String> {
        for text in texts {
            while let Some(args) = pending_hash_files(text, condition, ctx) {
                let hash = self
                    .hash_files(&args)
                    .await
                    .map_err(|e| format!("{e} (in `hashFiles({})`)", quoted_args(&args)))?;
                ctx.hash_files.insert(args, hash);
            }
        }
        Ok(())
    }

    /// Computes one call.
    async fn hash_files(&self, args: &[String]) -> Result<String, String> {
        let query = hashfiles::parse_query(args, &self.layout.workspace, &self.layout.home)?;
        let roots = query.search_roots();
        if roots.is_empty() {
            return Ok(String::new());
        }
        let script = list_script(&roots, query.follow_symlinks);
        let (status, out, err) = self.hash_exec(script.as_bytes()).await?;
        let per_root = parse_listing(&out, roots.len(), query.follow_symlinks);
        let per_root = match per_root {
            Some(p) if status == 0 => p,
            _ => {
                return Err(format!(
                    "hashFiles(): listing the files under {} in the guest failed (exit status \
                     {status}): {err}",
                    roots.join(", ")
                ));
            }
        };
        let files = query.select(per_root)?;
        if files.is_empty() {
            return Ok(String::new());
        }
        let (status, out, err) = self.hash_exec(&digest_script(&files)).await?;
        if status != 0 {
            return Err(format!(
                "hashFiles(): hashing {} file{} in the guest failed (exit status {status}): {err}",
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            ));
        }
        let digests = parse_digests(&out, files.len()).ok_or_else(|| {
            format!(
                "hashFiles(): the guest's SHA-256 tool printed something unexpected for {} \
                 files: {}",
                files.len(),
                String::from_utf8_lossy(&out[..out.len().min(300)]).trim()
            )
        })?;
        Ok(hashfiles::combine(&digests))
    }

    /// Runs `script` with `sh` in the guest (on stdin); returns the status,
    /// stdout and the end of stderr.
    async fn hash_exec(&self, script: &[u8]) -> Result<(u32, Vec<u8>, String), String> {
        let path = if self.runner.path_prepend.is_empty() {
            String::new()
        } else {
            format!(
                "PATH={}:\"$PATH\"; export PATH; ",
                shell_quote(&self.runner.path_prepend.join(":"))
            )
        };
        let cmd = format!("{path}exec sh -s");
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
        let exec = self.session.exec(&cmd, script, tx);
        let collect = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some(c) = rx.recv().await {
                match c.stream {
                    Stream::Stdout => out.extend_from_slice(&c.data),
                    Stream::Stderr => err.extend_from_slice(&c.data),
                }
            }
            (out, err)
        };
        let work = async { tokio::join!(exec, collect) };
        // Steps that run after a cancellation or the job's timeout (`if:
        // always()`) still get their hashes, within HASH_FILES_LIMIT.
        let watch_cancel = !self.cancel.is_cancelled();
        let cancelled = async {
            if watch_cancel {
                self.cancel.cancelled().await
            } else {
                std::future::pending().await
            }
        };
        let watch_deadline = std::time::Instant::now() < self.job_deadline;
        let deadline = tokio::time::Instant::from_std(self.job_deadline);
        let timed_out = async {
            if watch_deadline {
                tokio::time::sleep_until(deadline).await
            } else {
                std::future::pending().await
            }
        };
        let (status, (out, err)) = tokio::select! {
            r = work => r,
            _ = cancelled => return Err("hashFiles(): the job was cancelled".into()),
            _ = timed_out => return Err("hashFiles(): the job's time ran out".into()),
            _ = tokio::time::sleep(HASH_FILES_LIMIT) => {
                return Err(format!(
                    "hashFiles() did not finish within {} seconds",
                    HASH_FILES_LIMIT.as_secs()
                ));
            }
        };
        let status = status.map_err(|e| format!("hashFiles(): {e}"))?;
        let err = String::from_utf8_lossy(&err);
        let tail: Vec<&str> = err.trim().lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Ok((status, out, tail.join(" / ")))
    }
}

/// The arguments as they would be written in the expression.
fn quoted_args(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Classifies the path in `$p` by what it points to: `d` directory, `f`
/// regular file, `b` broken symlink, `s` anything else.
const CLASSIFY: &str = "if [ -d \"$p\" ]; then k=d; elif [ -f \"$p\" ]; then k=f; \
     elif [ -h \"$p\" ] && [ ! -e \"$p\" ]; then k=b; else k=s; fi";

/// The listing: per root a `#R` line, then sections of absolute paths, one a
/// line: `#F` regular files (through symlinks when following), `#L`
/// symlinks prefixed with their target's class (not when following), `#S`
/// FIFOs, sockets and devices, `#N` paths containing a newline, classified
/// and hex-encoded. `#E` marks a failed `find`; the exit status says it too.
pub(crate) fn list_script(roots: &[String], follow: bool) -> String {
    let opt = if follow { "-L " } else { "" };
    // `find -exec` runs a fresh `sh`, so this one is spelled out, not a function.
    let hex = shell_quote(&format!(
        "for p do {CLASSIFY}; printf %s \"$k\"; printf %s \"$p\" | od -An -v -tx1 | tr -d ' \\012'; echo; done"
    ));
    let mut s = format!(
        "nl='\n'; fail=0\n\
         sym() {{ while IFS= read -r p; do case $p in '#'*) echo \"$p\"; continue;; esac; \
         {CLASSIFY}; printf '%s%s\\n' \"$k\" \"$p\"; done; }}\n"
    );
    for r in roots {
        let q = shell_quote(r);
        s.push_str("echo '#R'\n");
        if follow {
            s.push_str(&format!("if [ -e {q} ]; then\n"));
        } else {
            // A root that is a symlink is not descended, only classified.
            s.push_str(&format!(
                "if [ -h {q} ]; then echo '#L'; p={q}; {CLASSIFY}; printf '%s%s\\n' \"$k\" \"$p\"\n\
                 elif [ -e {q} ]; then\n"
            ));
        }
        s.push_str(&format!(
            "echo '#F'; find {opt}{q} -path \"*$nl*\" -prune -o -type f -print || {{ fail=1; echo '#E'; }}\n"
        ));
        if !follow {
            s.push_str(&format!(
                "echo '#L'; {{ find {q} -path \"*$nl*\" -prune -o -type l -print || echo '#E'; }} | sym\n"
            ));
        }
        s.push_str(&format!(
            "echo '#S'; find {opt}{q} -path \"*$nl*\" -prune -o ! -type f ! -type d ! -type l -print \
             || {{ fail=1; echo '#E'; }}\n\
             echo '#N'; find {opt}{q} -path \"*$nl*\" ! -type d -exec sh -c {hex} sh {{}} \\; \
             || {{ fail=1; echo '#E'; }}\n\
             fi\n"
        ));
    }
    s.push_str("exit $fail\n");
    s
}

/// Parses the listing into entries per root; `None` when a `find` failed or
/// the roots do not add up.
pub(crate) fn parse_listing(out: &[u8], roots: usize, follow: bool) -> Option<Vec<Vec<Entry>>> {
    let mut per_root: Vec<Vec<Entry>> = Vec::new();
    let mut section = b'F';
    for line in out.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        if line == b"#R" {
            per_root.push(Vec::new());
            continue;
        }
        if line == b"#E" {
            return None;
        }
        if line.len() == 2 && line[0] == b'#' {
            section = line[1];
            continue;
        }
        let kind_of = |k: u8| match k {
            b'f' => EntryKind::File,
            b'd' => EntryKind::SymlinkToDir,
            b'b' => EntryKind::Broken,
            _ => EntryKind::Special,
        };
        let (kind, path) = match section {
            b'F' => (EntryKind::File, line.to_vec()),
            b'S' => (EntryKind::Special, line.to_vec()),
            b'L' => (kind_of(line[0]), line[1..].to_vec()),
            b'N' => (kind_of(line[0]), decode_hex(&line[1..])?),
            _ => return None,
        };
        // With --follow-symbolic-links broken links are skipped, as the
        // runner's glob does.
        if follow && kind == EntryKind::Broken {
            continue;
        }
        per_root.last_mut()?.push(Entry { path, kind });
    }
    (per_root.len() == roots).then_some(per_root)
}

fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// Single-quotes raw bytes for `sh`.
fn quote_bytes(p: &[u8]) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in p {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The digest script: picks a SHA-256 tool, says which output form it has
/// (`#T first`: the digest is a line's first field; `#T last`: its last),
/// then prints one line per file, in order. Batches of paths go on command
/// lines; a path with a newline is hashed alone from stdin.
pub(crate) fn digest_script(files: &[Vec<u8>]) -> Vec<u8> {
    let mut s = b"if command -v sha256sum >/dev/null 2>&1; then h() { sha256sum \"$@\"; }; echo '#T first'\n\
elif command -v digest >/dev/null 2>&1; then h() { digest -a sha256 \"$@\"; }; echo '#T last'\n\
elif command -v shasum >/dev/null 2>&1; then h() { shasum -a 256 \"$@\"; }; echo '#T first'\n\
elif command -v openssl >/dev/null 2>&1; then h() { openssl dgst -sha256 \"$@\"; }; echo '#T last'\n\
else echo 'no SHA-256 tool in the guest: hashFiles() needs sha256sum, digest (illumos), shasum or openssl on PATH' >&2; exit 3; fi\n"
        .to_vec();
    let mut batch: Vec<u8> = Vec::new();
    let mut count = 0;
    let flush = |s: &mut Vec<u8>, batch: &mut Vec<u8>, count: &mut usize| {
        if *count > 0 {
            s.extend_from_slice(b"h");
            s.append(batch);
            s.extend_from_slice(b" </dev/null || exit 4\n");
            *count = 0;
        }
    };
    for f in files {
        if f.contains(&b'\n') {
            flush(&mut s, &mut batch, &mut count);
            s.extend_from_slice(b"h <");
            s.extend_from_slice(&quote_bytes(f));
            s.extend_from_slice(b" || exit 4\n");
            continue;
        }
        batch.push(b' ');
        batch.extend_from_slice(&quote_bytes(f));
        count += 1;
        if count >= BATCH_FILES || batch.len() >= BATCH_BYTES {
            flush(&mut s, &mut batch, &mut count);
        }
    }
    flush(&mut s, &mut batch, &mut count);
    s
}

/// Parses the digest lines (`n` of them after the `#T` line).
pub(crate) fn parse_digests(out: &[u8], n: usize) -> Option<Vec<[u8; 32]>> {
    let text = std::str::from_utf8(out).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = match lines.next()?.trim() {
        "#T first" => true,
        "#T last" => false,
        _ => return None,
    };
    let digests: Vec<[u8; 32]> = lines
        .map(|l| {
            let field = if first {
                l.split_whitespace().next()?.trim_start_matches('\\')
            } else {
                l.split_whitespace().last()?
            };
            hashfiles::parse_hex_digest(&field.to_ascii_lowercase())
        })
        .collect::<Option<_>>()?;
    (digests.len() == n).then_some(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_parsed_per_root_and_section() {
        let out =
            b"#R\n#F\n/w/a\n/w/b c\n#L\nd/w/ld\nf/w/lf\nb/w/lb\n#S\n/w/fifo\n#N\nf2f770a61\n#R\n";
        let roots = parse_listing(out, 2, false).unwrap();
        let got: Vec<(String, EntryKind)> = roots[0]
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("/w/a".to_string(), EntryKind::File),
                ("/w/b c".to_string(), EntryKind::File),
                ("/w/ld".to_string(), EntryKind::SymlinkToDir),
                ("/w/lf".to_string(), EntryKind::File),
                ("/w/lb".to_string(), EntryKind::Broken),
                ("/w/fifo".to_string(), EntryKind::Special),
                ("/w\na".to_string(), EntryKind::File),
            ]
        );
        assert!(roots[1].is_empty());
        // Broken links are dropped when following; a failed find or a
        // missing root is an error.
        assert_eq!(parse_listing(out, 2, true).unwrap()[0].len(), 6);
        assert!(parse_listing(out, 1, false).is_none());
        assert!(parse_listing(b"#R\n#F\n#E\n", 1, false).is_none());
    }

    #[test]
    fn digest_lines_of_every_tool() {
        let a = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
        let e = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let gnu = format!("#T first\n{a}  /w/a\n\\{e}  /w/back\\\\slash\n");
        let illumos = format!("#T last\n(/w/a) = {a}\n{e}\n");
        let openssl = format!("#T last\nSHA2-256(/w/a)= {a}\n(stdin)= {e}\n");
        for out in [gnu, illumos, openssl] {
            let d = parse_digests(out.as_bytes(), 2).unwrap();
            assert_eq!(
                hashfiles::combine(&d),
                hashfiles::combine(&[
                    hashfiles::parse_hex_digest(a).unwrap(),
                    hashfiles::parse_hex_digest(e).unwrap(),
                ])
            );
            assert!(parse_digests(out.as_bytes(), 3).is_none());
        }
        assert!(parse_digests(b"#T first\nnot-a-digest x\n", 1).is_none());
    }

    #[test]
    fn digest_script_batches_and_quotes() {
        let mut files: Vec<Vec<u8>> = (0..1200).map(|i| format!("/w/f{i}").into_bytes()).collect();
        files.insert(3, b"/w/it's".to_vec());
        files.insert(5, b"/w/new\nline".to_vec());
        let s = String::from_utf8(digest_script(&files)).unwrap();
        let calls: Vec<&str> = s.lines().filter(|l| l.starts_with('h')).collect();
        // 3 before the newline file, the newline file alone (two lines), then batches.
        assert!(
            calls[0].starts_with("h '/w/f0' '/w/f1' '/w/f2' '/w/it'\\''s' '/w/f3'"),
            "{}",
            calls[0]
        );
        assert_eq!(calls[0].matches(" '/w/").count(), 5);
        assert_eq!(calls[1], "h <'/w/new");
        assert!(calls.len() >= 4);
    }

    #[test]
    fn scripts_parse_under_sh() {
        for follow in [false, true] {
            let s = list_script(&["/w/a b".into(), "/w/it's".into()], follow);
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .output()
                .unwrap();
            assert!(out.status.success(), "{s}\n{:?}", out.stderr);
        }
    }
}
