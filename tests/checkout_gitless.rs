//! The built-in checkout for a guest without git: the repository is fetched
//! on the runner host from a real smart-HTTP git server (`git http-backend`
//! behind a small Python server that refuses requests without the job
//! token) and copied into the guest with its `.git`. Once through
//! `LocalSession` (host processes, with the probe for git made to fail) so
//! later `git` commands can check the result, once in the tiny guest, which
//! really has no git.

mod support;

use std::path::Path;

use async_trait::async_trait;
use solstice::events::Conclusion;
use solstice::testing::VecSink;
use solstice::executor::{CheckoutSource, run_job};
use solstice::guest::{GuestError, GuestSession, LocalSession, OutputChunk};
use solstice::secret::Secret;
use support::git_server::git;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "gitless-token-5c1e8b72d4";

/// A host session whose shell finds no git (as in the tiny guest or an
/// OmniOS cloud image); everything else runs as it is.
struct NoGitSession;

#[async_trait]
impl GuestSession for NoGitSession {
    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError> {
        let command = command.replace("command -v git", "command -v solstice-no-such-git");
        LocalSession.exec(&command, stdin, output).await
    }
}

/// `octo/hello` with two commits on `main` (the job's sha is the first), served
/// on 127.0.0.1 with the token required.
struct GitServer {
    served: support::git_server::Served,
    /// The job's commit (not the branch tip).
    sha: String,
    _root: tempfile::TempDir,
}

impl GitServer {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.served.port)
    }

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

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.served.log).unwrap_or_default()
    }
}

fn start_git_server() -> GitServer {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let work = r.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("hello.txt"), "first version\n").unwrap();
    let deep = format!("{}/{}", "d".repeat(90), "e".repeat(90));
    std::fs::create_dir_all(work.join(&deep)).unwrap();
    std::fs::write(work.join(&deep).join("deep.txt"), "deep file\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first commit"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("hello.txt"), "second version\n").unwrap();
    git(&work, &["commit", "-q", "-am", "second commit"]);
    std::fs::create_dir_all(r.join("srv/octo")).unwrap();
    let bare = r.join("srv/octo/hello.git");
    git(
        r,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(
        &bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    let served = support::git_server::serve(&r.join("srv"), &r.join("lfs"), TOKEN);
    GitServer {
        served,
        sha,
        _root: root,
    }
}

fn spec(yaml: &str, home: &Path, checkout: CheckoutSource) -> solstice::executor::JobSpec {
    let env = support::TestEnv::with_image(support::image_config(
        "none",
        home.join("no-image"),
        "root",
        128,
    ));
    let mut s = env.spec(yaml, Vec::new(), checkout);
    s.runner.home = Some(home.to_str().unwrap().to_string());
    s
}

/// The base64 of `x-access-token:` (how the token travels), split so this
/// file does not match itself.
fn header_prefix() -> String {
    format!("{}{}", "eC1hY2Nlc3", "MtdG9rZW46")
}

#[tokio::test]
async fn without_git_in_the_guest_the_host_fetches_and_later_git_commands_see_a_checkout() {
    let server = start_git_server();
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut checkout = server.checkout();
    if let CheckoutSource::Remote { host_dir, .. } = &mut checkout {
        *host_dir = Some(scratch.path().to_path_buf());
    }
    let yaml = format!(
        r#"
jobs:
  build:
    runs-on: tiny
    steps:
      - uses: actions/checkout@v4
        with:
          submodules: true
      - run: |
          cat hello.txt
          cat {d}/{e}/deep.txt
          echo "head=$(git rev-parse HEAD) branch=$(git rev-parse --abbrev-ref HEAD)"
          echo "origin=$(git config --get remote.origin.url)"
          echo "shallow=$(test -f .git/shallow && echo yes)"
          echo "dirty=$(git status --porcelain | wc -l | tr -d ' ')"
          p1=eC1hY2Nlc3; p2=MtdG9rZW46
          if grep -rq "$p1$p2" .git "$RUNNER_TEMP" 2>/dev/null; then echo "token left on disk"; exit 1; fi
          echo "no credentials left"
"#,
        d = "d".repeat(90),
        e = "e".repeat(90),
    );
    let spec = spec(&yaml, home.path(), checkout);
    let sink = VecSink::default();
    let outcome = run_job(&spec, &NoGitSession, &sink, CancellationToken::new()).await;
    let text = sink.all_text();
    assert_eq!(outcome.conclusion, Conclusion::Success, "{text}");
    let first = sink.step_lines(0);
    assert!(
        first.contains(&format!(
            "git is not installed in the guest; fetching octo/hello@{} on the runner host and copying it in",
            server.sha
        )),
        "{first:?}"
    );
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("Submodules are not fetched")),
        "{first:?}"
    );
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("HEAD is now at ") && l.ends_with(" first commit")),
        "{first:?}"
    );
    let lines = sink.step_lines(1);
    assert_eq!(lines[0], "first version", "{text}");
    assert_eq!(lines[1], "deep file", "{text}");
    assert!(
        lines.contains(&format!("head={} branch=main", server.sha)),
        "{text}"
    );
    assert!(
        lines.contains(&format!("origin={}/octo/hello.git", server.url())),
        "{text}"
    );
    assert!(lines.contains(&"shallow=yes".to_string()), "{text}");
    assert!(lines.contains(&"dirty=0".to_string()), "{text}");
    assert!(lines.contains(&"no credentials left".to_string()), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains(&header_prefix()), "{text}");
    let log = server.requests();
    assert!(log.lines().any(|l| l.starts_with("ok ")), "{log}");
    assert!(!log.contains("refused"), "{log}");
    // The scratch directory is gone.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn the_host_fetch_stays_on_the_jobs_forge() {
    let server = start_git_server();
    let home = tempfile::tempdir().unwrap();
    let yaml = r#"
