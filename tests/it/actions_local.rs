//! `uses:` steps through the executor on a local `sh` session: the test
//! actions of `tests/fixtures/actions/` (JavaScript with the real
//! `@actions/core` from npm, composite, local, Docker) served by a git
//! server on 127.0.0.1, fetched through the host's action cache, and run with
//! the host's `node`. Expected behaviour: GitHub's, as
//! `../shared/spec/actions-runtime.md` §3, §4, §5 and §10 describe it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::json;
use solstice::actions::{ActionCache, CacheSettings};
use solstice::config::GuestOs;
use solstice::events::{Conclusion, JobEvent, LineKind};
use solstice::executor::{JobOutcome, StepRecord, run_job};
use solstice::guest::LocalSession;
use solstice::job::{CheckoutSource, JobSpec, RunnerInfo};
use solstice::secret::Secret;
use solstice::testing::VecSink;
use solstice::testing::git_server::GitServer;
use solstice::workflow::model::parse_workflow;
use tokio_util::sync::CancellationToken;

use crate::support::{actions, npm};

const S: Conclusion = Conclusion::Success;
const F: Conclusion = Conclusion::Failure;
const K: Conclusion = Conclusion::Skipped;

/// The job token the tests give the job (as the `GITHUB_TOKEN` secret).
const TOKEN: &str = "ghs_fixturetoken0123456789";

/// The host's action cache as a job gets it, on `dir`, allowed to fetch
/// from 127.0.0.1 (the test git server).
fn action_cache(dir: &Path) -> Arc<ActionCache> {
    Arc::new(ActionCache::new(CacheSettings {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        allowed_hosts: vec!["127.0.0.1".into()],
    }))
}

/// A job, the runner it runs on, and the directories they use.
struct TestJob {
    spec: JobSpec,
    runner: RunnerInfo,
    home: tempfile::TempDir,
    _cache: tempfile::TempDir,
}

fn job(yaml: &str, server: &GitServer) -> TestJob {
    let workflow = parse_workflow(yaml).unwrap();
    let job_id = workflow.jobs.keys().next().unwrap().clone();
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let spec = JobSpec {
        workflow,
        job_id,
        matrix: IndexMap::new(),
        github: json!({
            "repository": "acme/widget",
            "repository_owner": "acme",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "ref": "refs/heads/main",
            "ref_name": "main",
            "server_url": "https://forge.example",
            "run_id": "77",
            "event_name": "push",
        }),
        secrets: BTreeMap::from([("GITHUB_TOKEN".to_string(), Secret::new(TOKEN))]),
        vars: BTreeMap::new(),
        inputs: json!({}),
        needs: json!({}),
        extra_env: IndexMap::new(),
        checkout: CheckoutSource::None,
        max_job_timeout: None,
        extra_masks: Vec::new(),
        default_actions_url: Some(server.url().to_string()),
        actions: Some(action_cache(cache.path())),
        cache: None,
        extra_contexts: Default::default(),
    };
    let runner = crate::support::local_runner(GuestOs::Linux, "test-runner", home.path());
    TestJob {
        spec,
        runner,
        home,
        _cache: cache,
    }
}

struct Run {
    outcome: JobOutcome,
    sink: VecSink,
    _job: TestJob,
}

impl Run {
    fn lines(&self) -> Vec<String> {
        self.sink.lines()
    }

    fn text(&self) -> String {
        self.sink.all_text()
    }

    /// The record of the workflow's step `index` (pre and post stages, if
    /// the executor records them separately, are not looked at).
    fn step(&self, index: usize) -> &StepRecord {
        self.outcome
            .steps
            .iter()
            .find(|s| s.index == index)
            .unwrap_or_else(|| panic!("no record of step {index}: {:?}", self.outcome.steps))
    }

    /// (outcome, conclusion) of the workflow's steps `0..n`.
    fn conclusions(&self, n: usize) -> Vec<(Conclusion, Conclusion)> {
        (0..n)
            .map(|i| (self.step(i).outcome, self.step(i).conclusion))
            .collect()
    }

