//! End to end with the Debian guest: real cloud-init consumes Solstice's NoCloud
//! seed (user, key, pinned host key), and a job uses bash, git and sudo. The
//! built-in checkout clones inside the guest from an HTTP git server on the
//! host that refuses requests without the job token.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};

use solstice::events::Conclusion;
use solstice::executor::CheckoutSource;
use solstice::secret::Secret;
use support::{RunOpts, TestEnv, all_text, step_lines};

const TOKEN: &str = "job-token-7f3a9c2e51";

/// A bare repository `octo/hello.git` under a temporary root, served over
/// git's "dumb" HTTP protocol by a Python server that answers 401 unless the
/// `Authorization` header carries the token as actions/checkout sends it.
struct GitServer {
    child: std::process::Child,
    port: u16,
    sha: String,
    log: std::path::PathBuf,
    _root: tempfile::TempDir,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn start_git_server() -> GitServer {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("hello.txt"), "hello from the forge\n").unwrap();
    git(&work, &["add", "hello.txt"]);
    git(&work, &["commit", "-q", "-m", "first commit"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let srv = root.path().join("srv");
    std::fs::create_dir_all(srv.join("octo")).unwrap();
    git(
        root.path(),
        &["clone", "-q", "--bare", "work", "srv/octo/hello.git"],
    );
    git(&srv.join("octo/hello.git"), &["update-server-info"]);
    let log = root.path().join("auth.log");
    let expected = solstice::executor::checkout::auth_header_value(TOKEN);
    let script = format!(
        r#"
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        got = self.headers.get("Authorization", "")
        with open({log:?}, "a") as f:
            f.write(("ok" if got.lower() == {expected:?}.lower() else "refused " + got) + "\n")
        if got.lower() != {expected:?}.lower():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory={root:?}))
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        log = log.to_str().unwrap(),
        root = srv.to_str().unwrap(),
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the test git server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("server printed its port");
    GitServer {
        child,
        port,
        sha,
        log,
        _root: root,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_cloud_init_consumes_the_seed_and_a_bash_job_clones_with_the_token() {
    let env = TestEnv::debian();
    let server = start_git_server();
    // User-mode networking: the guest reaches the host's loopback at 10.0.2.2.
    let checkout = CheckoutSource::Remote {
        server_url: format!("http://10.0.2.2:{}", server.port),
        repository: "octo/hello".into(),
        git_ref: "refs/heads/main".into(),
        sha: server.sha.clone(),
        token: Some(Secret::new(TOKEN)),
    };

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
          if git config --local --get-all include.path; then echo "credentials left behind"; exit 1; fi
          # base64 of "x-access-token:", assembled here so this script does not match itself
          p1=eC1hY2Nlc3; p2=MtdG9rZW46
          if grep -rq "$p1$p2" .git "$RUNNER_TEMP" "$HOME" 2>/dev/null; then echo "token left on disk"; exit 1; fi
          echo "no credentials left"
          sudo -n true && echo "sudo ok"
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
    assert!(text.contains("first commit"), "{text}");
    assert!(text.contains("no credentials left"), "{text}");
    assert!(text.contains("sudo ok"), "{text}");
    assert!(!text.contains(TOKEN), "token leaked into the log:\n{text}");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.lines().any(|l| l == "ok"),
        "the server saw no authorised request: {log}"
    );
}
