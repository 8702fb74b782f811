//! The clean-up before a failed job's VM is kept for debug SSH
//! (`solstice::executor::scrub::scrub_for_debug`), in real guests: a job
//! checks out a repository with the job token (from a smart-HTTP git
//! server in a test network namespace that refuses requests without it),
//! persists the token in `.git/config` as actions/checkout does, writes a
//! secret into `GITHUB_ENV`, `GITHUB_OUTPUT` and `GITHUB_STATE`, leaves a
//! process with both in its environment, and fails. The test's
//! `DebugHold` gets the still-open session, cleans the guest, then searches
//! the whole of the user's home (the workspace with it), `/tmp` and `/etc`,
//! and every process's environment, for the two values. Once in the tiny
//! guest (busybox, no git, no bash), once in the Debian guest (git).

use crate::support;

use std::sync::Mutex;

use solstice::events::{Conclusion, EventSink};
use solstice::executor::scrub::{Scrubbed, scrub_for_debug};
use solstice::guest::{GuestSession, OutputChunk};
use solstice::job::{self, CheckoutSource, DebugHold, FailedGuest, VmRun};
use solstice::secret::Secret;
use solstice::testing::VecSink;
use solstice::vm::Vm;
use support::git_server::git;
use support::{TestEnv, all_text};
use tokio::sync::mpsc;

const TOKEN: &str = "scrub-job-token-4e1f0a9b37";
const SECRET: &str = "scrub-secret-value-c81d6e";

/// What the hold saw: the clean-up's result and what the search found.
#[derive(Default)]
struct Seen {
    scrubbed: Option<Result<Scrubbed, String>>,
    /// Before the clean-up: files holding the token (proves the search works).
    before: String,
    after: String,
}

struct ScrubHold {
    seen: Mutex<Seen>,
}

/// Runs `cmd` with `stdin`, returns stdout and stderr together.
async fn run(session: &dyn GuestSession, cmd: &str, stdin: &[u8]) -> (u32, String) {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = async {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend_from_slice(&c.data);
        }
        out
    };
    let (status, out) = tokio::join!(session.exec(cmd, stdin, tx), collect);
    (status.unwrap(), String::from_utf8_lossy(&out).into_owned())
}

/// Lists the files under the home directory, `/tmp` and `/etc`, and the
/// processes, that hold either value (read from stdin: not in argv), with
/// root's rights where the user has passwordless sudo.
const SEARCH: &str = r#"read -r a; read -r b; h=$1
for v in "$a" "$b"; do
  grep -r -l -F -e "$v" "$h" /tmp /etc 2>/dev/null | sed 's/^/file /'
  for e in /proc/[0-9]*/environ; do
    if tr '\000' '\n' 2>/dev/null < "$e" | grep -q -F -e "$v"; then echo "process $e"; fi
  done
done
echo searched"#;

#[async_trait::async_trait]
impl DebugHold for ScrubHold {
    async fn offer(&self, guest: FailedGuest, _sink: &dyn EventSink) -> Option<Vm> {
        let values = format!("{TOKEN}\n{SECRET}\n");
        let q = solstice::guest::shell_quote(SEARCH);
        let cmd = format!(
            "if [ \"$(id -u)\" != 0 ] && sudo -n true 2>/dev/null; then exec sudo -n sh -c {q} sh \"$HOME\"; else exec sh -c {q} sh \"$HOME\"; fi"
        );
        let (_, before) = run(&guest.session, &cmd, values.as_bytes()).await;
        let scrubbed = scrub_for_debug(&guest.session, &guest.runner)
            .await
            .map_err(|e| e.to_string());
        let (_, after) = run(&guest.session, &cmd, values.as_bytes()).await;
        let _ = guest.session.close().await;
        *self.seen.lock().unwrap() = Seen {
            scrubbed: Some(scrubbed),
            before,
            after,
        };
        Some(guest.vm)
    }
}

