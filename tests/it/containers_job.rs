//! `container:` and `services:` in real Debian guests (TCG): the guest's own
//! engine (Debian's docker.io) pulls the test images from a real registry in
//! a test network namespace (`support::registry`, through the image's
//! `registry_mirror`), starts the job container and the services, and the
//! steps run inside the job container; the services are reached by their id
//! from the job container and through their mapped port from the VM.

use crate::support;

use std::sync::Arc;

use solstice::actions::{ActionCache, CacheSettings};
use solstice::config::{GuestOs, SeedKind};
use solstice::events::Conclusion;
use solstice::testing::git_server::GitServer;
use support::{RunOpts, TestEnv, all_text, registry, step_lines};

const S: Conclusion = Conclusion::Success;
const F: Conclusion = Conclusion::Failure;

fn conclusions(report: &solstice::job::RunReport) -> Vec<Conclusion> {
    report.outcome.steps.iter().map(|s| s.conclusion).collect()
}

/// An image without bash: `run:` steps use `sh -e`, in the workspace under
/// `/__w`, with `HOME=/github/home` and translated runner paths; a `[[ ]]`
/// script with a bash array fails without `shell: bash`; GITHUB_ENV, GITHUB_OUTPUT and
/// GITHUB_PATH carry across steps; env values keep quotes, `$` and newlines;
/// a secret is in no process's arguments in the VM (seen through the
/// guest's docker CLI, mounted with `volumes:`, and `docker run --pid=host`).
const NOBASH_JOB: &str = r#"
jobs:
  inside:
    container:
      image: solstice-test/nobash:1
      env:
        FROM_CONTAINER_ENV: ${{ secrets.TOKEN }}-in-env
      volumes:
        - /usr/bin/docker:/usr/local/bin/docker:ro
    steps:
      - name: where
        run: |
          echo "pwd=$(pwd)"
          echo "home=$HOME"
          echo "ws=$GITHUB_WORKSPACE temp=$RUNNER_TEMP tool=$RUNNER_TOOL_CACHE"
          echo "event=$GITHUB_EVENT_PATH"
          test -f "$GITHUB_EVENT_PATH" && echo event-readable
          test -f "$HOME/.gitconfig" && echo gitconfig-present
          command -v bash || echo no-bash-here
          echo "ctr-env=$FROM_CONTAINER_ENV"
          echo "id=${{ job.container.id != '' }} net=${{ job.container.network != '' }}"
      - id: dbl
        name: double brackets
        continue-on-error: true
        run: '[[ 1 == 1 ]] && arr=(a b) && echo "brackets-worked ${arr[1]}"'
      - id: files
        name: file commands
        env:
          TRICKY: "it's \"quoted\" $HOME `x`\nsecond line"
        run: |
          printf '%s\n' "$TRICKY" | sed 's/^/tricky: /'
          echo "FROM_ENV=carried" >> "$GITHUB_ENV"
          echo "answer=42" >> "$GITHUB_OUTPUT"
          mkdir -p "$RUNNER_TEMP/bin"
          printf '#!/bin/sh\necho tool-ran\n' > "$RUNNER_TEMP/bin/mytool"
          chmod +x "$RUNNER_TEMP/bin/mytool"
          echo "$RUNNER_TEMP/bin" >> "$GITHUB_PATH"
      - name: after
        env:
          S: ${{ secrets.TOKEN }}
        run: |
          echo "env=$FROM_ENV out=${{ steps.files.outputs.answer }} dbl=${{ steps.dbl.outcome }}"
          mytool
          echo "path-has-image-path=$(echo "$PATH" | grep -c /usr/bin)"
          docker run --rm --pid=host solstice-test/nobash:1 sh -c \
            'for f in /proc/[0-9]*/cmdline; do tr "\000" " " < "$f"; echo; done' > "$RUNNER_TEMP/ps.txt"
          echo "docker-exec-seen=$(grep -q 'docker exec -i' "$RUNNER_TEMP/ps.txt" && echo yes)"
          if grep -F "$S" "$RUNNER_TEMP/ps.txt"; then echo secret-in-argv; else echo secret-not-in-argv; fi
"#;

#[tokio::test(flavor = "multi_thread")]
async fn steps_run_in_a_job_container_without_bash() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let (result, sink) = env
        .run(
            NOBASH_JOB,
            RunOpts {
                secrets: vec![("TOKEN", "s3cr3t-v4lue-91")],
                ..RunOpts::default()
            },
        )
        .await;
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, S, "{text}");
    assert_eq!(conclusions(&report), [S, S, S, S], "{text}");
    let where_ = step_lines(&sink, 0);
    for want in [
        "pwd=/__w/hello/hello",
        "home=/github/home",
        "ws=/__w/hello/hello temp=/__w/_temp tool=/__t",
        "event=/github/workflow/event.json",
        "event-readable",
        "gitconfig-present",
        "no-bash-here",
        "ctr-env=***-in-env",
        "id=true net=true",
    ] {
        assert!(where_.contains(&want.to_string()), "{want}\n{text}");
    }
    assert!(text.contains("Initialize containers"), "{text}");
    let dbl = step_lines(&sink, 1).join("\n");
    assert!(!dbl.contains("brackets-worked"), "{dbl}");
    let files = step_lines(&sink, 2);
    assert!(
        files.contains(&"tricky: it's \"quoted\" $HOME `x`".to_string())
            && files.contains(&"tricky: second line".to_string()),
        "{text}"
    );
    let after = step_lines(&sink, 3);
    for want in [
        "env=carried out=42 dbl=failure",
        "tool-ran",
        "path-has-image-path=1",
        "docker-exec-seen=yes",
        "secret-not-in-argv",
    ] {
        assert!(after.contains(&want.to_string()), "{want}\n{text}");
    }
    assert!(!text.contains("s3cr3t-v4lue-91"), "{text}");
}