    fn has_line(&self, want: &str) -> bool {
        self.lines().iter().any(|l| l == want)
    }

    /// Every line event with its kind.
    fn kinds(&self) -> Vec<(LineKind, String)> {
        self.sink
            .events()
            .into_iter()
            .filter_map(|e| match e {
                JobEvent::Line { kind, text, .. } => Some((kind, text)),
                _ => None,
            })
            .collect()
    }

    /// Text of step `index`'s lines (any kind), lower-cased and joined.
    fn step_text_lower(&self, index: usize) -> String {
        self.sink.step_lines(index).join("\n").to_lowercase()
    }
}

async fn run_job_of(job: TestJob) -> Run {
    let sink = VecSink::default();
    let outcome = tokio::time::timeout(
        Duration::from_secs(180),
        run_job(
            &job.spec,
            &job.runner,
            &LocalSession,
            &sink,
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("the job did not end in 3 minutes: {:?}", sink.lines()));
    Run {
        outcome,
        sink,
        _job: job,
    }
}

async fn run(yaml: &str, server: &GitServer) -> Run {
    run_job_of(job(yaml, server)).await
}

/// A git server with the fixtures `names` published as `fixtures/<name>@v1`.
async fn server_with(names: &[&str]) -> GitServer {
    let server = GitServer::start().await;
    actions::publish_all(&server, names);
    server
}

#[test]
fn actions_core_from_npm_loads_in_node() {
    let dir = tempfile::tempdir().unwrap();
    npm::install_actions_core(dir.path());
    for p in npm::ACTIONS_CORE {
        let pj = dir
            .path()
            .join("node_modules")
            .join(p.name)
            .join("package.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&pj).unwrap()).unwrap();
        assert_eq!(v["version"], p.version, "{}", pj.display());
        let cached =
            npm::cache_dir().join(format!("{}-{}.tgz", p.name.replace('/', "+"), p.version));
        assert!(npm::integrity_ok(
            &std::fs::read(&cached).unwrap(),
            p.integrity
        ));
    }
    assert!(!npm::integrity_ok(
        b"not the tarball",
        npm::ACTIONS_CORE[0].integrity
    ));
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg("require('@actions/core').setSecret('hush')")
        .current_dir(dir.path())
        .output()
        .expect("node is on PATH");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "::add-mask::hush\n");
}

#[tokio::test]
async fn javascript_action_inputs_outputs_and_file_commands() {
    let server = server_with(&["js-inputs"]).await;
    let mut j = job(
        r#"
jobs:
  build:
    steps:
      - id: js
        uses: fixtures/js-inputs@v1
        env:
          EXPECT_TOKEN: ${{ github.token }}
        with:
          my-input: hyphen-value
          a.b: dot-value
          with space: space-value
          secret: s3cr3t-value
          old-name: still-given
          bogus: 1
      - run: |
          echo "eq=${{ steps.js.outputs.eq }}"
          echo "echo=${{ steps.js.outputs.echo }}"
          echo "later JS_EXPORTED=$JS_EXPORTED"
          js-tool
"#,
        &server,
    );
    j.spec
        .vars
        .insert("ACTIONS_STEP_DEBUG".into(), "true".into());
    let r = run_job_of(j).await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(2), vec![(S, S), (S, S)]);

    // Inputs: GitHub's names (`-` and `.` kept, space → `_`), read back by
    // the real toolkit; the `${{ github.token }}` default; an unset input.
    for want in [
        "my-input=[hyphen-value]",
        "a.b=[dot-value]",
        "with space=[space-value]",
        "env INPUT_MY-INPUT=[hyphen-value]",
        "env INPUT_A.B=[dot-value]",
        "env INPUT_WITH_SPACE=[space-value]",
        "token-set=true token-is-expected=true",
        "unset=[]",
        "cwd-is-workspace=true",
        "action-repository=[fixtures/js-inputs] action-ref=[v1]",
    ] {
        assert!(r.has_line(want), "{want}: {:?}", r.lines());
    }
    // An undeclared `with:` key and a deprecated input warn, and do not fail.
    let warnings: Vec<String> = r
        .kinds()
        .into_iter()
        .filter(|(k, _)| *k == LineKind::Annotation("warning".into()))
        .map(|(_, t)| t)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Unexpected input(s)") && w.contains("'bogus'")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("'old-name'")
            && w.contains("deprecated")
            && w.contains("use my-input instead")),
        "{warnings:?}"
    );
    // `core.warning` with a file and a line is an annotation.
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("careful here") && w.contains("src/a.c") && w.contains('3')),
        "{warnings:?}"
    );
    // `core.debug`, shown because ACTIONS_STEP_DEBUG is set.
    assert!(
        r.kinds()
            .contains(&(LineKind::Debug, "a debug message".to_string())),
        "{:?}",
        r.kinds()
    );
    // `core.setSecret` masks the value in the log and in the summary.
    let text = r.text();
    assert!(r.has_line("the secret is ***"), "{:?}", r.lines());
    assert!(!text.contains("s3cr3t-value"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    let summary: Vec<String> = r
        .sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::StepSummary { index: 0, markdown } => Some(markdown),
            _ => None,
        })
        .collect();
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert!(summary[0].contains("js-inputs summary"), "{summary:?}");
    assert!(summary[0].contains("secret: ***"), "{summary:?}");

    // Outputs (heredoc-delimited by the toolkit), `=` and newlines kept.
    let out = &r.step(0).outputs;
    assert_eq!(out.get("eq").map(String::as_str), Some("a=b=c"), "{out:?}");
    assert_eq!(
        out.get("multi").map(String::as_str),
        Some("line one\nline two"),
        "{out:?}"
    );
    assert_eq!(out.get("echo").map(String::as_str), Some("hyphen-value"));
    // exportVariable and addPath reach the later step.
    for want in [
        "eq=a=b=c",
        "echo=hyphen-value",
        "later JS_EXPORTED=from-js",
        "js-tool ran",
    ] {
        assert!(r.has_line(want), "{want}: {:?}", r.lines());
    }
    // The job token is not sent to the default actions host (it is not the forge).
    assert!(
        server.authorizations().is_empty(),
        "{:?}",
        server.authorizations().len()
    );
}

