//! `hashFiles()` through the executor on local guests (real shells, real
//! `find` and SHA-256 tools on the host), against a fixture tree an earlier
//! step creates. The expected values are computed here with the algorithm of
//! the spec (walk depth-first in byte order, SHA-256 per file, SHA-256 over
//! the raw digests), independently of Solstice's code. The same job runs
//! under the host's `sh`, under busybox (its `sh`, `find`, `od`, `tr` and
//! `sha256sum` applets only) and under ksh93 with `openssl` as the only
//! SHA-256 tool (the `digest`-style "hash last" output).

use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::json;
use sha2::{Digest, Sha256};
use solstice::config::GuestOs;
use solstice::events::Conclusion;
use solstice::executor::run_job;
use solstice::guest::{GuestError, GuestSession, LocalSession, OutputChunk, shell_quote};
use solstice::job::{CheckoutSource, JobSpec};
use solstice::testing::VecSink;
use solstice::workflow::model::parse_workflow;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WORKFLOW: &str = r#"
jobs:
  h:
    outputs:
      key: deps-${{ hashFiles('a.txt', 'a/*') }}
    steps:
      - shell: sh
        run: |
          mkdir -p a src/skip skip sub/dir .github/w node
          printf 'x\n' > a/x; printf 'lock\n' > a/y.lock; printf 't\n' > a.txt
          printf 'h' > .hidden; printf 'w' > .github/w/ci.yml; printf 'c' > Cargo.lock
          printf 'm' > src/main.rs; printf 'z' > src/skip/z.rs; printf 'q' > skip/q.lock
          printf 'd' > sub/dir/deep.lock; printf 'b' > '{a,b}'; printf 's' > 'with space.lock'
          printf 'i' > "it's.lock"; printf 'n' > "$(printf 'new\nline.lock')"; : > empty.lock
          ln -s a.txt link-to-file; ln -s sub link-to-dir
          printf 'o' > ../outside.lock
          i=0; while [ $i -lt 1200 ]; do printf "$i" > node/f$i.lock; i=$((i+1)); done
      - env:
          H_LOCK: ${{ hashFiles('**/*.lock') }}
        shell: sh
        run: echo "lock=$H_LOCK"
      - shell: sh
        run: |
          echo "noskip=${{ hashFiles('**/*.lock', '!**/skip/**') }}"
          echo "src=${{ hashFiles('src/') }}"
          echo "all=${{ hashFiles('**') }}"
          echo "braces=${{ hashFiles('# comment', '{a,b}') }}"
          echo "none=${{ hashFiles('nothing/**') }}"
          echo "follow=${{ hashFiles('--follow-symbolic-links', 'link-to-dir/**') }}"
          echo "nofollow=${{ hashFiles('link-to-dir/**') }}"
          echo "outside=${{ hashFiles('~/**/outside.lock') }}"
      - if: hashFiles('a.txt') != ''
        shell: sh
        run: echo if-ran
      - if: ${{ hashFiles('nothing') != '' }}
        shell: sh
        run: echo if-should-not-run
      - shell: sh
        run: echo "${{ hashFiles('--x', 'a.txt') }}"
      - if: always()
        shell: sh
        run: ln -s missing broken
      - if: always()
        shell: sh
        run: echo "broken=${{ hashFiles('**') }}"
      - if: always()
        shell: sh
        run: echo "follow-all=${{ hashFiles('--follow-symbolic-links', '**') }}"
"#;

/// Runs each command as `<shell> -c ...` with `dir` first on `PATH` (or as
/// the whole `PATH` when `only`).
struct ShellSession {
    bin: PathBuf,
    shell: &'static str,
    only: bool,
}

#[async_trait]
impl GuestSession for ShellSession {
    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError> {
        let bin = shell_quote(self.bin.to_str().unwrap());
        let path = if self.only {
            bin
        } else {
            format!("{bin}:$PATH")
        };
        let inner = format!("PATH={path}; export PATH; {command}");
        let outer = format!("exec {} -c {}", self.shell, shell_quote(&inner));
        LocalSession.exec(&outer, stdin, output).await
    }
}

/// The files a walk of `dir` visits, depth-first with each directory's
/// entries in byte order; symlinked directories only when `follow`; broken
/// symlinks are left out.
fn walk(dir: &Path, rel: &str, follow: bool, out: &mut Vec<(String, Vec<u8>)>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let rel = format!("{rel}{}", name.to_str().unwrap());
        let lmeta = std::fs::symlink_metadata(&path).unwrap();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !lmeta.file_type().is_symlink() || follow {
                walk(&path, &format!("{rel}/"), follow, out);
            }
        } else {
            out.push((rel, std::fs::read(&path).unwrap()));
        }
    }
}

/// The contents of the files whose workspace-relative path passes `keep`, in
/// walk order.
fn files(ws: &Path, follow: bool, keep: impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    walk(ws, "", follow, &mut all);
    all.into_iter()
        .filter(|(rel, _)| keep(rel))
        .map(|(_, bytes)| bytes)
        .collect()
}