jobs:
  build:
    runs-on: tiny
    steps:
      - uses: actions/checkout@v4
        with:
          repository: "../../elsewhere/x"
"#;
    let spec = spec(yaml, home.path(), server.checkout());
    let sink = VecSink::default();
    let outcome = run_job(&spec, &NoGitSession, &sink, CancellationToken::new()).await;
    let text = sink.all_text();
    assert_eq!(outcome.conclusion, Conclusion::Failure, "{text}");
    assert!(
        text.contains("`repository: ../../elsewhere/x` is not an owner/name on the job's forge"),
        "{text}"
    );
    assert_eq!(server.requests(), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tiny_guest_without_git_gets_the_checkout_with_its_git_directory() {
    let env = support::TestEnv::tiny();
    let server = start_git_server();
    let yaml = format!(
        r#"
jobs:
  tiny:
    runs-on: tiny
    steps:
      - uses: actions/checkout@v4
      - run: |
          if command -v git >/dev/null 2>&1; then echo "unexpected git"; exit 1; fi
          cat hello.txt
          cat {d}/{e}/deep.txt
          echo "HEAD: $(cat .git/HEAD)"
          echo "main: $(cat .git/refs/heads/main)"
          grep -q 'url = {url}/octo/hello.git' .git/config && echo "origin ok"
          p1=eC1hY2Nlc3; p2=MtdG9rZW46
          if grep -rq "$p1$p2" .git "$HOME" 2>/dev/null; then echo "token left on disk"; exit 1; fi
          echo "no credentials left"
"#,
        d = "d".repeat(90),
        e = "e".repeat(90),
        url = server.url(),
    );
    let (result, sink) = env
        .run(
            &yaml,
            support::RunOpts {
                checkout: Some(server.checkout()),
                ..Default::default()
            },
        )
        .await;
    let report = result.expect("the VM ran the job");
    let text = sink.all_text();
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    assert!(
        sink.step_lines(0).contains(&format!(
            "git is not installed in the guest; fetching octo/hello@{} on the runner host and copying it in",
            server.sha
        )),
        "{text}"
    );
    assert!(!text.contains("typeflag"), "{text}");
    assert_eq!(
        sink.step_lines(1),
        vec![
            "first version".to_string(),
            "deep file".to_string(),
            "HEAD: ref: refs/heads/main".to_string(),
            format!("main: {}", server.sha),
            "origin ok".to_string(),
            "no credentials left".to_string(),
        ],
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    let log = server.requests();
    assert!(log.lines().any(|l| l.starts_with("ok ")), "{log}");
    assert!(!log.contains("refused"), "{log}");
}