#[tokio::test]
async fn pre_main_post_run_in_github_order_with_state() {
    let server = server_with(&["js-stages"]).await;
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/js-stages@v1
        with:
          label: A
      - uses: fixtures/js-stages@v1
        with:
          label: B
      - run: echo run-step
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let order: Vec<String> = r
        .lines()
        .into_iter()
        .filter(|l| ["pre ", "main ", "post "].iter().any(|p| l.starts_with(p)) || l == "run-step")
        .collect();
    assert_eq!(
        order,
        vec![
            "pre A",
            "pre B",
            "main A pre-key=[from-pre-A] MixedCase=[mixed-A]",
            "main B pre-key=[from-pre-B] MixedCase=[mixed-B]",
            "run-step",
            "post B pre-key=[from-pre-B] main-key=[from-main-B]",
            "post A pre-key=[from-pre-A] main-key=[from-main-A]",
        ],
        "{:?}",
        r.lines()
    );
    // Both steps use the same action at the same ref: fetched once.
    assert!(
        server.upload_packs() <= 1,
        "{} fetches of one action",
        server.upload_packs()
    );
}

#[tokio::test]
async fn post_if_defaults_to_always_and_success_is_honoured() {
    let server = server_with(&["js-post", "js-post-if"]).await;
    // A later step fails: the default post runs, `post-if: success()` does not.
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/js-post@v1
      - uses: fixtures/js-post-if@v1
      - run: echo failing; exit 1
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, F, "{:?}", r.lines());
    assert_eq!(r.conclusions(3), vec![(S, S), (S, S), (F, F)]);
    assert!(r.has_line("js-post main"), "{:?}", r.lines());
    assert!(r.has_line("js-post-if main"), "{:?}", r.lines());
    assert!(r.has_line("js-post post"), "{:?}", r.lines());
    assert!(!r.has_line("js-post-if post"), "{:?}", r.lines());

    // A successful job runs the `post-if: success()` post; a step skipped by
    // `if:` gets no post.
    let r = run(
        r#"
jobs:
  build:
    steps:
      - if: ${{ false }}
        uses: fixtures/js-post@v1
      - uses: fixtures/js-post-if@v1
      - run: echo fine
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(3), vec![(K, K), (S, S), (S, S)]);
    assert!(r.has_line("js-post-if post"), "{:?}", r.lines());
    assert!(!r.has_line("js-post main"), "{:?}", r.lines());
    assert!(!r.has_line("js-post post"), "{:?}", r.lines());
}

