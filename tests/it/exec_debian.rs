//! End to end with the Debian guest: real cloud-init consumes Solstice's NoCloud
//! seed (user, key, pinned host key), and a job uses bash, git, sudo and node. The
//! built-in checkout clones inside the guest from a smart-HTTP git server in
//! a test network namespace (`git http-backend`, with a Git LFS batch API) that refuses
//! requests without the job token. GNU tar and GNU date live here, so the
//! guest clock and the cleanliness of the log are checked here too.

use crate::support;

use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use solstice::events::{Conclusion, JobEvent, LineKind};
use solstice::job::CheckoutSource;
use solstice::secret::Secret;
use solstice::testing::VecSink;
use support::git_server::git;
use support::{RunOpts, TestEnv, all_text, step_lines};

const TOKEN: &str = "job-token-7f3a9c2e51";

/// Content of the LFS-tracked file of `octo/media`.
fn lfs_payload() -> Vec<u8> {
    b"large file stored in Git LFS\n".repeat(100)
}

/// Bare repositories under a temporary root, served by a Python server that
/// answers 401 unless the `Authorization` header carries the token as
/// actions/checkout sends it, runs `git http-backend` for git and answers the
/// Git LFS batch API and object downloads itself:
/// - `octo/hello`: `hello.txt`, tag `v1.0`;
/// - `octo/super` → submodule `lib` (`../lib.git`) → submodule `nested`
///   (`../nested.git`), relative URLs on the same server;
/// - `octo/media`: `big.bin` in Git LFS.
struct GitServer {
    served: support::git_server::Served,
    /// Where the server runs: a test network namespace at a documentation
    /// address (guests cannot reach the host's loopback).
    ns: support::netns::Netns,
    sha: String,
    _root: tempfile::TempDir,
}

impl GitServer {
    /// The job's checkout source: `octo/hello` at `main`, with the token.
    fn checkout(&self) -> CheckoutSource {
        CheckoutSource::Remote {
            server_url: self.url(),
            repository: "octo/hello".into(),
            git_ref: "refs/heads/main".into(),
            sha: self.sha.clone(),
            token: Some(Secret::new(TOKEN)),
            host_dir: None,
        }
    }

    fn url(&self) -> String {
        format!("http://{}:{}", self.ns.addr, self.served.port)
    }

    /// The request log: `ok|refused METHOD PATH` per request.
    fn requests(&self) -> String {
        std::fs::read_to_string(&self.served.log).unwrap_or_default()
    }
}

/// Commits `files` and `submodules` (path, url, commit) to a new repository
/// and publishes it as `srv/octo/NAME.git`. Returns the commit.
fn publish(
    root: &std::path::Path,
    name: &str,
    files: &[(&str, &[u8])],
    submodules: &[(&str, &str, &str)],
) -> String {
    let work = root.join("work").join(name);
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    for (path, content) in files {
        std::fs::write(work.join(path), content).unwrap();
        git(&work, &["add", path]);
    }
    if !submodules.is_empty() {
        let mut gm = String::new();
        for (path, url, sha) in submodules {
            gm.push_str(&format!(
                "[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n"
            ));
            git(
                &work,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("160000,{sha},{path}"),
                ],
            );
        }
        std::fs::write(work.join(".gitmodules"), gm).unwrap();
        git(&work, &["add", ".gitmodules"]);
    }
    git(
        &work,
        &["commit", "-q", "-m", &format!("{name}: first commit")],
    );
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let bare = root.join("srv/octo").join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    // As forges do: a reachable commit can be fetched by its id.
    git(
        &bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    sha
}