/// An image with bash: `shell: bash` (pipefail), a remote composite action
/// and a JavaScript action using the real `@actions/core`, run with the
/// guest's node mounted in the container (the image has none).
#[tokio::test(flavor = "multi_thread")]
async fn bash_composite_and_javascript_actions_run_in_the_job_container() {
    let reg = registry::shared();
    let server = GitServer::start().await;
    support::actions::publish_all(&server, &["composite-inner", "js-inputs"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ActionCache::new(CacheSettings {
        dir: dir.path().to_path_buf(),
        max_bytes: 1 << 30,
        allowed_hosts: vec!["127.0.0.1".into()],
    }));
    let env = TestEnv::debian_containers(&reg);
    let yaml = r#"
jobs:
  inside:
    container: solstice-test/bash:1
    steps:
      - shell: bash
        run: |
          [[ -n "$BASH_VERSION" ]] && echo "bash-ok"
          if false | true; then echo no-pipefail; else echo pipefail-on; fi
      - id: up
        uses: fixtures/composite-inner@v1
        with:
          text: quiet words
      - id: js
        uses: fixtures/js-inputs@v1
        with:
          my-input: hyphen value
      - run: |
          echo "shouted=${{ steps.up.outputs.shout }}"
          echo "echo=${{ steps.js.outputs.echo }} exported=$JS_EXPORTED"
          js-tool
          command -v node || echo no-node-on-path
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
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, S, "{text}");
    let first = step_lines(&sink, 0);
    assert!(first.contains(&"bash-ok".to_string()), "{text}");
    assert!(first.contains(&"pipefail-on".to_string()), "{text}");
    let js = step_lines(&sink, 2);
    assert!(
        js.contains(&"my-input=[hyphen value]".to_string()),
        "{text}"
    );
    assert!(js.contains(&"cwd-is-workspace=true".to_string()), "{text}");
    let last = step_lines(&sink, 3);
    for want in [
        "shouted=QUIET WORDS",
        "echo=hyphen value exported=from-js",
        "js-tool ran",
        "no-node-on-path",
    ] {
        assert!(last.contains(&want.to_string()), "{want}\n{text}");
    }
}

const PG_HEALTH: &str = "--health-cmd '/usr/lib/postgresql/15/bin/pg_isready -h 127.0.0.1 -U postgres' --health-interval 1s --health-timeout 5s --health-retries 30";

/// A PostgreSQL service with a health check: a job container reaches it by
/// its id as hostname; its logs are printed at the end of the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_service_is_reached_by_name_from_the_job_container() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let yaml = format!(
        r#"
jobs:
  db:
    container: solstice-test/postgres:15
    services:
      postgres:
        image: solstice-test/postgres:15
        options: {PG_HEALTH}
    steps:
      - run: |
          psql=/usr/lib/postgresql/15/bin/psql
          $psql -h postgres -U postgres -v ON_ERROR_STOP=1 -c 'create table t (x int)' -c 'insert into t values (42)'
          echo "read=$($psql -h postgres -U postgres -tAc 'select x from t')"
          echo "svc-id=${{{{ job.services.postgres.id != '' }}}} same-net=${{{{ job.services.postgres.network == job.container.network }}}}"
"#
    );
    let (result, sink) = env.run(&yaml, RunOpts::default()).await;
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, S, "{text}");
    let lines = step_lines(&sink, 0);
    assert!(lines.contains(&"read=42".to_string()), "{text}");
    assert!(
        lines.contains(&"svc-id=true same-net=true".to_string()),
        "{text}"
    );
    assert!(text.contains("Service `postgres` is healthy"), "{text}");
    assert!(text.contains("Service container logs: postgres"), "{text}");
}

/// Steps in the VM (no job container) reach a service through its mapped
/// port, from `job.services.<id>.ports['5432']` in `run:` and in `env:`.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_service_is_reached_through_its_mapped_port_from_the_vm() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let yaml = format!(
        r#"
