//! End to end with the Debian guest: real cloud-init consumes Solstice's NoCloud
//! seed (user, key, pinned host key), and a job uses bash, git and sudo.

mod support;

use solstice::events::Conclusion;
use support::{RunOpts, TestEnv, all_text};

#[tokio::test(flavor = "multi_thread")]
async fn real_cloud_init_consumes_the_seed_and_a_bash_job_runs() {
    let env = TestEnv::debian();

    // A small git repository as the local tree that actions/checkout copies.
    let tree = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(tree.path())
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(tree.path().join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(tree.path().join(".gitignore"), "ignored.log\n").unwrap();
    std::fs::write(tree.path().join("ignored.log"), "must not be copied\n").unwrap();
    git(&["add", "hello.txt", ".gitignore"]);
    git(&["commit", "-q", "-m", "first commit"]);

    let yaml = r####"
jobs:
  debian:
    runs-on: debian
    steps:
      - uses: actions/checkout@v4
      - name: Seeded by real cloud-init
        run: |
          echo "user=$(id -un)"
          iid=$(cat /var/lib/cloud/data/instance-id)
          case "$iid" in solstice-*) echo "instance-id ok";; *) echo "bad instance-id $iid"; exit 1;; esac
          cloud-init status --wait >/dev/null 2>&1 || true
          cloud-init status --long
          grep -q NoCloud /run/cloud-init/result.json && echo "datasource NoCloud"
          echo "hostname=$(hostname)"
      - name: Default shell is bash with pipefail
        run: |
          echo "bash ${BASH_VERSION%%.*}"
          set -o | grep -E '^pipefail' | tr -s ' \t' ' '
      - name: pipefail makes a failing pipe fail
        id: pipe
        continue-on-error: true
        run: false | true
      - name: git, sudo and the checked-out tree
        run: |
          git --version
          cat hello.txt
          test ! -e ignored.log && echo "ignored file not copied"
          git log --format=%s -1
          sudo -n true && echo "sudo ok"
"####;
    let (result, sink) = env
        .run(
            yaml,
            RunOpts {
                checkout: Some(tree.path().to_path_buf()),
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
    assert!(text.contains("pipefail on"), "{text}");
    assert!(text.contains("hello from the host"), "{text}");
    assert!(text.contains("ignored file not copied"), "{text}");
    assert!(text.contains("first commit"), "{text}");
    assert!(text.contains("sudo ok"), "{text}");
}
