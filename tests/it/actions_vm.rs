//! Actions in real guests: fixture actions (`tests/fixtures/actions/`)
//! served by a git server on 127.0.0.1, fetched by the host's action cache
//! and run in the tiny busybox guest (no bash, no node) and in the Debian
//! guest (node from npm).

use std::sync::Arc;

use solstice::actions::{ActionCache, CacheSettings};
use solstice::config::{GuestOs, SeedKind};
use solstice::events::Conclusion;
use solstice::testing::git_server::GitServer;

use crate::support::{self, RunOpts, TestEnv, all_text, step_lines};

fn conclusions(report: &solstice::job::RunReport) -> Vec<(Conclusion, Conclusion)> {
    report
        .outcome
        .steps
        .iter()
        .map(|s| (s.outcome, s.conclusion))
        .collect()
}

const S: Conclusion = Conclusion::Success;
const F: Conclusion = Conclusion::Failure;

/// A git server with `names` published, and an action cache allowed to
/// fetch from it.
async fn actions(names: &[&str]) -> (GitServer, Arc<ActionCache>, tempfile::TempDir) {
    let server = GitServer::start().await;
    support::actions::publish_all(&server, names);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ActionCache::new(CacheSettings {
        dir: dir.path().to_path_buf(),
        max_bytes: 1 << 30,
        allowed_hosts: vec!["127.0.0.1".into()],
    }));
    (server, cache, dir)
}

/// The tiny guest (busybox `sh`, no bash, no node): a remote composite with
/// `shell: sh` runs and gives its output; a JavaScript action fails its step
/// with a message that names the image; a vmactions step for another OS
/// fails with the label to use; later steps still run.
#[tokio::test(flavor = "multi_thread")]
async fn composite_runs_and_javascript_and_vm_actions_fail_clearly_in_a_busybox_guest() {
    let (server, cache, _dir) = actions(&["composite-inner", "js-post"]).await;
    let env = TestEnv::tiny();
    let yaml = r#"
jobs:
  build:
    steps:
      - id: up
        uses: fixtures/composite-inner@v1
        with:
          text: quiet words
      - run: echo "shouted=${{ steps.up.outputs.shout }}"
      - uses: fixtures/js-post@v1
      - if: always()
        uses: vmactions/omnios-vm@v1
        with:
          run: echo never
      - if: always()
        run: echo "hash=${{ hashFiles('**/nothing-matches') }}."
"#;
    let (result, sink) = env
        .run(
            yaml,
            RunOpts {
                actions: Some((cache, server.url().to_string())),
                ..RunOpts::default()
            },
        )
        .await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, F, "{text}");
    assert_eq!(
        conclusions(&report),
        vec![(S, S), (S, S), (F, F), (F, F), (S, S)],
        "{text}"
    );
    assert!(
        step_lines(&sink, 1).contains(&"shouted=QUIET WORDS".to_string()),
        "{text}"
    );
    let js = step_lines(&sink, 2).join("\n");
    assert!(
        js.contains("needs Node.js 20 or later") && js.contains("image `tiny`"),
        "{js}"
    );
    let vm = step_lines(&sink, 3).join("\n");
    assert!(vm.contains("illumos"), "{vm}");
    assert!(!text.contains("never"), "{text}");
    assert!(
        step_lines(&sink, 4).contains(&"hash=.".to_string()),
        "{text}"
    );
}

/// The tiny guest standing in for illumos (the metadata-agent seed,
/// `RUNNER_OS=illumos`): a `vmactions/omnios-vm` step runs its `prepare`
/// and `run` in place, with the job's environment, and says what it ignored.
#[tokio::test(flavor = "multi_thread")]
async fn a_vmactions_step_runs_natively_on_an_image_of_its_os() {
    let mut env = TestEnv::tiny();
    {
        let img = env.image_mut();
        img.seed = SeedKind::MetadataCpio;
        img.os = GuestOs::Illumos;
        img.readiness_probes = 2;
        img.labels = vec!["omnios".into()];
    }
    let yaml = r#"
env:
  GREETING: hello
jobs:
  build:
    steps:
      - uses: vmactions/omnios-vm@v1
        with:
          envs: GREETING
          usesh: true
          mem: 4096
          prepare: |
            echo "prepare in $(basename "$PWD")" > prepared.txt
          run: |
            cat prepared.txt
            echo "run says $GREETING on $RUNNER_OS"
"#;
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, S, "{text}");
    let lines = step_lines(&sink, 0);
    assert!(lines.contains(&"prepare in hello".to_string()), "{text}");
    assert!(
        lines.contains(&"run says hello on illumos".to_string()),
        "{text}"
    );
    assert!(text.contains("mem"), "the ignored inputs are named: {text}");
}

/// The Debian guest with node (from npm, in the image): JavaScript actions
/// with the real `@actions/core` run their pre, main and post stages in
/// GitHub's order with state between them, read inputs whose names no shell
/// can export, and a composite nests one of them.
#[tokio::test(flavor = "multi_thread")]
async fn javascript_actions_run_in_a_guest_with_node() {
    let (server, cache, _dir) = actions(&[
        "js-stages",
        "js-inputs",
        "composite-basic",
        "composite-inner",
    ])
    .await;
    let env = TestEnv::debian();
    let yaml = r#"
jobs:
  build:
    steps:
      - uses: fixtures/js-stages@v1
        with:
          label: A
      - id: in
        uses: fixtures/js-inputs@v1
        with:
          my-input: mine
          a.b: dotted
      - run: echo "node $(node --version) echo=${{ steps.in.outputs.echo }}"
"#;
    let (result, sink) = env
        .run(
            yaml,
            RunOpts {
                actions: Some((cache, server.url().to_string())),
                ..RunOpts::default()
            },
        )
        .await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, S, "{text}");
    let lines = sink.lines();
    let pos = |want: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(want))
            .unwrap_or_else(|| panic!("no line starting with {want:?} in {text}"))
    };
    // pre (job set-up), main, post (job end), with the state of each stage.
    let (pre, main, post) = (pos("pre A"), pos("main A"), pos("post A"));
    assert!(pre < main && main < post, "{text}");
    assert!(lines[main].contains("pre-key=[from-pre-A]"), "{text}");
    assert!(lines[post].contains("main-key=[from-main-A]"), "{text}");
    let step1 = step_lines(&sink, 1);
    assert!(step1.contains(&"my-input=[mine]".to_string()), "{text}");
    assert!(step1.contains(&"a.b=[dotted]".to_string()), "{text}");
    assert!(
        step1.contains(&"cwd-is-workspace=true".to_string()),
        "{text}"
    );
    let step2 = step_lines(&sink, 2).join("\n");
    assert!(
        step2.contains("node v2") && step2.contains("echo=mine"),
        "{text}"
    );
}