/// The spec's digest of the files whose workspace-relative path passes `keep`.
fn expected(ws: &Path, follow: bool, keep: impl Fn(&str) -> bool) -> String {
    combine(files(ws, follow, keep))
}

/// SHA-256 over the raw SHA-256 digests of `contents`; `""` for none.
fn combine(contents: Vec<Vec<u8>>) -> String {
    if contents.is_empty() {
        return String::new();
    }
    let mut outer = Sha256::new();
    for bytes in contents {
        outer.update(Sha256::digest(&bytes));
    }
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn check(session: &dyn GuestSession, what: &str, home: &Path) {
    let spec = JobSpec {
        workflow: parse_workflow(WORKFLOW).unwrap(),
        job_id: "h".into(),
        matrix: IndexMap::new(),
        github: json!({"repository": "acme/w"}),
        secrets: BTreeMap::new(),
        vars: BTreeMap::new(),
        inputs: json!({}),
        needs: json!({}),
        extra_env: IndexMap::new(),
        checkout: CheckoutSource::None,
        max_job_timeout: None,
        extra_masks: Vec::new(),
        default_actions_url: None,
        actions: None,
        cache: None,
        extra_contexts: Default::default(),
    };
    let runner = crate::support::local_runner(GuestOs::Linux, "r", home);
    let sink = VecSink::default();
    let out = run_job(&spec, &runner, session, &sink, CancellationToken::new()).await;
    let text = sink.all_text();
    let ws = home.join("work/w/w");
    let c: Vec<_> = out.steps.iter().map(|s| s.outcome).collect();
    use Conclusion::*;
    assert_eq!(
        c,
        [
            Success, Success, Success, Success, Skipped, Failure, Success, Failure, Success
        ],
        "{what}: {text}"
    );

    let line = |i: usize, key: &str| -> String {
        let prefix = format!("{key}=");
        sink.step_lines(i)
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{what}: no {key}= in step {i}: {text}"))
    };
    // The lock files (a deep tree, odd names, 1200 of them in one directory).
    let is_lock = |r: &str| r.rsplit('/').next().unwrap().ends_with(".lock");
    let lock = expected(&ws, false, is_lock);
    assert_eq!(lock.len(), 64);
    assert_eq!(line(1, "lock"), lock, "{what}");
    let noskip = expected(&ws, false, |r| {
        is_lock(r) && !r.split('/').any(|c| c == "skip")
    });
    assert_ne!(noskip, lock);
    assert_eq!(line(2, "noskip"), noskip, "{what}");
    assert_eq!(
        line(2, "src"),
        expected(&ws, false, |r| r.starts_with("src/")),
        "{what}"
    );
    // Everything: dotfiles, the symlink to a file, not the one to a directory.
    let all = expected(&ws, false, |_| true);
    assert_eq!(line(2, "all"), all, "{what}");
    assert_eq!(
        line(2, "braces"),
        expected(&ws, false, |r| r == "{a,b}"),
        "{what}"
    );
    assert_eq!(line(2, "none"), "", "{what}");
    let follow = expected(&ws, true, |r| r.starts_with("link-to-dir/"));
    assert_eq!(follow.len(), 64);
    assert_eq!(line(2, "follow"), follow, "{what}");
    assert_eq!(line(2, "nofollow"), "", "{what}");
    assert_eq!(line(2, "outside"), "", "{what}");
    assert_eq!(sink.step_lines(3), ["if-ran"], "{what}");
    assert!(
        text.contains(
            "hashFiles(): invalid option `--x`; the only option is `--follow-symbolic-links`"
        ),
        "{what}: {text}"
    );
    assert!(
        text.contains("hashFiles(): `broken` is a broken symbolic link"),
        "{what}: {text}"
    );
    // With the flag, the broken link is skipped and the linked directory is
    // descended.
    let follow_all = expected(&ws, true, |_| true);
    assert_ne!(follow_all, all);
    assert_eq!(line(8, "follow-all"), follow_all, "{what}");
    // Job outputs are evaluated after the steps, in the guest too.
    // Two search roots, `a.txt` then `a`, in the order of the patterns: the
    // file comes first here, unlike in one walk of the workspace.
    let mut both = files(&ws, false, |r| r == "a.txt");
    both.extend(files(&ws, false, |r| r.starts_with("a/")));
    let key = combine(both);
    assert_ne!(
        key,
        expected(&ws, false, |r| r == "a.txt" || r.starts_with("a/"))
    );
    assert_eq!(out.outputs["key"], format!("deps-{key}"), "{what}");
}

#[tokio::test]
async fn host_sh() {
    let dir = tempfile::tempdir().unwrap();
    check(&LocalSession, "host sh", dir.path()).await;
}

/// A `bin` directory for a `PATH` of its own: every busybox applet.
fn busybox_bin(dir: &Path, except: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for a in String::from_utf8(list.stdout).unwrap().lines() {
        if except.contains(&a) {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", bin.join(a)).unwrap();
    }
    bin
}

/// A `bin` directory with every command of the host's `/usr/bin` and `/bin`
/// but the SHA-256 tools before openssl in the guest's order of preference,
/// and ksh93 as `sh`.
fn ksh93_openssl_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["/usr/bin", "/bin"] {
        for e in std::fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name();
            let n = name.to_str().unwrap_or("");
            if ["sha256sum", "digest", "shasum", "sh"].contains(&n) || bin.join(n).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(Path::new(d).join(n), bin.join(n));
        }
    }
    std::os::unix::fs::symlink("/bin/ksh93", bin.join("sh")).unwrap();
    bin
}