fn start_git_server() -> GitServer {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("srv/octo")).unwrap();
    let sha = publish(r, "hello", &[("hello.txt", b"hello from the forge\n")], &[]);
    git(&r.join("srv/octo/hello.git"), &["tag", "v1.0", &sha]);
    let nested = publish(
        r,
        "nested",
        &[("nested.txt", b"from the nested submodule\n")],
        &[],
    );
    let lib = publish(
        r,
        "lib",
        &[("lib.txt", b"from the submodule\n")],
        &[("nested", "../nested.git", &nested)],
    );
    publish(
        r,
        "super",
        &[("super.txt", b"from the superproject\n")],
        &[("lib", "../lib.git", &lib)],
    );
    // An LFS pointer as git-lfs writes it; the object is served by the batch API.
    let payload = lfs_payload();
    let oid = {
        use std::io::Write;
        let mut c = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&payload).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    let lfs = r.join("lfs");
    std::fs::create_dir_all(&lfs).unwrap();
    std::fs::write(lfs.join(&oid), &payload).unwrap();
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
        payload.len()
    );
    publish(
        r,
        "media",
        &[
            (
                ".gitattributes",
                b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
            ),
            ("big.bin", pointer.as_bytes()),
        ],
        &[],
    );
    // One address per server: tests in this module run in parallel.
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(80);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = support::netns::create("git", std::net::Ipv4Addr::new(198, 51, 100, n));
    let served = support::git_server::serve_in(&r.join("srv"), &lfs, TOKEN, Some(&ns));
    GitServer {
        served,
        ns,
        sha,
        _root: root,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_cloud_init_consumes_the_seed_and_a_bash_job_clones_with_the_token() {
    let env = TestEnv::debian();
    let server = start_git_server();
    let checkout = server.checkout();

    let yaml = r####"
jobs:
  debian:
    runs-on: debian
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - name: Seeded by real cloud-init
        run: |
          echo "user=$(id -un)"
          iid=$(cat /var/lib/cloud/data/instance-id)
          case "$iid" in solstice-*) echo "instance-id ok";; *) echo "bad instance-id $iid"; exit 1;; esac
          cloud-init status --wait >/dev/null 2>&1 || true
          cloud-init status --long
          grep -q NoCloud /run/cloud-init/result.json && echo "datasource NoCloud"
          echo "hostname=$(hostname)"
      - name: Default shell is GitHub's bash -e, without pipefail
        run: |
          echo "bash ${BASH_VERSION%%.*}"
          set -o | grep -E '^pipefail' | tr -s ' \t' ' '
          false | tee default-pipe.txt
          echo "a failing pipe passed under the default shell"
      - name: An explicit shell bash has pipefail
        continue-on-error: true
        shell: bash
        run: |
          set -o | grep -E '^pipefail' | tr -s ' \t' ' '
          false | tee explicit-pipe.txt
          echo "not reached under pipefail"
      - name: git, sudo and the cloned tree
        run: |
          cat hello.txt
          echo "head=$(git rev-parse HEAD) branch=$(git rev-parse --abbrev-ref HEAD)"
          git log --format=%s -1
          echo "describe=$(git describe --tags)"
          if git config --local --get-all include.path; then echo "credentials left behind"; exit 1; fi
          # base64 of "x-access-token:", assembled here so this script does not match itself
          p1=eC1hY2Nlc3; p2=MtdG9rZW46
          if grep -rq "$p1$p2" .git "$RUNNER_TEMP" "$HOME" 2>/dev/null; then echo "token left on disk"; exit 1; fi
          echo "no credentials left"
          sudo -n true && echo "sudo ok"
          node -e 'console.log("node " + process.version + " on PATH")'