#[tokio::test]
async fn javascript_failures_follow_the_exit_code() {
    let server = server_with(&["js-fail"]).await;
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/js-fail@v1
        continue-on-error: true
      - uses: fixtures/js-fail@v1
        continue-on-error: true
        with:
          mode: exit
      - uses: fixtures/js-fail@v1
        with:
          mode: error-exit0
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    // setFailed: an error annotation and exit code 1; exit 1 alone fails
    // too; an error annotation with exit 0 passes.
    assert_eq!(r.conclusions(3), vec![(F, S), (F, S), (S, S)]);
    let errors: Vec<String> = r
        .kinds()
        .into_iter()
        .filter(|(k, _)| *k == LineKind::Annotation("error".into()))
        .map(|(_, t)| t)
        .collect();
    assert!(
        errors.contains(&"js-fail: the widget broke".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"js-fail: reported, but the step passes".to_string()),
        "{errors:?}"
    );
    assert!(
        r.sink
            .step_lines(1)
            .contains(&"js-fail: leaving with exit code 1".to_string())
    );
}

#[tokio::test]
async fn composite_with_nested_actions_inputs_outputs_and_env() {
    let server = server_with(&["composite-basic", "composite-inner", "js-inputs"]).await;
    let r = run(
        r#"
jobs:
  build:
    steps:
      - id: outer
        run: echo "x=outer-value" >> "$GITHUB_OUTPUT"
      - id: comp
        uses: fixtures/composite-basic@v1
        env:
          PINNED: from-caller
        with:
          who: world
      - run: |
          echo "sentence=${{ steps.comp.outputs.sentence }}"
          echo "inner=${{ steps.comp.outputs.inner }}"
          echo "js-eq=${{ steps.comp.outputs.js-eq }}"
          echo "later sees COMPOSITE_ENV=$COMPOSITE_ENV"
          echo "later sees JS_EXPORTED=$JS_EXPORTED"
          echo "later sees PINNED=$PINNED"
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(3), vec![(S, S), (S, S), (S, S)]);
    for want in [
        // Inside the composite: github.action_path is GITHUB_ACTION_PATH,
        // the action's directory, and its executable script runs.
        "action-path-agrees",
        "action-path-has-manifest",
        "script.sh ran for world",
        // The job's steps are not visible inside.
        "outer-steps=[]",
        // A GITHUB_ENV write reaches the next child; the caller's `env:` wins.
        "child sees COMPOSITE_ENV=set-inside",
        "child sees PINNED=from-caller",
        // Nested composite and JavaScript actions, with their outputs.
        "my-input=[from-composite]",
        "inner said WORLD, js said from-composite",
        // After it: outputs through `outputs.<name>.value`, env and PATH.
        "sentence=hello, world",
        "inner=WORLD",
        "js-eq=a=b=c",
        "later sees COMPOSITE_ENV=set-inside",
        "later sees JS_EXPORTED=from-js",
        "later sees PINNED=from-child",
    ] {
        assert!(r.has_line(want), "{want}: {:?}", r.lines());
    }
    let out = &r.step(1).outputs;
    assert_eq!(
        out.get("sentence").map(String::as_str),
        Some("hello, world")
    );
    assert_eq!(out.get("inner").map(String::as_str), Some("WORLD"));
}