#[tokio::test]
async fn busybox_applets_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShellSession {
        bin: busybox_bin(dir.path(), &[]),
        shell: "/bin/busybox sh",
        only: true,
    };
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    check(&s, "busybox", &home).await;
}

#[tokio::test]
async fn ksh93_with_openssl_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShellSession {
        bin: ksh93_openssl_bin(dir.path()),
        shell: "/bin/ksh93",
        only: true,
    };
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    check(&s, "ksh93 + openssl", &home).await;
}

/// A job that timed out still hashes files for its `if: always()` steps.
#[tokio::test]
async fn always_steps_after_the_job_timeout_still_hash() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec {
        workflow: parse_workflow(
            "jobs:\n  h:\n    timeout-minutes: 0.05\n    steps:\n      - shell: sh\n        \
             run: printf x > f; sleep 20\n      - if: always()\n        shell: sh\n        \
             run: echo \"h=${{ hashFiles('f') }}\"\n",
        )
        .unwrap(),
        job_id: "h".into(),
        matrix: IndexMap::new(),
        github: json!({"repository": "acme/w"}),
        secrets: BTreeMap::new(),
        vars: BTreeMap::new(),
        inputs: json!({}),
        needs: json!({}),
        extra_env: IndexMap::new(),
        checkout: CheckoutSource::None,
        max_job_timeout: None,
        extra_masks: Vec::new(),
        default_actions_url: None,
        actions: None,
        cache: None,
        extra_contexts: Default::default(),
    };
    let runner = crate::support::local_runner(GuestOs::Linux, "r", dir.path());
    let sink = VecSink::default();
    let out = run_job(
        &spec,
        &runner,
        &LocalSession,
        &sink,
        CancellationToken::new(),
    )
    .await;
    assert!(out.timed_out, "{}", sink.all_text());
    assert_eq!(
        sink.step_lines(1),
        [format!("h={}", combine(vec![b"x".to_vec()]))],
        "{}",
        sink.all_text()
    );
}

/// A guest without any SHA-256 tool: the step fails and says what to install.
#[tokio::test]
async fn no_sha256_tool_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // dash, not busybox sh: that one runs its own applets even when they
    // are not on PATH.
    let bin = busybox_bin(dir.path(), &["sha256sum", "sh"]);
    std::os::unix::fs::symlink("/bin/dash", bin.join("sh")).unwrap();
    let s = ShellSession {
        bin,
        shell: "/bin/dash",
        only: true,
    };
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let spec = JobSpec {
        workflow: parse_workflow(
            "jobs:\n  h:\n    steps:\n      - shell: sh\n        run: echo x > f\n      \
             - shell: sh\n        run: echo \"${{ hashFiles('f') }}\"\n      \
             - shell: sh\n        run: echo \"[${{ hashFiles('nothing') }}]\"\n",
        )
        .unwrap(),
        job_id: "h".into(),
        matrix: IndexMap::new(),
        github: json!({"repository": "acme/w"}),
        secrets: BTreeMap::new(),
        vars: BTreeMap::new(),
        inputs: json!({}),
        needs: json!({}),
        extra_env: IndexMap::new(),
        checkout: CheckoutSource::None,
        max_job_timeout: None,
        extra_masks: Vec::new(),
        default_actions_url: None,
        actions: None,
        cache: None,
        extra_contexts: Default::default(),
    };
    let runner = crate::support::local_runner(GuestOs::Linux, "r", &home);
    let sink = VecSink::default();
    let out = run_job(&spec, &runner, &s, &sink, CancellationToken::new()).await;
    let text = sink.all_text();
    let c: Vec<_> = out.steps.iter().map(|s| s.outcome).collect();
    assert_eq!(
        c,
        [
            Conclusion::Success,
            Conclusion::Failure,
            Conclusion::Skipped
        ],
        "{text}"
    );
    assert!(
        text.contains(
            "hashing 1 file in the guest failed (exit status 3): no SHA-256 tool in the guest: \
             hashFiles() needs sha256sum, digest (illumos), shasum or openssl on PATH \
             (in `hashFiles('f')`)"
        ),
        "{text}"
    );
}
