//! Whole jobs through the executor with `LocalSession` (real `sh` processes on
//! the host). The same workflows are re-run in VMs by the VM tests.

use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::{Value, json};
use solstice::config::GuestOs;
use solstice::events::{Conclusion, JobEvent, LineKind};
use solstice::executor::{JobOutcome, run_job};
use solstice::guest::{GuestError, GuestSession, LocalSession, OutputChunk};
use solstice::job::{CheckoutSource, JobSpec, RunnerInfo};
use solstice::secret::Secret;
use solstice::testing::VecSink;
use solstice::workflow::model::parse_workflow;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A host session that pretends bash is not installed (the probe looks for a
/// command that does not exist), like the tiny busybox guest.
struct NoBashSession;

#[async_trait]
impl GuestSession for NoBashSession {
    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError> {
        let command = command.replace("command -v bash", "command -v solstice-no-such-bash");
        LocalSession.exec(&command, stdin, output).await
    }
}

/// A job and the runner it runs on, as the tests edit them.
struct TestJob {
    spec: JobSpec,
    runner: RunnerInfo,
}

impl Deref for TestJob {
    type Target = JobSpec;
    fn deref(&self) -> &JobSpec {
        &self.spec
    }
}

impl DerefMut for TestJob {
    fn deref_mut(&mut self) -> &mut JobSpec {
        &mut self.spec
    }
}

fn spec(yaml: &str, home: &Path) -> TestJob {
    let workflow = parse_workflow(yaml).unwrap();
    let job_id = workflow.jobs.keys().next().unwrap().clone();
    let spec = JobSpec {
        workflow,
        job_id,
        matrix: IndexMap::new(),
        github: json!({
            "repository": "acme/widget",
            "sha": "0123456789abcdef",
            "ref": "refs/heads/main",
            "server_url": "https://forge.example",
            "run_id": "77",
            "event_name": "push",
            "event": {"head_commit": {"message": "hello"}}
        }),
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
    let runner = crate::support::local_runner(GuestOs::Linux, "test-runner", home);
    TestJob { spec, runner }
}

struct Run {
    outcome: JobOutcome,
    sink: VecSink,
    _home: tempfile::TempDir,
}

impl Run {
    fn lines(&self) -> Vec<String> {
        self.sink.lines()
    }

    /// Lines of one step.
    fn step_lines(&self, index: usize) -> Vec<String> {
        self.sink.step_lines(index)
    }

    fn conclusions(&self) -> Vec<(Conclusion, Conclusion)> {
        self.outcome
            .steps
            .iter()
            .map(|s| (s.outcome, s.conclusion))
            .collect()
    }

    fn all_text(&self) -> String {
        self.sink.all_text()
    }
}

async fn run_with(
    yaml: &str,
    session: &dyn GuestSession,
    edit: impl FnOnce(&mut TestJob),
    cancel: CancellationToken,
) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut spec = spec(yaml, home.path());
    edit(&mut spec);
    let sink = VecSink::default();
    let outcome = run_job(&spec.spec, &spec.runner, session, &sink, cancel).await;
    Run {
        outcome,
        sink,
        _home: home,
    }
}

async fn run(yaml: &str) -> Run {
    run_with(yaml, &LocalSession, |_| {}, CancellationToken::new()).await
}

const S: Conclusion = Conclusion::Success;
const F: Conclusion = Conclusion::Failure;
const K: Conclusion = Conclusion::Skipped;
const C: Conclusion = Conclusion::Cancelled;

#[tokio::test]
async fn failing_step_skips_the_rest_but_failure_and_always_steps_run() {
    let r = run(r#"
jobs:
  build:
    steps:
      - run: echo before; exit 3
      - run: echo should-not-run
      - if: failure()
        run: echo on-failure
      - if: always()
        run: echo always
      - if: success()
        run: echo on-success
"#)
    .await;
    assert_eq!(r.outcome.conclusion, F);
    assert_eq!(
        r.conclusions(),
        vec![(F, F), (K, K), (S, S), (S, S), (K, K)]
    );
    let lines = r.lines();
    assert!(lines.contains(&"before".to_string()));
    assert!(lines.iter().any(|l| l.contains("exit code 3")), "{lines:?}");
    assert!(!lines.contains(&"should-not-run".to_string()));
    assert!(lines.contains(&"on-failure".to_string()));
    assert!(lines.contains(&"always".to_string()));
    assert!(!lines.contains(&"on-success".to_string()));
    assert!(matches!(
        r.sink.events().last(),
        Some(JobEvent::JobFinished {
            conclusion: Conclusion::Failure,
            ..
        })
    ));
}

#[tokio::test]
async fn skip_lines_blame_the_earlier_failure_not_the_users_if() {
    let r = run(r#"
jobs:
  build:
    steps:
      - if: github.ref == 'refs/heads/nope'
        run: echo not-on-this-ref
      - run: exit 3
      - run: echo no-if
      - if: github.ref == 'refs/heads/main'
        run: echo ref-matches
      - if: success()
        run: echo explicit-success
      - if: always() && github.ref == 'refs/heads/nope'
        run: echo always-but-false
"#)
    .await;
    assert_eq!(
        r.conclusions(),
        vec![(K, K), (F, F), (K, K), (K, K), (K, K), (K, K)]
    );
    let skip = |i: usize| {
        r.step_lines(i)
            .into_iter()
            .find(|l| l.starts_with("Skipped"))
            .unwrap_or_default()
    };
    assert_eq!(
        skip(0),
        "Skipped: `if: github.ref == 'refs/heads/nope'` is false"
    );
    assert_eq!(skip(2), "Skipped: an earlier step failed");
    assert_eq!(
        skip(3),
        "Skipped: an earlier step failed (an `if:` without success(), failure(), always() or cancelled() runs only while the job succeeds)"
    );
    assert_eq!(skip(4), "Skipped: an earlier step failed (`if: success()`)");
    assert_eq!(
        skip(5),
        "Skipped: `if: always() && github.ref == 'refs/heads/nope'` is false"
    );
}

#[tokio::test]
async fn continue_on_error_keeps_outcome_and_conclusion_apart() {
    let r = run(r#"
jobs:
  build:
    steps:
      - id: flaky
        continue-on-error: true
        run: exit 1
      - run: echo "outcome=${{ steps.flaky.outcome }} conclusion=${{ steps.flaky.conclusion }}"
"#)
    .await;
    assert_eq!(r.outcome.conclusion, S);
    assert_eq!(r.conclusions(), vec![(F, S), (S, S)]);
    assert!(
        r.lines()
            .contains(&"outcome=failure conclusion=success".to_string())
    );
}

#[tokio::test]
async fn github_output_feeds_a_later_if_and_job_outputs() {
    let r = run(r#"
jobs:
  build:
    outputs:
      answer: ${{ steps.a.outputs.go }}
      multi: ${{ steps.a.outputs.text }}
    steps:
      - id: a
        run: |
          echo "go=yes" >> "$GITHUB_OUTPUT"
          printf 'text<<EOF\nline one\nline two\nEOF\n' >> "$GITHUB_OUTPUT"
      - if: steps.a.outputs.go == 'yes'
        run: echo ran-yes
      - if: steps.a.outputs.go == 'no'
        run: echo ran-no
"#)
    .await;
    assert_eq!(r.outcome.conclusion, S);
    assert_eq!(r.conclusions(), vec![(S, S), (S, S), (K, K)]);
    assert!(r.lines().contains(&"ran-yes".to_string()));
    assert!(!r.lines().contains(&"ran-no".to_string()));
    assert_eq!(r.outcome.steps[0].outputs["go"], "yes");
    assert_eq!(r.outcome.outputs["answer"], "yes");
    assert_eq!(r.outcome.outputs["multi"], "line one\nline two");
}

#[tokio::test]
async fn github_env_heredoc_and_github_path_reach_later_steps() {
    let r = run(r#"
env:
  LEVEL: workflow
jobs:
  build:
    env:
      LEVEL: job
    steps:
      - run: |
          printf 'MULTI<<END\nfirst line\nsecond line\nEND\n' >> "$GITHUB_ENV"
          echo "LEVEL=from-github-env" >> "$GITHUB_ENV"
          mkdir -p "$RUNNER_TEMP/mybin"
          printf '#!/bin/sh\necho tool-ran\n' > "$RUNNER_TEMP/mybin/mytool"
          chmod +x "$RUNNER_TEMP/mybin/mytool"
          echo "$RUNNER_TEMP/mybin" >> "$GITHUB_PATH"
      - run: |
          echo "multi=[$MULTI]"
          echo "level=$LEVEL ctx=${{ env.LEVEL }}"
          mytool
      - env:
          LEVEL: step
        run: echo "level=$LEVEL"
"#)
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let l = r.step_lines(1);
    assert!(l.contains(&"multi=[first line".to_string()), "{l:?}");
    assert!(l.contains(&"second line]".to_string()), "{l:?}");
    assert!(
        l.contains(&"level=from-github-env ctx=from-github-env".to_string()),
        "{l:?}"
    );
    assert!(l.contains(&"tool-ran".to_string()), "{l:?}");
    assert!(r.step_lines(2).contains(&"level=step".to_string()));
}

#[tokio::test]
async fn env_precedence_and_runner_variables() {
    let r = run_with(
        r#"
name: CI
env:
  A: wf
  B: wf
  C: wf
jobs:
  build:
    env:
      B: job
      GITHUB_JOB: user-cannot-override
    steps:
      - env:
          C: step
        run: |
          echo "A=$A B=$B C=$C X=$EXTRA"
          echo "job=$GITHUB_JOB ws=$GITHUB_WORKSPACE pwd=$(pwd)"
          echo "os=$RUNNER_OS arch=$RUNNER_ARCH ci=$CI actions=$GITHUB_ACTIONS repo=$GITHUB_REPOSITORY ref=$GITHUB_REF_NAME sha=$GITHUB_SHA run=$GITHUB_RUN_ID"
          echo "event=$(cat "$GITHUB_EVENT_PATH" | tr -d ' \n')"
          echo "ctx=${{ runner.os }} ${{ github.repository }} ${{ env.B }}"
"#,
        &LocalSession,
        |s| {
            s.extra_env.insert("EXTRA".into(), "cli".into());
            s.runner.os = GuestOs::Illumos;
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let l = r.lines();
    assert!(l.contains(&"A=wf B=job C=step X=cli".to_string()), "{l:?}");
    let home = r._home.path().to_str().unwrap();
    let ws = format!("{home}/work/widget/widget");
    assert!(l.contains(&format!("job=build ws={ws} pwd={ws}")), "{l:?}");
    assert!(l.contains(&"os=illumos arch=X64 ci=true actions=true repo=acme/widget ref=main sha=0123456789abcdef run=77".to_string()), "{l:?}");
    assert!(
        l.contains(&r#"event={"head_commit":{"message":"hello"}}"#.to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(&"ctx=illumos acme/widget job".to_string()),
        "{l:?}"
    );
}

/// Workflows written for Forgejo or Gitea: the `forge`, `forgejo` and
/// `gitea` contexts are `github`, and the `FORGEJO_*` copies of the
/// `GITHUB_*` variables are set, file commands included.
#[tokio::test]
async fn forgejo_and_gitea_names_reach_a_real_shell() {
    let r = run(r#"
jobs:
  build:
    steps:
      - id: first
        run: |
          echo "ctx=${{ forgejo.repository }} ${{ gitea.sha }} ${{ forge.event_name }}"
          echo "env=$FORGEJO_REPOSITORY $FORGEJO_SHA $FORGEJO_REF_NAME $FORGEJO_JOB $FORGEJO_SERVER_URL"
          test "$FORGEJO_WORKSPACE" = "$GITHUB_WORKSPACE" && echo same-workspace
          echo "via=forgejo" >> "$FORGEJO_OUTPUT"
      - run: echo "out=${{ steps.first.outputs.via }}"
"#)
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let l = r.lines();
    assert!(
        l.contains(&"ctx=acme/widget 0123456789abcdef push".to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(
            &"env=acme/widget 0123456789abcdef main build https://forge.example".to_string()
        ),
        "{l:?}"
    );
    assert!(l.contains(&"same-workspace".to_string()), "{l:?}");
    assert!(l.contains(&"out=forgejo".to_string()), "{l:?}");
}

#[tokio::test]
async fn secrets_are_masked_everywhere() {
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - name: Deploy with ${{ secrets.TOKEN }}
        run: |
          echo "${{ secrets.TOKEN }}"
          echo "before-$TOKEN-after"
          printf 'split:s3cr'; sleep 0.3; printf 'et-value-123\n'
          printf '%s\n' "$KEY"
          echo "::add-mask::runtime-value"
          echo "the runtime-value is hidden"
          echo "summary: $TOKEN" >> "$GITHUB_STEP_SUMMARY"
          echo "::warning::warn $TOKEN"
          echo "$TOKEN" >&2
        env:
          TOKEN: ${{ secrets.TOKEN }}
          KEY: ${{ secrets.KEY }}
"#,
        &LocalSession,
        |s| {
            s.secrets
                .insert("TOKEN".into(), Secret::new("s3cret-value-123"));
            s.secrets.insert(
                "KEY".into(),
                Secret::new("-----BEGIN-----\nkey-line-two\n-----END-----"),
            );
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let all = r.all_text();
    for leak in [
        "s3cret-value-123",
        "key-line-two",
        "-----BEGIN-----",
        "runtime-value",
    ] {
        assert!(!all.contains(leak), "{leak} leaked:\n{all}");
    }
    let l = r.lines();
    assert!(l.contains(&"***".to_string()), "{l:?}");
    assert!(l.contains(&"before-***-after".to_string()), "{l:?}");
    assert!(l.contains(&"split:***".to_string()), "{l:?}");
    assert!(l.contains(&"the *** is hidden".to_string()), "{l:?}");
    assert!(l.contains(&"warn ***".to_string()), "{l:?}");
    assert_eq!(r.outcome.steps[0].name, "Deploy with ***");
    assert!(r.sink.events().iter().any(|e| matches!(e,
        JobEvent::StepStarted { name, .. } if name == "Deploy with ***")));
    assert!(r.sink.events().iter().any(|e| matches!(e,
        JobEvent::StepSummary { markdown, .. } if markdown.trim() == "summary: ***")));
}

/// A line longer than the executor's 1 MiB line cap is cut into pieces,
/// each masked on its own: a secret written across the cut stays whole in
/// one piece and is hidden.
#[tokio::test]
async fn a_secret_across_the_cut_of_an_overlong_line_is_masked() {
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - run: |
          # 1 MiB minus 4 bytes of x, then the secret, then more: the
          # secret straddles the 1 MiB cut.
          head -c 1048572 /dev/zero | tr '\0' x
          printf '%s-tail\n' "$TOKEN"
        env:
          TOKEN: ${{ secrets.TOKEN }}
"#,
        &LocalSession,
        |s| {
            s.secrets
                .insert("TOKEN".into(), Secret::new("s3cret-value-123"));
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome.conclusion, S);
    let l = r.lines();
    for piece in &l {
        for part in ["s3cr", "ret-value", "value-123"] {
            assert!(
                !piece.contains(part),
                "a piece of the secret leaked: {part}"
            );
        }
    }
    let joined: String = l.concat();
    assert!(
        joined.ends_with("x***-tail"),
        "{}",
        &joined[joined.len().saturating_sub(40)..]
    );
    assert_eq!(joined.len(), 1048572 + "***-tail".len());
}

#[tokio::test]
async fn job_outputs_with_secrets_are_dropped() {
    let r = run_with(
        r#"
jobs:
  build:
    outputs:
      leak: ${{ steps.a.outputs.v }}
      fine: ok
    steps:
      - id: a
        run: echo "v=${{ secrets.PW }}" >> "$GITHUB_OUTPUT"
"#,
        &LocalSession,
        |s| {
            s.secrets.insert("PW".into(), Secret::new("pa55word"));
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome.conclusion, S);
    assert!(!r.outcome.outputs.contains_key("leak"));
    assert_eq!(r.outcome.outputs["fine"], "ok");
    assert!(
        r.lines()
            .iter()
            .any(|l| l.contains("Skipped job output `leak`"))
    );
}

#[tokio::test]
async fn step_timeout_kills_the_step_and_always_steps_still_run() {
    let started = Instant::now();
    let r = run(r#"
jobs:
  build:
    steps:
      - timeout-minutes: 0.03
        run: |
          echo started
          sleep 611
          echo not-reached
      - run: echo skipped
      - if: always()
        run: echo cleanup
"#)
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.outcome.conclusion, F);
    assert_eq!(r.conclusions(), vec![(F, F), (K, K), (S, S)]);
    let l = r.lines();
    assert!(l.contains(&"started".to_string()));
    assert!(!l.contains(&"not-reached".to_string()));
    assert!(l.iter().any(|x| x.contains("timeout-minutes")), "{l:?}");
    assert!(l.contains(&"cleanup".to_string()));
    // The sleep was killed, not left behind.
    let ps = std::process::Command::new("sh")
        .arg("-c")
        .arg("ps -eo args | grep '^sleep 611$' || true")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty());
}

#[tokio::test]
async fn job_timeout_stops_the_job() {
    let started = Instant::now();
    let r = run(r#"
jobs:
  build:
    timeout-minutes: 0.03
    steps:
      - run: sleep 600
      - run: echo skipped
      - if: always()
        run: echo always-after-timeout
      - if: cancelled()
        run: echo cancelled-is-true
"#)
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(r.outcome.conclusion, F);
    assert_eq!(r.conclusions(), vec![(C, C), (K, K), (S, S), (S, S)]);
    let l = r.lines();
    assert!(l.contains(&"always-after-timeout".to_string()));
    assert!(l.contains(&"cancelled-is-true".to_string()));
    assert!(l.iter().any(|x| x.contains("maximum execution time")));
    assert!(
        r.step_lines(1)
            .contains(&"Skipped: the job timed out".to_string()),
        "{:?}",
        r.step_lines(1)
    );
}

#[tokio::test]
async fn max_job_timeout_caps_the_job_timeout() {
    let started = Instant::now();
    let r = run_with(
        "jobs:\n  b:\n    timeout-minutes: 100\n    steps:\n      - run: sleep 600\n",
        &LocalSession,
        |s| s.max_job_timeout = Some(Duration::from_secs(2)),
        CancellationToken::new(),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(r.outcome.conclusion, F);
}

#[tokio::test]
async fn cancellation_kills_the_step_and_runs_only_always_steps() {
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c2.cancel();
    });
    let started = Instant::now();
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - run: echo first; sleep 600
      - run: echo normal
      - if: always()
        run: echo always-ran
      - if: failure()
        run: echo failure-ran
"#,
        &LocalSession,
        |_| {},
        cancel,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(r.outcome.conclusion, C);
    assert_eq!(r.conclusions(), vec![(C, C), (K, K), (S, S), (K, K)]);
    assert!(r.lines().contains(&"always-ran".to_string()));
    assert!(
        r.step_lines(1)
            .contains(&"Skipped: the job was cancelled".to_string()),
        "{:?}",
        r.step_lines(1)
    );
    assert!(
        r.step_lines(3)
            .contains(&"Skipped: `if: failure()` is false".to_string()),
        "{:?}",
        r.step_lines(3)
    );
}

#[tokio::test]
async fn working_directory_and_defaults_run() {
    let r = run(r#"
defaults:
  run:
    shell: sh
jobs:
  build:
    defaults:
      run:
        working-directory: sub/dir
    steps:
      - working-directory: .
        run: mkdir -p sub/dir && echo "bash=${BASH_VERSION:-none}"
      - run: echo "pwd=$(pwd)"
      - working-directory: missing
        run: echo never
"#)
    .await;
    assert_eq!(r.conclusions(), vec![(S, S), (S, S), (F, F)]);
    assert!(r.step_lines(0).contains(&"bash=none".to_string()));
    let home = r._home.path().to_str().unwrap();
    assert!(
        r.step_lines(1)
            .contains(&format!("pwd={home}/work/widget/widget/sub/dir"))
    );
    assert!(
        r.step_lines(2).iter().any(|l| l.contains("does not exist")),
        "{:?}",
        r.step_lines(2)
    );
}

#[tokio::test]
async fn default_shell_is_bash_when_present_and_sh_otherwise() {
    let yaml = r#"
jobs:
  build:
    steps:
      - run: echo "bash=${BASH_VERSION:+yes}"; false | true
      - run: false | true
      - run: echo not-bash
        shell: bash
      - run: false | true
        shell: bash
"#;
    let with_bash = run(yaml).await;
    assert!(with_bash.step_lines(0).contains(&"bash=yes".to_string()));
    // GitHub's default is `bash -e {0}`: no pipefail, so `false | true` passes;
    // only an explicit `shell: bash` adds `-o pipefail`.
    assert_eq!(with_bash.conclusions()[0], (S, S));
    assert_eq!(with_bash.conclusions()[3], (F, F));

    // `defaults.run.shell: bash` is an explicit bash too.
    let defaults = run(r#"
jobs:
  build:
    defaults:
      run:
        shell: bash
    steps:
      - run: false | true
"#)
    .await;
    assert_eq!(defaults.conclusions(), vec![(F, F)]);

    let no_bash = run_with(yaml, &NoBashSession, |_| {}, CancellationToken::new()).await;
    assert!(
        no_bash.step_lines(0).contains(&"bash=".to_string()),
        "{:?}",
        no_bash.lines()
    );
    assert_eq!(no_bash.conclusions()[0], (S, S));
    assert_eq!(no_bash.conclusions()[2], (F, F));
    assert!(
        no_bash
            .step_lines(2)
            .iter()
            .any(|l| l.contains("bash is not installed"))
    );
}

#[tokio::test]
async fn step_display_names() {
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - name: Build on ${{ matrix.os }}
        run: "true"
      - run: |

          echo ${{ matrix.os }} first
          echo second
      - uses: actions/setup-node@v4
"#,
        &LocalSession,
        |s| {
            s.matrix.insert("os".into(), Value::String("omnios".into()));
        },
        CancellationToken::new(),
    )
    .await;
    let names: Vec<_> = r.outcome.steps.iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        vec![
            "Build on omnios".to_string(),
            "Run echo omnios first".to_string(),
            "Run actions/setup-node@v4".to_string()
        ]
    );
}

#[tokio::test]
async fn unsupported_uses_fails_the_step_clearly() {
    let r = run(r#"
jobs:
  build:
    steps:
      - uses: actions/setup-node@v4
      - if: always()
        run: echo after
"#)
    .await;
    assert_eq!(r.outcome.conclusion, F);
    assert_eq!(r.conclusions(), vec![(F, F), (S, S)]);
    assert!(r.lines().iter().any(|l| l
        == "`uses: actions/setup-node@v4` cannot be fetched: this run has no action cache (remote actions are fetched by the host)"), "{:?}", r.lines());
}

#[tokio::test]
async fn docker_actions_fail_the_step_clearly() {
    let r = run(r#"
jobs:
  build:
    steps:
      - uses: docker://alpine:3
      - if: always()
        run: echo after
"#)
    .await;
    assert_eq!(r.conclusions(), vec![(F, F), (S, S)]);
    // This "guest" is the host: without docker the step says it needs a
    // container engine; with a docker CLI but no daemon reachable (as on the
    // CI machines) the pull fails and says so.
    assert!(
        r.lines().iter().any(|l| {
            l.contains("needs a Linux image with a container engine")
                || l.contains("container engine")
                || l.contains("alpine:3")
        }),
        "{:?}",
        r.lines()
    );
}

/// Local actions (from the workspace): a composite with inputs, outputs,
/// `GITHUB_ACTION_PATH` and a failing step, and a JavaScript action with
/// pre/main/post stages, state and inputs (plain node: no packages).
#[tokio::test]
async fn local_composite_and_javascript_actions_run() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("this test needs node on the host's PATH");
    }
    let r = run(r#"
jobs:
  build:
    steps:
      - name: write the actions
        run: |
          mkdir -p .github/actions/comp .github/actions/js
          cat > .github/actions/comp/action.yml <<'EOF'
          name: comp
          inputs:
            who:
              default: world
            Shout-It:
              default: @{{ github.ref }}
          outputs:
            greeting:
              value: @{{ steps.hi.outputs.text }}
          runs:
            using: composite
            steps:
              - id: hi
                shell: sh
                run: |
                  echo "text=hello @{{ inputs.who }}" >> "$GITHUB_OUTPUT"
                  echo "shout=@{{ inputs.shout-it }}"
                  sh "$GITHUB_ACTION_PATH/helper.sh"
                  echo "COMP_ENV=from-composite" >> "$GITHUB_ENV"
              - shell: sh
                run: echo "action path @{{ github.action_path }}" | sed "s#$HOME#HOME#"
          EOF
          echo 'echo "helper ran in $(basename "$(dirname "$0")")"' > .github/actions/comp/helper.sh
          cat > .github/actions/js/action.yml <<'EOF'
          name: js
          inputs:
            my-input:
              required: true
            a.b:
              default: dotted
          runs:
            using: node20
            pre: pre.js
            main: main.js
            post: post.js
          EOF
          cat > .github/actions/js/main.js <<'EOF'
          const fs = require('fs');
          console.log(`main my-input=${process.env['INPUT_MY-INPUT']} a.b=${process.env['INPUT_A.B']} state=${process.env['STATE_Saved']}`);
          fs.appendFileSync(process.env.GITHUB_OUTPUT, 'out=42\n');
          fs.appendFileSync(process.env.GITHUB_STATE, 'fromMain=m\n');
          EOF
          cp .github/actions/js/main.js .github/actions/js/pre.js
          # The actions were written with @{{ (this step evaluates its own
          # expressions).
          sed -i 's/@{{/$''{{/g' .github/actions/*/action.yml
          cat > .github/actions/js/post.js <<'EOF'
          console.log(`post state=${process.env['STATE_fromMain']} input=${process.env['INPUT_MY-INPUT']}`);
          EOF
      - id: c
        uses: ./.github/actions/comp
        with:
          WHO: solstice
      - run: echo "greeting=${{ steps.c.outputs.greeting }} env=$COMP_ENV"
      - id: j
        uses: ./.github/actions/js
        with:
          my-input: mine
          unknown: x
      - run: echo "js out=${{ steps.j.outputs.out }}"
"#)
    .await;
    let lines = r.lines();
    assert_eq!(r.outcome.conclusion, S, "{lines:#?}");
    for want in [
        "shout=refs/heads/main",
        "helper ran in comp",
        "greeting=hello solstice env=from-composite",
        "main my-input=mine a.b=dotted state=undefined",
        "js out=42",
        "post state=m input=mine",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Unexpected input(s) 'unknown'")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn workflow_commands_in_output() {
    let r = run(r#"
jobs:
  build:
    steps:
      - run: |
          echo "::group::Compile"
          echo inside
          echo "::endgroup::"
          echo "::warning file=a.c,line=3::careful"
          echo "::debug::hidden by default"
          echo "::stop-commands::pause123"
          echo "::error::not a command now"
          echo "::pause123::"
          echo "::error::a real error"
          echo "::set-output name=x::y"
          printf 'crlf\r\nno-newline-at-end'
"#)
    .await;
    assert_eq!(r.outcome.conclusion, S);
    let ev: Vec<(LineKind, String)> = r
        .sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::Line {
                step: Some(0),
                kind,
                text,
            } if kind != LineKind::Runner => Some((kind, text)),
            _ => None,
        })
        .collect();
    let ann = |k: &str, t: &str| (LineKind::Annotation(k.into()), t.to_string());
    assert_eq!(ev[0], (LineKind::GroupStart, "Compile".into()));
    assert_eq!(ev[1], (LineKind::Stdout, "inside".into()));
    assert_eq!(ev[2], (LineKind::GroupEnd, "".into()));
    assert_eq!(ev[3], ann("warning", "a.c:3: careful"));
    assert_eq!(
        ev[4],
        (LineKind::Stdout, "::error::not a command now".into())
    );
    assert_eq!(ev[5], ann("error", "a real error"));
    assert_eq!(ev[6].0, LineKind::Annotation("warning".into()));
    assert!(ev[6].1.contains("disabled"));
    assert_eq!(ev[7], (LineKind::Stdout, "crlf".into()));
    assert_eq!(ev[8], (LineKind::Stdout, "no-newline-at-end".into()));
    assert_eq!(ev.len(), 9, "{ev:?}");
}

#[tokio::test]
async fn debug_lines_shown_with_actions_step_debug() {
    let r = run_with(
        "jobs:\n  b:\n    steps:\n      - run: echo '::debug::visible'\n",
        &LocalSession,
        |s| {
            s.vars.insert("ACTIONS_STEP_DEBUG".into(), "true".into());
        },
        CancellationToken::new(),
    )
    .await;
    assert!(r.sink.events().iter().any(|e| matches!(e,
        JobEvent::Line { kind: LineKind::Debug, text, .. } if text == "visible")));
}

#[tokio::test]
async fn python_shell_and_custom_template() {
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("python3 is needed for this test");
    }
    let r = run(r#"
jobs:
  build:
    steps:
      - shell: python
        run: |
          import os
          print("py", os.environ["GITHUB_JOB"])
      - shell: sh -x {0}
        run: echo traced
"#)
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    assert!(r.step_lines(0).contains(&"py build".to_string()));
    assert!(r.step_lines(1).contains(&"+ echo traced".to_string()));
}

fn git(dir: &Path, args: &[&str]) {
    let st = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test]
async fn local_checkout_copies_the_git_tree_without_ignored_files() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    git(p, &["init", "-q"]);
    std::fs::write(p.join(".gitignore"), "*.log\n").unwrap();
    std::fs::create_dir_all(p.join("src/deep")).unwrap();
    std::fs::write(p.join("src/deep/main.c"), "int main(){}\n").unwrap();
    std::fs::write(p.join("tracked.txt"), "tracked\n").unwrap();
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "init"]);
    std::fs::write(p.join("untracked.txt"), "new\n").unwrap();
    std::fs::write(p.join("build.log"), "ignored\n").unwrap();
    let root = p.to_path_buf();
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - uses: actions/checkout@v4
      - run: |
          cat tracked.txt untracked.txt src/deep/main.c
          test -e build.log && echo has-log || echo no-log
          git log -1 --format=%s
      - uses: actions/checkout@v4
        with:
          path: other
      - run: test -f other/tracked.txt && echo in-path
"#,
        &LocalSession,
        move |s| {
            s.checkout = CheckoutSource::LocalTree {
                root,
                exclude: Vec::new(),
            }
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    let l = r.step_lines(1);
    for want in ["tracked", "new", "int main(){}", "no-log", "init"] {
        assert!(l.contains(&want.to_string()), "{want}: {l:?}");
    }
    assert!(r.step_lines(3).contains(&"in-path".to_string()));
}

/// Every line event of step `index` with its kind.
fn kinds(r: &Run, index: usize) -> Vec<(LineKind, String)> {
    r.sink
        .events()
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

#[tokio::test]
async fn local_checkout_copies_special_trees_and_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tree");
    std::fs::create_dir_all(p.join("state/jobs/j1")).unwrap();
    std::fs::write(p.join("tracked.txt"), "tracked\n").unwrap();
    let f = std::fs::File::create(p.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(p.join("pipe"))
            .status()
            .unwrap()
            .success()
    );
    let _sock = std::os::unix::net::UnixListener::bind(p.join("app.sock")).unwrap();
    let _qmp = std::os::unix::net::UnixListener::bind(p.join("state/jobs/j1/qmp.sock")).unwrap();
    let root = p.clone();
    let state = p.join("state");
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - uses: actions/checkout@v4
        with:
          fetch_depth: 0
          Submodules: true
      - run: |
          ls -A | sort | tr '\n' ' '; echo
          wc -c < sparse.img | tr -d ' '
      - uses: actions/checkout@v4
        with:
          path: tracked.txt/sub
"#,
        &LocalSession,
        move |s| {
            s.checkout = CheckoutSource::LocalTree {
                root,
                exclude: vec![state],
            }
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        r.conclusions(),
        vec![(S, S), (S, S), (F, F)],
        "{:?}",
        r.lines()
    );
    let warn = LineKind::Annotation("warning".into());
    let l = kinds(&r, 0);
    assert!(
        l.iter().any(|(k, t)| *k == warn
            && t.starts_with(
                "Unexpected input(s) 'fetch_depth', valid inputs are ['repository', "
            )),
        "{l:?}"
    );
    assert!(
        l.contains(&(
            warn.clone(),
            "Left out 2 file(s) that tar cannot copy: app.sock (socket), pipe (FIFO)".into()
        )),
        "{l:?}"
    );
    assert!(
        l.contains(&(
            LineKind::Runner,
            "Left out state: it is Solstice's state directory (daemon.state_dir)".into()
        )),
        "{l:?}"
    );
    assert!(
        l.iter().any(|(k, t)| *k == LineKind::Runner
            && t.starts_with("Submodules: the local tree is copied as it is")),
        "{l:?}"
    );
    assert_eq!(
        r.step_lines(1),
        vec![
            "sparse.img tracked.txt ".to_string(),
            (64u32 << 20).to_string()
        ]
    );
    // A failed unpack is one `Solstice:` error line; no stray output.
    let l: Vec<_> = kinds(&r, 2)
        .into_iter()
        .filter(|(k, _)| !matches!(k, LineKind::Runner) && *k != warn)
        .collect();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].0, LineKind::Annotation("error".into()), "{l:?}");
    assert!(
        l[0].1.starts_with("Solstice: could not create ") && l[0].1.contains("tracked.txt/sub: "),
        "{l:?}"
    );
}

#[tokio::test]
async fn remote_checkout_clones_at_the_sha_without_the_token_in_argv() {
    // A bare repository served from the file system stands in for the forge.
    let forge = tempfile::tempdir().unwrap();
    let src = forge.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("f.txt"), "one\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "first"]);
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&src)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let first = String::from_utf8(out.stdout).unwrap().trim().to_string();
    std::fs::write(src.join("f.txt"), "two\n").unwrap();
    git(&src, &["commit", "-q", "-am", "second"]);
    std::fs::create_dir_all(forge.path().join("acme")).unwrap();
    let bare = forge.path().join("acme/widget.git");
    git(
        forge.path(),
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
    let server = format!("file://{}", forge.path().display());
    let job_sha = first.clone();
    let r = run_with(
        r#"
jobs:
  build:
    steps:
      - uses: actions/checkout@v4
      - run: |
          cat f.txt
          git rev-parse HEAD
          git rev-parse --abbrev-ref HEAD
          git config --local --get include.path || echo no-include
          ls "$RUNNER_TEMP/_solstice/step-1/auth.gitconfig" 2>/dev/null || echo no-auth-file
"#,
        &LocalSession,
        move |s| {
            s.checkout = CheckoutSource::Remote {
                server_url: server,
                repository: "acme/widget".into(),
                git_ref: "refs/heads/main".into(),
                sha: first.clone(),
                token: Some(Secret::new("tok-abc-123")),
                host_dir: None,
            };
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome.conclusion, S, "{:?}", r.lines());
    // The step log says which path the checkout took.
    let path = format!("git is installed in the guest; fetching acme/widget@{job_sha} there");
    assert!(r.step_lines(0).contains(&path), "{:?}", r.step_lines(0));
    let l = r.step_lines(1);
    assert_eq!(l[0], "one");
    assert_eq!(l[2], "main");
    assert!(l.contains(&"no-include".to_string()), "{l:?}");
    assert!(l.contains(&"no-auth-file".to_string()), "{l:?}");
    assert!(!r.all_text().contains("tok-abc-123"));
}

#[tokio::test]
async fn a_background_process_does_not_hold_the_step_open_and_scripts_do_not_stay_on_disk() {
    let t = std::time::Instant::now();
    let r = run(r#"
jobs:
  build:
    steps:
      - name: Starts a server in the background
        env:
          SECRET_ISH: value-in-the-wrapper
        run: |
          sleep 8 &
          echo "bg=$!" >> "$GITHUB_OUTPUT"
          echo started
        id: bg
      - run: |
          echo "next step runs; bg pid ${{ steps.bg.outputs.bg }}"
          p1=value-in; p2=-the-wrapper
          if grep -rq "$p1$p2" "$RUNNER_TEMP" 2>/dev/null; then echo "secret left on disk"; exit 1; fi
          ls "$RUNNER_TEMP"/_solstice/*/ | grep -c . | sed 's/^/files: /'
"#)
    .await;
    let text = r.all_text();
    assert_eq!(r.conclusions(), vec![(S, S), (S, S)], "{text}");
    assert!(text.contains("next step runs; bg pid "), "{text}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(6),
        "the job waited for the background process: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn default_github_and_runner_variables_cannot_be_overridden() {
    let r = run(r#"
jobs:
  build:
    env:
      GITHUB_SHA: from-job-env
    steps:
      - run: |
          echo "GITHUB_OUTPUT=/tmp/elsewhere" >> "$GITHUB_ENV"
          echo "RUNNER_OS=Plan9" >> "$GITHUB_ENV"
          echo "CI=custom" >> "$GITHUB_ENV"
      - id: out
        env:
          RUNNER_TEMP: /nowhere
        run: |
          echo "value=kept" >> "$GITHUB_OUTPUT"
          echo "os=$RUNNER_OS ci=$CI sha=$GITHUB_SHA temp-ok=$([ "$RUNNER_TEMP" != /nowhere ] && echo yes)"
      - run: echo "output=${{ steps.out.outputs.value }}"
"#)
    .await;
    let text = r.all_text();
    assert_eq!(r.conclusions(), vec![(S, S), (S, S), (S, S)], "{text}");
    assert!(text.contains("os=Linux ci=custom sha=0"), "{text}");
    assert!(text.contains("temp-ok=yes"), "{text}");
    assert!(text.contains("output=kept"), "{text}");
}

#[tokio::test]
async fn file_command_files_are_read_back_up_to_one_mib() {
    let r = run(r#"
jobs:
  build:
    steps:
      - run: |
          dd if=/dev/zero bs=1024 count=3072 2>/dev/null | tr '\0' 'a' >> "$GITHUB_STEP_SUMMARY"
          echo "after=ok" >> "$GITHUB_OUTPUT"
        id: big
      - run: echo "output=${{ steps.big.outputs.after }}"
"#)
    .await;
    let summaries: Vec<usize> = r
        .sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::StepSummary { markdown, .. } => Some(markdown.len()),
            _ => None,
        })
        .collect();
    assert_eq!(r.conclusions(), vec![(S, S), (S, S)]);
    assert_eq!(summaries, vec![1 << 20]);
    assert!(r.lines().contains(&"output=ok".to_string()));
}

/// The image's `path_prepend` is the base of every step's `PATH`: the job's
/// `GITHUB_PATH` entries go in front of it, and a `PATH` in a step's `env:`
/// replaces it (as it replaces the runner machine's `PATH` on GitHub).
#[tokio::test]
async fn image_path_prepend_is_the_base_that_github_path_and_env_path_build_on() {
    let yaml = r#"
jobs:
  x:
    steps:
      - run: |
          echo "first=$PATH"
          echo /opt/from-github-path >> "$GITHUB_PATH"
      - run: echo "second=$PATH"
      - env:
          PATH: /usr/bin:/bin
        run: echo "third=$PATH"
"#;
    let r = run_with(
        yaml,
        &LocalSession,
        |s| s.runner.path_prepend = vec!["/opt/img-a".into(), "/opt/img b".into()],
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        r.outcome.conclusion,
        Conclusion::Success,
        "{}",
        r.all_text()
    );
    let first = r.step_lines(0).join("\n");
    assert!(first.starts_with("first=/opt/img-a:/opt/img b:"), "{first}");
    assert!(
        first.len() > "first=/opt/img-a:/opt/img b:".len(),
        "{first}"
    );
    let second = r.step_lines(1).join("\n");
    assert!(
        second.starts_with("second=/opt/from-github-path:/opt/img-a:/opt/img b:"),
        "{second}"
    );
    let third = r.step_lines(2).join("\n");
    assert_eq!(third, "third=/opt/from-github-path:/usr/bin:/bin");
}

/// The job-start probe looks for bash with the image's `path_prepend` in
/// front of `PATH` too, so a bash that lives only there (say in
/// `/opt/ooce/bin`) becomes the default shell as on any runner with bash.
#[tokio::test]
async fn the_bash_probe_searches_the_image_path_prepend() {
    // NoBashSession probes for `solstice-no-such-bash`: put one in a
    // directory that only path_prepend names.
    let extra = tempfile::tempdir().unwrap();
    let fake = extra.path().join("solstice-no-such-bash");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let yaml = "jobs:\n  x:\n    steps:\n      - run: echo \"bash=${BASH_VERSION:+yes}\"\n";
    let without = run_with(yaml, &NoBashSession, |_| {}, CancellationToken::new()).await;
    assert_eq!(without.step_lines(0), ["bash="], "{}", without.all_text());
    let dir = extra.path().to_str().unwrap().to_owned();
    let with = run_with(
        yaml,
        &NoBashSession,
        |s| s.runner.path_prepend = vec![dir],
        CancellationToken::new(),
    )
    .await;
    assert_eq!(with.step_lines(0), ["bash=yes"], "{}", with.all_text());
}

/// The slow local composite the timeout tests use, written by a first step
/// (`sleep 612` in its first step, an `always()` step after it).
const SLOW_COMPOSITE: &str = r#"
      - run: |
          mkdir -p .github/actions/slow
          cat > .github/actions/slow/action.yml <<'EOF'
          runs:
            using: composite
            steps:
              - shell: sh
                run: echo inner-started; sleep 612; echo inner-not-reached
              - shell: sh
                run: echo inner-skipped
              - if: always()
                shell: sh
                run: echo inner-always
          EOF
"#;

/// A job that times out inside a composite action's step is a timed-out
/// job: the composite step is cancelled, later steps are skipped (not
/// started), and `always()` steps still run with their grace.
#[tokio::test]
async fn a_job_timeout_inside_a_composite_action_stops_the_job() {
    let started = Instant::now();
    let yaml = format!(
        "jobs:\n  build:\n    timeout-minutes: 0.05\n    steps:{SLOW_COMPOSITE}      - uses: ./.github/actions/slow\n      - run: echo outer-skipped\n      - if: always()\n        run: echo outer-always\n"
    );
    let r = run(&yaml).await;
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let l = r.lines();
    assert_eq!(r.outcome.conclusion, F, "{l:#?}");
    assert!(r.outcome.timed_out, "{l:#?}");
    assert_eq!(
        r.conclusions(),
        vec![(S, S), (C, C), (K, K), (S, S)],
        "{l:#?}"
    );
    assert!(l.contains(&"inner-started".to_string()), "{l:#?}");
    assert!(!l.contains(&"inner-not-reached".to_string()), "{l:#?}");
    assert!(!l.contains(&"inner-skipped".to_string()), "{l:#?}");
    assert!(l.contains(&"inner-always".to_string()), "{l:#?}");
    assert!(!l.contains(&"outer-skipped".to_string()), "{l:#?}");
    assert!(l.contains(&"outer-always".to_string()), "{l:#?}");
    assert_eq!(
        l.iter()
            .filter(|x| x.contains("maximum execution time"))
            .count(),
        1,
        "{l:#?}"
    );
}

/// The calling step's `timeout-minutes` bounds its composite action: the
/// step fails with its own timeout message and the job goes on.
#[tokio::test]
async fn a_composite_steps_timeout_minutes_bounds_the_composite() {
    let started = Instant::now();
    let yaml = format!(
        "jobs:\n  build:\n    steps:{SLOW_COMPOSITE}      - uses: ./.github/actions/slow\n        timeout-minutes: 0.03\n      - if: always()\n        run: echo after\n"
    );
    let r = run(&yaml).await;
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let l = r.lines();
    assert_eq!(r.conclusions(), vec![(S, S), (F, F), (S, S)], "{l:#?}");
    assert!(
        l.iter()
            .any(|x| x == "The step was stopped after its timeout-minutes (0.03)"),
        "{l:#?}"
    );
    assert!(!l.contains(&"inner-skipped".to_string()), "{l:#?}");
    assert!(l.contains(&"after".to_string()), "{l:#?}");
}