#[tokio::test]
async fn composite_child_failure_and_continue_on_error() {
    let server = server_with(&["composite-fail"]).await;
    // A failing child: later default children skipped, failure() and
    // always() children run, the composite (and the job) fail.
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/composite-fail@v1
      - run: echo job-step-after
      - if: failure()
        run: echo job-failure-handler
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, F, "{:?}", r.lines());
    assert_eq!(r.conclusions(3), vec![(F, F), (K, K), (S, S)]);
    for want in [
        "first-child",
        "failing-child",
        "on-failure-child",
        "always-child",
    ] {
        assert!(r.has_line(want), "{want}: {:?}", r.lines());
    }
    assert!(!r.has_line("after-failure-default"), "{:?}", r.lines());
    assert!(!r.has_line("job-step-after"), "{:?}", r.lines());
    assert!(r.has_line("job-failure-handler"), "{:?}", r.lines());

    // The caller's continue-on-error: outcome failure, conclusion success.
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/composite-fail@v1
        continue-on-error: true
      - run: echo next
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(2), vec![(F, S), (S, S)]);
    assert!(r.has_line("next"));

    // continue-on-error on the failing child (the `owner/repo/path@ref`
    // form): the composite carries on and succeeds.
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/composite-fail/tolerant@v1
      - run: echo job-step-after
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(2), vec![(S, S), (S, S)]);
    for want in [
        "first-child",
        "failing-child",
        "after-failure-default outcome=failure conclusion=success",
        "always-child",
        "job-step-after",
    ] {
        assert!(r.has_line(want), "{want}: {:?}", r.lines());
    }
    assert!(!r.has_line("on-failure-child"), "{:?}", r.lines());
}

#[tokio::test]
async fn a_self_using_composite_is_refused_at_the_depth_limit() {
    let server = server_with(&["composite-recursive"]).await;
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/composite-recursive@v1
      - if: always()
        run: echo still-here
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, F, "{:?}", r.lines());
    assert_eq!(r.step(0).conclusion, F);
    assert!(r.has_line("still-here"));
    let text = r.text().to_lowercase();
    assert!(text.contains("depth"), "{text}");
    assert!(text.contains("fixtures/composite-recursive"), "{text}");
    // GitHub allows about ten levels.
    let levels = r.lines().iter().filter(|l| *l == "recursing").count();
    assert!(levels <= 10, "{levels} levels ran");
    // One action, one ref: fetched once however deep it nests.
    assert!(
        server.upload_packs() <= 1,
        "{} fetches of one action",
        server.upload_packs()
    );
}

#[tokio::test]
async fn local_actions_from_the_workspace() {
    let server = GitServer::start().await;
    let ws = tempfile::tempdir().unwrap();
    actions::prepare("local-action", ws.path());
    let mut j = job(
        r#"
jobs:
  build:
    steps:
      - uses: actions/checkout@v4
      - id: hello
        uses: ./.github/actions/hello
        with:
          who: tester
      - id: js
        uses: ./.github/actions/hello-js
      - run: echo "got ${{ steps.hello.outputs.greeting }} and ${{ steps.js.outputs.said }}"
"#,
        &server,
    );
    j.spec.checkout = CheckoutSource::LocalTree {
        root: ws.path().to_path_buf(),
        exclude: Vec::new(),
    };
    let r = run_job_of(j).await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(4), vec![(S, S); 4]);
    for want in [
        "hello, tester",
        "local-action-path-ok",
        "hello-js main: hello, js world",
        "got hello, tester and hello, js world",
        // A local action's post runs; its pre does not (GitHub).
        "hello-js post",
    ] {
        assert!(r.has_line(want), "{want}: {:?}", r.lines());
    }
    assert!(!r.has_line("hello-js pre"), "{:?}", r.lines());
    // Nothing was fetched.
    assert_eq!(server.upload_packs(), 0);
}