jobs:
  db:
    services:
      postgres:
        image: solstice-test/postgres:15
        ports: ['5432']
        options: {PG_HEALTH}
    steps:
      - env:
          PGPORT: ${{{{ job.services.postgres.ports['5432'] }}}}
        run: |
          echo "port-set=$([ -n "$PGPORT" ] && [ "$PGPORT" = "${{{{ job.services.postgres.ports['5432'] }}}}" ] && echo yes)"
          psql() {{ docker run --rm --network host -e PGPORT --entrypoint /usr/lib/postgresql/15/bin/psql solstice-test/postgres:15 "$@"; }}
          psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -c 'create table v (y text)' -c "insert into v values ('from-vm')"
          echo "read=$(psql -h 127.0.0.1 -U postgres -tAc 'select y from v')"
"#
    );
    let (result, sink) = env.run(&yaml, RunOpts::default()).await;
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, S, "{text}");
    let lines = step_lines(&sink, 0);
    assert!(lines.contains(&"port-set=yes".to_string()), "{text}");
    assert!(lines.contains(&"read=from-vm".to_string()), "{text}");
}

/// A service whose health check never passes fails the job before any
/// step, naming the service and printing its logs.
#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_service_fails_the_job_with_its_name_and_logs() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let yaml = r#"
jobs:
  broken:
    services:
      flaky:
        image: solstice-test/nobash:1
        options: --health-cmd false --health-interval 1s --health-retries 2
        cmd: [sh, -c, "echo service-said-hello; exec sleep 600"]
    steps:
      - run: echo never-runs
"#;
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, F, "{text}");
    assert!(report.outcome.steps.is_empty(), "{text}");
    assert!(!text.contains("never-runs"), "{text}");
    assert!(
        text.contains(
            "Service `flaky` (solstice-test/nobash:1) did not become healthy: `unhealthy`"
        ),
        "{text}"
    );
    assert!(text.contains("service-said-hello"), "{text}");
}

/// On an illumos image a container job fails at once, saying why (the tiny
/// guest stands in for illumos, as in `actions_vm`).
#[tokio::test(flavor = "multi_thread")]
async fn a_container_job_on_an_illumos_image_fails_at_once() {
    let mut env = TestEnv::tiny();
    {
        let img = env.image_mut();
        img.seed = SeedKind::MetadataCpio;
        img.os = GuestOs::Illumos;
        img.readiness_probes = 2;
        img.labels = vec!["omnios".into()];
    }
    let yaml = r#"
jobs:
  c:
    container: solstice-test/nobash:1
    steps:
      - run: echo never-runs
"#;
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, F, "{text}");
    assert!(!text.contains("never-runs"), "{text}");
    assert!(
        text.contains("need a Linux image with a container engine") && text.contains("illumos"),
        "{text}"
    );
}

/// Records when each event reached the host.
#[derive(Default)]
struct StampSink {
    inner: solstice::testing::VecSink,
    at: std::sync::Mutex<Vec<(std::time::Instant, solstice::events::JobEvent)>>,
}

impl solstice::events::EventSink for StampSink {
    fn emit(&self, event: solstice::events::JobEvent) {
        if let Ok(mut v) = self.at.lock() {
            v.push((std::time::Instant::now(), event.clone()));
        }
        self.inner.emit(event);
    }
}

impl StampSink {
    /// Guest ready (SSH) → the first step started.
    fn ready_to_first_step(&self) -> std::time::Duration {
        use solstice::events::{JobEvent, Phase};
        let v = self.at.lock().unwrap();
        let ready = v
            .iter()
            .find_map(|(t, e)| {
                matches!(
                    e,
                    JobEvent::Phase {
                        phase: Phase::Ready,
                        ..
                    }
                )
                .then_some(*t)
            })
            .expect("a Ready phase");
        let first = v
            .iter()
            .find_map(|(t, e)| matches!(e, JobEvent::StepStarted { index: 0, .. }).then_some(*t))
            .expect("a first step");
        first - ready
    }
}

/// Measurement, not a check (run by hand, `--ignored`): the time from the
/// job's start in a ready guest to its first step, for a job with one
/// PostgreSQL service (pulled from the test registry, health-checked) and
/// for the same job without it; the median of 3 runs each is printed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run by hand with --ignored"]
async fn measure_job_start_to_first_step_with_a_postgres_service() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let with = format!(
        "jobs:\n  m:\n    services:\n      postgres:\n        image: solstice-test/postgres:15\n        options: {PG_HEALTH}\n    steps:\n      - run: 'true'\n"
    );
    let without = "jobs:\n  m:\n    steps:\n      - run: 'true'\n".to_string();
    for (what, yaml) in [
        ("with a postgres service", with),
        ("without containers", without),
    ] {
        let mut samples = Vec::new();
        for _ in 0..3 {
            let sink = StampSink::default();
            let result = env.run_with_sink(&yaml, RunOpts::default(), &sink).await;
            env.assert_no_leaks();
            let text = all_text(&sink.inner);
            let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
            assert_eq!(report.outcome.conclusion, S, "{text}");
            samples.push(sink.ready_to_first_step());
        }
        let mut sorted = samples.clone();
        sorted.sort();
        println!(
            "job start -> first step, {what}: median {:.2} s (runs: {})",
            sorted[1].as_secs_f64(),
            samples
                .iter()
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