/// `octo/hello` served from a test network namespace with the token required.
struct GitServer {
    served: support::git_server::Served,
    ns: support::netns::Netns,
    sha: String,
    _root: tempfile::TempDir,
}

impl GitServer {
    fn start(n: u8) -> Self {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let work = r.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("hello.txt"), "hello\n").unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let sha = git(&work, &["rev-parse", "HEAD"]);
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
        let ns = support::netns::create("scrub", std::net::Ipv4Addr::new(198, 51, 100, n));
        let served =
            support::git_server::serve_in(&r.join("srv"), &r.join("lfs"), TOKEN, Some(&ns));
        GitServer {
            served,
            ns,
            sha,
            _root: root,
        }
    }

    fn url(&self) -> String {
        format!("http://{}:{}", self.ns.addr, self.served.port)
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
}

async fn failed_job_is_scrubbed(env: TestEnv, n: u8) {
    let server = GitServer::start(n);
    let yaml = format!(
        r#"
jobs:
  build:
    runs-on: {image}
    steps:
      - uses: actions/checkout@v4
      - run: |
          test -f hello.txt
          printf '[http "{url}/"]\n\textraheader = AUTHORIZATION: basic %s\n' "$TOK" >> .git/config
          echo "LEFT=$MY" >> "$GITHUB_ENV"
          echo "out=$MY" >> "$GITHUB_OUTPUT"
          echo "st=$MY" >> "$GITHUB_STATE"
          if command -v setsid >/dev/null 2>&1; then setsid sleep 900 </dev/null >/dev/null 2>&1 & else sleep 900 </dev/null >/dev/null 2>&1 & fi
          sleep 900 </dev/null >/dev/null 2>&1 &
          echo "left running"
        env:
          TOK: ${{{{ secrets.GITHUB_TOKEN }}}}
          MY: ${{{{ secrets.MY_SECRET }}}}
      - run: |
          test -n "$LEFT"
          exit 1
"#,
        image = env.image().name,
        url = server.url(),
    );
    let spec = env.spec(
        &yaml,
        vec![("GITHUB_TOKEN", TOKEN), ("MY_SECRET", SECRET)],
        server.checkout(),
    );
    let hold = ScrubHold {
        seen: Mutex::new(Seen::default()),
    };
    let job_id = job::id::new_job_id("test");
    let run = VmRun {
        config: &env.config,
        image: env.image(),
        accel: &env.accel,
        job_id: &job_id,
        spec: &spec,
        runner_name: "solstice-test",
        observer: None,
        debug: Some(&hold),
        warm: None,
    };
    let sink = VecSink::default();
    let report = job::run_in_vm(&run, &sink, &Default::default())
        .await
        .expect("the VM ran the job");
    env.assert_no_leaks();
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, Conclusion::Failure, "{text}");
    assert!(text.contains("left running"), "{text}");
    let seen = hold.seen.into_inner().unwrap();
    // The search finds what is there before the clean-up.
    assert!(seen.before.ends_with("searched\n"), "{}", seen.before);
    assert!(seen.before.contains("/.git/config\n"), "{}", seen.before);
    assert!(seen.before.contains("process /proc/"), "{}", seen.before);
    assert!(seen.before.contains("/_temp/_solstice/"), "{}", seen.before);
    let scrubbed = seen.scrubbed.expect("offered").expect("cleaned");
    let removed = scrubbed.removed.join("\n");
    for want in [
        "process(es) the job's steps left running",
        "Solstice's per-step files",
        "a credential header (http.extraheader) in the git config ",
    ] {
        assert!(removed.contains(want), "{want} missing from:\n{removed}");
    }
    assert_eq!(
        seen.after, "searched\n",
        "left after the clean-up; removed:\n{removed}"
    );
    println!("removed:\n{removed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_guest_without_git_keeps_no_copy_of_the_token_or_secret() {
    failed_job_is_scrubbed(TestEnv::tiny(), 161).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_guest_with_git_keeps_no_copy_of_the_token_or_secret() {
    failed_job_is_scrubbed(TestEnv::debian(), 162).await;
}