"####;
    let (result, sink) = env
        .run(
            yaml,
            RunOpts {
                checkout: Some(checkout),
                ..Default::default()
            },
        )
        .await;
    let report = result.expect("the Debian guest came up and ran the job");
    let text = all_text(&sink);
    let steps: Vec<_> = report
        .outcome
        .steps
        .iter()
        .map(|s| (s.outcome, s.conclusion))
        .collect();
    use Conclusion::*;
    assert_eq!(
        steps,
        vec![
            (Success, Success),
            (Success, Success),
            (Success, Success),
            (Failure, Success),
            (Success, Success)
        ],
        "{text}"
    );
    assert!(text.contains("user=debian"), "{text}");
    assert!(text.contains("instance-id ok"), "{text}");
    assert!(text.contains("datasource NoCloud"), "{text}");
    assert!(text.contains("status: done"), "{text}");
    assert!(text.contains("hostname=solstice-"), "{text}");
    assert!(text.contains("bash 5"), "{text}");
    assert_eq!(report.outcome.steps[2].outcome, Success, "{text}");
    assert!(
        step_lines(&sink, 2).contains(&"pipefail off".to_string()),
        "{text}"
    );
    assert!(
        text.contains("a failing pipe passed under the default shell"),
        "{text}"
    );
    assert!(
        step_lines(&sink, 3).contains(&"pipefail on".to_string()),
        "{text}"
    );
    assert!(!text.contains("not reached under pipefail"), "{text}");
    assert!(text.contains("hello from the forge"), "{text}");
    assert!(
        text.contains(&format!("head={} branch=main", server.sha)),
        "{text}"
    );
    assert!(text.contains("hello: first commit"), "{text}");
    // fetch-depth 0: every branch and tag, as actions/checkout fetches them.
    assert!(text.contains("describe=v1.0"), "{text}");
    assert!(text.contains("no credentials left"), "{text}");
    assert!(text.contains("sudo ok"), "{text}");
    // node from npm (images/pins.json), for JavaScript actions.
    let pins: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::repo_root().join("images/pins.json")).unwrap(),
    )
    .unwrap();
    let node = pins["node"]["version"].as_str().unwrap();
    assert!(text.contains(&format!("node v{node} on PATH")), "{text}");
    assert!(!text.contains(TOKEN), "token leaked into the log:\n{text}");
    let log = server.requests();
    assert!(
        log.lines().any(|l| l.starts_with("ok ")),
        "the server saw no authorised request: {log}"
    );
    assert!(!log.contains("refused"), "{log}");
}