/// On an illumos image, Docker actions fail at once, naming the image
/// (they run in the guest's container engine: `containers_action.rs`).
#[tokio::test]
async fn docker_actions_fail_clearly_on_illumos() {
    let server = server_with(&["docker-action"]).await;
    let mut job = job(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/docker-action@v1
        continue-on-error: true
      - uses: docker://busybox:1
        continue-on-error: true
      - run: echo after
"#,
        &server,
    );
    job.runner = crate::support::local_runner(GuestOs::Illumos, "test-runner", job.home.path());
    let r = run_job_of(job).await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert_eq!(r.conclusions(3), vec![(F, S), (F, S), (S, S)]);
    for i in 0..2 {
        let t = r.step_text_lower(i);
        assert!(
            t.contains("needs a linux image with a container engine")
                && t.contains("is an illumos image"),
            "step {i}: {t}"
        );
    }
    assert!(!r.has_line("docker-action ran"));
}

#[tokio::test]
async fn a_malformed_manifest_names_the_file_and_position() {
    let server = server_with(&["bad-manifest"]).await;
    let r = run(
        "jobs:\n  build:\n    steps:\n      - uses: fixtures/bad-manifest@v1\n",
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, F, "{:?}", r.lines());
    let t = r.step_text_lower(0);
    // `inputs:` holds a list that starts on line 4, column 3.
    assert!(
        t.contains("fixtures/bad-manifest@v1/action.yml at line 4, column 3"),
        "{t}"
    );
    assert!(t.contains("inputs"), "{t}");
    assert!(!r.has_line("never"));
}

#[tokio::test]
async fn a_missing_node_fails_the_step_clearly() {
    let server = server_with(&["js-post"]).await;
    let mut j = job(
        "jobs:\n  build:\n    steps:\n      - uses: fixtures/js-post@v1\n",
        &server,
    );
    let missing = j.home.path().join("no-such-node/bin/node");
    j.runner.node = Some(missing.to_str().unwrap().to_string());
    let r = run_job_of(j).await;
    assert_eq!(r.outcome.conclusion, F, "{:?}", r.lines());
    assert_eq!(r.step(0).conclusion, F);
    let t = r.step_text_lower(0);
    assert!(t.contains("node"), "{t}");
    assert!(!r.has_line("js-post main"));
    assert!(!r.has_line("js-post post"));
}

#[tokio::test]
async fn a_javascript_action_nested_in_a_composite_gets_its_pre_and_post() {
    let server = server_with(&["composite-posts", "js-stages"]).await;
    let r = run(
        r#"
jobs:
  build:
    steps:
      - uses: fixtures/composite-posts@v1
      - run: echo run-step
"#,
        &server,
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let order: Vec<String> = r
        .lines()
        .into_iter()
        .filter(|l| {
            ["pre ", "main ", "post "].iter().any(|p| l.starts_with(p))
                || l == "run-step"
                || l == "composite-child"
        })
        .collect();
    // The nested post runs at the end of the job (actions/runner#1434), with
    // the state of the nested action's earlier stages.
    let post = "post nested pre-key=[from-pre-nested] main-key=[from-main-nested]";
    assert_eq!(order.last().map(String::as_str), Some(post), "{order:?}");
    let at = |s: &str| order.iter().position(|l| l.starts_with(s));
    assert!(
        at("main nested pre-key=[from-pre-nested]").is_some(),
        "{order:?}"
    );
    assert!(at("composite-child") < at("main nested"), "{order:?}");
    assert!(at("main nested") < at("run-step"), "{order:?}");
    // The pre ran (GitHub collects nested pre stages into the composite's
    // pre, at the start of the job), before the main stage.
    assert!(at("pre nested").is_some(), "{order:?}");
    assert!(at("pre nested") < at("main nested"), "{order:?}");
}