/// Lines of step `index` with their kinds.
fn kinds(sink: &VecSink, index: usize) -> Vec<(LineKind, String)> {
    sink.events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::Line {
                step: Some(i),
                kind,
                text,
            } if i == index => Some((kind, text)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_fetches_submodules_with_the_job_token_and_lfs_files_with_git_lfs() {
    let env = TestEnv::debian();
    let server = start_git_server();
    let checkout = server.checkout();
    let yaml = r####"
jobs:
  debian:
    runs-on: debian
    steps:
      - uses: actions/checkout@v4
        with:
          repository: octo/super
          path: top
          submodules: true
      - name: Top-level submodule only, shallow
        run: |
          cat top/super.txt top/lib/lib.txt
          test -e top/lib/nested/nested.txt && echo nested-present || echo nested-absent
          echo "lib shallow=$(git -C top/lib rev-parse --is-shallow-repository)"
      - uses: actions/checkout@v4
        with:
          repository: octo/super
          path: rec
          submodules: recursive
          fetch-depth: 0
      - name: Nested submodules, full history
        run: |
          cat rec/lib/nested/nested.txt
          echo "nested shallow=$(git -C rec/lib/nested rev-parse --is-shallow-repository)"
      - name: A guest without git-lfs
        run: sudo -n mv /usr/bin/git-lfs /usr/bin/git-lfs.hidden
      - uses: actions/checkout@v4
        with:
          repository: octo/media
          path: media
          lfs: true
      - name: git-lfs back
        if: always()
        run: sudo -n mv /usr/bin/git-lfs.hidden /usr/bin/git-lfs
      - uses: actions/checkout@v4
        if: always()
        with:
          repository: octo/media
          path: media
          lfs: true
          fetch_depth: 3
      - name: The LFS file, not its pointer; no credentials left
        if: always()
        run: |
          sha256sum media/big.bin | cut -c1-64
          wc -c < media/big.bin
          head -c 28 media/big.bin; echo
          p1=eC1hY2Nlc3; p2=MtdG9rZW46
          left=$(grep -rl "$p1$p2" top rec media "$RUNNER_TEMP" "$HOME" 2>/dev/null | head -n 5 | tr '\n' ' ')
          if [ -n "$left" ]; then echo "token left on disk: $left"; exit 1; fi
          echo "no credentials left"
"####;
    let (result, sink) = env
        .run(
            yaml,
            RunOpts {
                checkout: Some(checkout),
                ..Default::default()
            },
        )
        .await;
    let report = result.expect("the Debian guest ran the job");
    let text = all_text(&sink);
    let steps: Vec<_> = report.outcome.steps.iter().map(|s| s.outcome).collect();
    use Conclusion::*;
    assert_eq!(
        steps,
        vec![
            Success, Success, Success, Success, Success, Failure, Success, Success, Success
        ],
        "{text}"
    );
    assert_eq!(
        step_lines(&sink, 1),
        vec![
            "from the superproject",
            "from the submodule",
            "nested-absent",
            "lib shallow=true"
        ],
        "{text}"
    );
    assert_eq!(
        step_lines(&sink, 3),
        vec!["from the nested submodule", "nested shallow=false"],
        "{text}"
    );
    // Without git-lfs: the step fails with the one line that says what to install.
    let no_lfs = kinds(&sink, 5);
    assert!(
        no_lfs
            .iter()
            .any(|(_, t)| t == solstice::executor::checkout::NO_GIT_LFS),
        "{no_lfs:?}"
    );
    assert!(!text.contains("git: 'lfs' is not a git command"), "{text}");
    // With git-lfs: an unknown input is named, and the file is the real content.
    let warn = LineKind::Annotation("warning".into());
    assert!(
        kinds(&sink, 7).iter().any(|(k, t)| *k == warn
            && t.starts_with("Unexpected input(s) 'fetch_depth', valid inputs are ['repository', 'ref', 'token', ")),
        "{text}"
    );
    let payload = lfs_payload();
    let lines = step_lines(&sink, 8);
    assert_eq!(lines[1], payload.len().to_string(), "{text}");
    assert_eq!(lines[2], "large file stored in Git LFS", "{text}");
    assert_eq!(lines[3], "no credentials left", "{text}");
    assert!(!text.contains(TOKEN), "token leaked into the log:\n{text}");
    // Every request, submodules and LFS included, carried the job token.
    let log = server.requests();
    for repo in [
        "super.git",
        "lib.git",
        "nested.git",
        "media.git/info/lfs/objects/batch",
        "lfs-objects/",
    ] {
        assert!(
            log.lines()
                .any(|l| l.starts_with("ok ") && l.contains(repo)),
            "no authorised request for {repo}: {log}"
        );
    }
    assert!(!log.contains("refused"), "{log}");
}

/// `solstice::clock` debug events of this test binary.
fn clock_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut l) = clock_log().lock() {
                    l.extend_from_slice(b);
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("solstice::clock=debug"))
            .with_ansi(false)
            .with_writer(|| W)
            .try_init();
        Mutex::new(Vec::new())
    })
}

/// The `offset=` figures of the clock's "measured" events for job `job`.
fn measured_offsets(job: &str) -> Vec<(String, String)> {
    let log = String::from_utf8_lossy(&clock_log().lock().unwrap()).into_owned();
    log.lines()
        .filter(|l| l.contains("guest clock measured") && l.contains(&format!("job={job} ")))
        .map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .unwrap_or_default()
                    .to_string()
            };
            (field("offset"), field("set"))
        })
        .collect()
}

/// GNU tar warned about "time stamp … in the future" on every step bundle
/// when the guest clock was behind the host's; and Solstice's plumbing must
/// never write into the log. A step sets the clock 30 s back: the next steps'
/// logs are still exactly what they printed. The clock is measured at job
/// start and set from the host's, and again after a long step.
#[tokio::test(flavor = "multi_thread")]
async fn guest_clock_follows_the_host_and_the_log_holds_only_what_steps_print() {
    clock_log();
    let env = TestEnv::debian();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("Makefile"),
        "all:
	@echo made
",
    )
    .unwrap();
    let yaml = r####"
jobs:
  clock_skew:
    runs-on: debian
    steps:
      - uses: actions/checkout@v4
      - name: After the sync at job start
        run: date -u +%s.%N
      - name: The clock goes 30 s back
        run: sudo -n date -u -s "@$(( $(date -u +%s) - 30 ))" >/dev/null 2>&1
      - name: Plain output on both streams
        run: |
          echo one
          echo two >&2
          ls Makefile
          # Unpacked without its (host) times: nothing of this step is from the future.
          if [ "$(stat -c %Y "$GITHUB_ENV")" -gt "$(date +%s)" ]; then echo "GITHUB_ENV is from the future"; fi
      - name: A long step
        run: |
          sleep 31
          echo slept
      - name: After the long step
        run: date -u +%s.%N
"####;
    let sink = support::TimedSink::default();
    let result = env
        .run_with_sink(
            yaml,
            RunOpts {
                checkout: Some(CheckoutSource::LocalTree {
                    root: tree.path().to_path_buf(),
                    exclude: Vec::new(),
                }),
                ..Default::default()
            },
            &sink,
        )
        .await;
    env.assert_no_leaks();
    let report = result.expect("the Debian guest ran the job");
    let text = all_text(&sink.inner);
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    let offsets = measured_offsets("clock_skew");
    let (after_sync_arrived, after_sync_started) = sink.skew(1);
    let (after_long_arrived, after_long_started) = sink.skew(5);
    println!("guest clock offsets measured by the executor (offset, set): {offsets:?}");
    println!(
        "guest clock after the sync at job start: {after_sync_arrived:+.3} s (line arrival) .. {after_sync_started:+.3} s (step start)"
    );
    println!(
        "guest clock after the long step (it was set 30 s back): {after_long_arrived:+.3} s .. {after_long_started:+.3} s"
    );
    // Measured at job start, and after the long step (30 s back: set).
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert_eq!(offsets[1].1, "true", "{offsets:?}");
    let back: f64 = offsets[1].0.parse().unwrap();
    assert!((-32.0..-28.0).contains(&back), "{offsets:?}");
    // Within a second behind the host, and not ahead of it by more than the
    // time a line takes to arrive.
    for skew in [after_sync_arrived, after_long_arrived] {
        assert!(
            (-1.0..=0.0).contains(&skew),
            "guest clock off by {skew:+.3} s"
        );
    }
    // The whole log: exactly what the steps printed, and the checkout's own line.
    let lines: Vec<(Option<usize>, LineKind, String)> = sink
        .inner
        .events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::Line { step, kind, text } => Some((step, kind, text)),
            _ => None,
        })
        .collect();
    let shown: Vec<String> = lines.iter().map(|l| format!("{l:?}")).collect();
    assert_eq!(lines.len(), 7, "{shown:#?}");
    assert_eq!(lines[0].0, Some(0), "{shown:#?}");
    assert_eq!(lines[0].1, LineKind::Runner, "{shown:#?}");
    assert!(
        lines[0].2.starts_with("Copied the local tree ("),
        "{shown:#?}"
    );
    assert_eq!(lines[1].0, Some(1), "{shown:#?}");
    assert_eq!(
        lines[2..6]
            .iter()
            .map(|l| (l.0, l.1.clone(), l.2.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (Some(3), LineKind::Stdout, "one"),
            (Some(3), LineKind::Stderr, "two"),
            (Some(3), LineKind::Stdout, "Makefile"),
            (Some(4), LineKind::Stdout, "slept"),
        ],
        "{shown:#?}"
    );
    assert_eq!(lines[6].0, Some(5), "{shown:#?}");
}
